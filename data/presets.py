"""Hydra configs -> data objects: the ``workload`` and ``data`` config groups.

``conf/workload/*.yaml`` hold either a multi-tenant :class:`data.workload.WorkloadSpec`
(``preset: tenants``) or the paper's :class:`data.paper.PaperSpec` (``preset: paper``).
``conf/data/*.yaml`` name the training sources and the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from data.splits import Split, split_by_config
from data.workload import Workload, WorkloadSpec, _to_container, build_workload

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PRESETS = ("tenants", "paper", "trace")


def workload_from_config(cfg: Any, seed: int = 0) -> Workload:
    """Build the workload a ``workload`` config node describes, with ``seed``."""
    d = _to_container(cfg)
    d.pop("predictor", None)  # which predictor the preset is meant for (read by evaluate.py)
    preset = d.get("preset", "tenants")
    if preset == "paper":
        from data.paper import PaperSpec, build_paper_workload

        return build_paper_workload(PaperSpec.from_config(d), seed)
    if preset == "trace":
        from data.trace_workload import TraceSpec, build_trace_workload

        return build_trace_workload(TraceSpec.from_config(d), seed)
    if preset != "tenants":
        raise ValueError(f"workload preset {preset!r}: expected one of {list(PRESETS)}")
    return build_workload(WorkloadSpec.from_config(d), seed)


def check_load(utilisation: Any, rate_rps: Any = None) -> None:
    """Reject an offered load that cannot be run, before any workload is built.

    ``rate_rps`` (requests per second), when set, overrides ``utilisation`` (a fraction of the
    engine's capacity, > 0; above 1 overloads the engine on purpose). Both come from the
    command line (``utilisation=0.9``, ``rate_rps=4``), so strings and NaN are caught here.
    """
    from data.workload import check_number

    if rate_rps is not None:
        check_number("rate_rps", rate_rps, gt=0)
        return
    if utilisation is None:
        raise ValueError(
            "utilisation is null and rate_rps is not set: set one of them "
            "(e.g. utilisation=0.9 or rate_rps=4)"
        )
    check_number("utilisation", utilisation, gt=0)


def compose_workload_config(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The ``workload`` group's config ``name`` composed by Hydra (defaults lists applied),
    outside any Hydra app (for ``python -m data.inspect`` and tests)."""
    from hydra import compose, initialize_config_dir

    if not (CONF_DIR / "workload" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (CONF_DIR / "workload").glob("*.yaml"))
        raise ValueError(f"unknown workload preset {name!r}; expected one of {known}")
    ov = [f"+workload={name}"] + [
        o if o.startswith("workload.") else f"workload.{o}" for o in (overrides or [])
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=None, overrides=ov)
    return _to_container(cfg.workload)


def load_workload(name: str, seed: int = 0, overrides: list[str] | None = None) -> Workload:
    """``workload_from_config`` of the preset ``conf/workload/<name>.yaml``."""
    return workload_from_config(compose_workload_config(name, overrides), seed)


def split_from_config(df: pd.DataFrame, cfg: Any) -> Split:
    """Split a training table as ``data.split`` says: ``data.splits.split_by_config``."""
    return split_by_config(df, _to_container(cfg) if cfg is not None else {})
