"""Workload presets composed by Hydra: ``conf/workload/<name>.yaml`` outside any Hydra app.

For ``python -m report.inspect``, the benchmarks and tests; the data layer itself
(:mod:`data.presets`) only reads composed nodes and never imports Hydra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.config_checks import _to_container
from data.presets import workload_from_config
from data.workload import Workload

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_workload_config(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The ``workload`` group's config ``name`` composed by Hydra (defaults lists applied),
    outside any Hydra app (for ``python -m report.inspect`` and tests)."""
    from hydra import compose, initialize_config_dir

    from report.config_schema import register

    register()  # the engine presets' schema (conf/engine/*.yaml read /schema/engine/...)

    if not (CONF_DIR / "workload" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (CONF_DIR / "workload").glob("*.yaml"))
        raise ValueError(f"unknown workload preset {name!r}; expected one of {known}")
    # the default engine first: a preset that needs its own engine overrides it (memory_bound)
    ov = ["+engine=sim", f"+workload={name}"] + [
        o if o.startswith("workload.") else f"workload.{o}" for o in (overrides or [])
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=None, overrides=ov)
    return _to_container(cfg.workload)


def load_workload(name: str, seed: int = 0, overrides: list[str] | None = None) -> Workload:
    """``workload_from_config`` of the preset ``conf/workload/<name>.yaml``."""
    return workload_from_config(compose_workload_config(name, overrides), seed)
