"""Workload config nodes -> data objects (the ``workload`` config group), without Hydra.

``conf/workload/*.yaml`` hold a multi-tenant :class:`data.workload_spec.WorkloadSpec`
(``preset: tenants``), the paper's :class:`data.paper.PaperSpec` (``preset: paper``) or a trace
replay (``preset: trace``). This module reads a node already composed (by Hydra in the entry
points, or by :func:`report.presets.compose_workload_config`); it never composes one itself.
"""

from __future__ import annotations

from typing import Any

from data.config_checks import _to_container
from data.workload import Workload, build_workload
from data.workload_spec import WorkloadSpec

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
    from data.config_checks import check_number

    if rate_rps is not None:
        check_number("rate_rps", rate_rps, gt=0)
        return
    if utilisation is None:
        raise ValueError(
            "utilisation is null and rate_rps is not set: set one of them "
            "(e.g. utilisation=0.9 or rate_rps=4)"
        )
    check_number("utilisation", utilisation, gt=0)
