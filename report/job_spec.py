"""One job's composed Hydra config, converted once into typed specs (issue 23 item 5).

``report.jobs`` used to hand the raw ``DictConfig`` down every layer, and each place converted
its part again (the load in ``data.presets``, the faults and the guard in ``scheduler.faults``,
the workload in ``data``, the logger and the comparison settings in ``report``). Now
:meth:`JobSpec.from_config` reads the composed config once, at the job layer, checks what can
be checked without building anything, and the layers below receive plain values: a load, a
fault plan, a guard config, the workload and engine specs as plain mappings, and the policies'
config nodes (kept as nodes: Hydra instantiates them, with interpolations resolved against the
job's root config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


def container(node: Any) -> Any:
    """A plain Python value of a config node (interpolations resolved); others unchanged."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


@dataclass(frozen=True)
class LoadSpec:
    """The offered load as configured: a utilisation of the engine's capacity, or a fixed rate
    that overrides it (``data.presets.check_load``); summaries record both as configured."""

    utilisation: float | None
    rate_rps: float | None


@dataclass(frozen=True)
class JobSpec:
    """Everything a job reads from its config, converted once (module docstring)."""

    seed: int
    load: LoadSpec
    workload: Mapping[str, Any]  # the workload preset, plain (data.presets.workload_from_config)
    engine: Mapping[str, Any]  # the engine node, plain (instantiated by Hydra: _target_ ...)
    policies: Mapping[str, DictConfig]  # policy label -> its config node
    single: bool  # one policy given as +policy= (its run directory is the job's)
    faults: Any  # scheduler.faults.FaultPlan | None
    guard: Any  # scheduler.faults.GuardConfig | None
    allow_train_overlap: bool
    baseline: str  # the comparison table's baseline and reference policies
    reference: str
    logger: Mapping[str, Any]
    run_name: str | None

    @classmethod
    def from_config(cls, cfg: DictConfig, policies: Mapping[str, DictConfig]) -> JobSpec:
        """Convert and check ``cfg`` (load, faults, guard); ``policies`` by label, composed by
        the caller (``report.jobs.policy_configs`` or the arms of a group)."""
        from data.config_checks import check_number
        from data.presets import check_load
        from scheduler.faults import FaultPlan, guard_config

        util, rate = cfg.get("utilisation"), cfg.get("rate_rps")
        check_load(util, rate)
        if util is not None:  # kept for the records even when rate_rps sets the load
            check_number("utilisation", util, gt=0)
        return cls(
            seed=int(cfg.seed),
            load=LoadSpec(
                None if util is None else float(util), None if rate is None else float(rate)
            ),
            workload=container(cfg.workload),
            engine=container(cfg.engine),
            policies=dict(policies),
            single=cfg.get("policy") is not None,
            faults=FaultPlan.from_config(container(cfg.get("faults"))),
            guard=guard_config(container(cfg.get("predictor_guard"))),
            allow_train_overlap=bool(cfg.get("allow_train_overlap", False)),
            baseline=str(cfg.get("baseline")),
            reference=str(cfg.get("reference")),
            logger=container(cfg.get("logger")) or {},
            run_name=cfg.get("run_name"),
        )
