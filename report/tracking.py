"""The one module that owns wandb.

``tracking_run(...)`` is a context manager that yields a :class:`Tracker`. It never prompts and
never blocks: without ``WANDB_API_KEY`` (or with ``WANDB_MODE=offline``) runs are written offline
under ``wandb/``; an online start that fails (no network, bad key, timeout) falls back to offline;
``logger=none`` (``enabled=False``) yields a tracker that does nothing. The run is always finished
in ``finally``, with exit code 1 when the body raised, so a failing sweep job never leaves a
dangling run.

How runs are named so that W&B's comparison views work once offline runs are synced
(``wandb sync wandb/offline-run-*``): :func:`evaluate_identity` / :func:`train_identity` build a
:class:`RunIdentity` with

* ``group`` = the sweep (:func:`sweep_group`: the Hydra multirun directory), ``None`` for a
  single run;
* ``job_type`` = ``train`` | ``evaluate``;
* ``name`` = ``<policy>-<workload>-<seed>`` (``train-<predictor>-<data>-<seed>`` for training);
* ``tags`` = the engine (``engine:sim``), the policy and the workload;
* ``config`` = flat, meaningful keys (``policy``, ``predictor``, ``workload``, ``utilisation``,
  ``engine``, ``seed``) plus ``policy_params.*`` / ``engine_params.*`` for the details.

:func:`start_run` opens a run from a ``conf/logger/*.yaml`` node and an identity;
:func:`log_evaluation` logs an evaluation's summary under stable names, per-tier tables and
figures.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

INIT_TIMEOUT_S = 30.0  # an online start that takes longer falls back to offline


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into ``a.b.c`` keys (wandb config and summaries)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


class Tracker:
    """No-op tracker; :class:`WandbTracker` overrides every method.

    ``exit_code`` is set when the run is finished (0 ok, 1 the body raised); ``None`` before.
    """

    enabled = False
    mode = "disabled"
    exit_code: int | None = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        pass

    def log_image(self, name: str, path: str | Path) -> None:
        pass


class WandbTracker(Tracker):
    enabled = True

    def __init__(self, run: Any, mode: str = "offline") -> None:
        self.run = run
        self.mode = mode

    @property
    def run_dir(self) -> Path:
        """The run's local directory (``.../wandb/offline-run-*`` or ``run-*``)."""
        return Path(self.run.dir).parent

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.run.log(flatten(metrics), step=step)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        for k, v in flatten(metrics).items():
            self.run.summary[k] = v

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        import wandb

        self.run.log({name: wandb.Table(dataframe=df.reset_index(drop=True))})

    def log_image(self, name: str, path: str | Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})


def wandb_mode(requested: str | None = None) -> str:
    """``online`` only when asked for (or ``auto``) and a key is set; otherwise ``offline``.

    ``disabled`` stays disabled. Never ``online`` without ``WANDB_API_KEY``: wandb would prompt
    for a login.
    """
    env = os.environ.get("WANDB_MODE")
    mode = requested or env or "auto"
    if mode == "disabled":
        return "disabled"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if mode == "online" and has_key:
        return "online"
    if mode == "auto" and has_key and env != "offline":
        return "online"
    return "offline"


def _init(wandb: Any, mode: str, kwargs: dict[str, Any]) -> Any:
    settings = wandb.Settings(
        silent=True,
        console="off",
        x_disable_stats=True,
        init_timeout=INIT_TIMEOUT_S,
        disable_git=True,
    )
    return wandb.init(mode=mode, settings=settings, reinit="finish_previous", **kwargs)


@contextmanager
def tracking_run(
    *,
    enabled: bool,
    project: str,
    job_type: str,
    name: str,
    config: Mapping[str, Any],
    group: str | None = None,
    tags: Sequence[str] | None = None,
    mode: str | None = None,
    dir: str | Path | None = None,
) -> Iterator[Tracker]:
    """Start a wandb run (offline without a key) or a no-op tracker, and always finish it."""
    resolved = wandb_mode(mode) if enabled else "disabled"
    if resolved == "disabled":
        tracker = Tracker()
        try:
            yield tracker
            tracker.exit_code = 0
        except BaseException:
            tracker.exit_code = 1
            raise
        return
    import wandb

    # Never let wandb ask questions, print banners or wait on the network.
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    # wandb >= 0.2x sends OpenTelemetry error reports to its server even from an *offline*
    # run (at exit, via the process-wide settings); nothing leaves the machine unless the user
    # opts in with WANDB_ERROR_REPORTING=true (tests/test_e2e_offline.py).
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    kwargs = {
        "project": project,
        "job_type": job_type,
        "name": name,
        "group": group,
        "tags": list(tags) if tags else None,
        "config": flatten(config),
        "dir": str(dir) if dir is not None else None,
    }
    try:
        run = _init(wandb, resolved, kwargs)
    except Exception as e:  # online start failed (network, key, timeout): keep the run offline
        if resolved != "online":
            raise
        warnings.warn(
            f"wandb online start failed ({type(e).__name__}: {e}); logging offline "
            "instead (sync later with `wandb sync`)",
            stacklevel=3,
        )
        resolved = "offline"
        run = _init(wandb, resolved, kwargs)
    tracker = WandbTracker(run, resolved)
    exit_code = 1
    try:
        yield tracker
        exit_code = 0
    finally:
        tracker.exit_code = exit_code
        run.finish(exit_code=exit_code)


# --------------------------------------------------------------------------- run identity


@dataclass(frozen=True)
class RunIdentity:
    """How one job shows up in W&B (see the module docstring)."""

    job_type: str  # train | evaluate
    name: str  # <policy>-<workload>-<seed>
    group: str | None  # the sweep; None for a single run
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # flat keys


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+,-]+", "_", s).strip("_")


def sweep_group(sweep_dir: str | Path | None = None) -> str | None:
    """The W&B group of a sweep job: the multirun directory, as a name.

    ``multirun/evaluate/2026-11-27/20-29-18`` -> ``evaluate_2026-11-27_20-29-18``;
    ``multirun/policies_x_load`` -> ``policies_x_load``; any other path -> its last component.
    Without ``sweep_dir`` it is read from Hydra (``hydra.sweep.dir``) when the job is part of a
    multirun, and ``None`` for a single run.
    """
    if sweep_dir is None:
        sweep_dir = _hydra_sweep_dir()
        if sweep_dir is None:
            return None
    parts = Path(sweep_dir).parts
    if "multirun" in parts:
        tail = parts[len(parts) - parts[::-1].index("multirun") :]
        if tail:
            return _slug("_".join(tail))
    return _slug(Path(sweep_dir).name) or None


def _hydra_sweep_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return str(hc.sweep.dir)


def predictor_label(policy_cfg: Mapping[str, Any] | None) -> str:
    """What length predictor a policy config uses, as a short name.

    ``predictor_dir`` -> its directory name (``artifacts`` -> ``lightgbm``, the default artifact
    of ``python train.py``); the paper's EMA policy -> ``paper_ema`` (or
    ``paper_no_correction``); the oracle -> ``oracle``; otherwise ``none``.
    """
    if not policy_cfg:
        return "none"
    target = str(policy_cfg.get("_target_", ""))
    if policy_cfg.get("predictor_dir"):
        name = Path(str(policy_cfg["predictor_dir"])).name
        return "lightgbm" if name in ("artifacts", "") else name
    if target.endswith("DriftSchedPolicy") or "correction" in policy_cfg:
        return "paper_ema" if policy_cfg.get("correction", True) else "paper_no_correction"
    if target.endswith("OraclePolicy"):
        return "oracle"
    return "none"


def _scalars(d: Mapping[str, Any]) -> dict[str, Any]:
    """Flat scalar leaves (lists become strings: W&B config filters want scalars)."""
    out = {}
    for k, v in flatten(d).items():
        if isinstance(v, list | tuple):
            v = ",".join(map(str, v))
        if v is None or isinstance(v, str | int | float | bool):
            out[k] = v
    return out


def evaluate_identity(
    *,
    policy: str,
    workload: str,
    seed: int,
    engine: str,
    utilisation: float | None = None,
    rate_rps: float | None = None,
    policy_params: Mapping[str, Any] | None = None,
    engine_params: Mapping[str, Any] | None = None,
    predictor: str | None = None,
    group: str | None = None,
    name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> RunIdentity:
    """Identity of one ``evaluate.py`` job (one policy on one workload, seed and load).

    ``group`` defaults to :func:`sweep_group` (the Hydra multirun directory); ``predictor`` to
    :func:`predictor_label` of ``policy_params``.
    """
    params = dict(policy_params or {})
    config: dict[str, Any] = {
        "policy": policy,
        "predictor": predictor or predictor_label(params),
        "workload": workload,
        "utilisation": utilisation,
        "rate_rps": rate_rps,
        "engine": engine,
        "seed": int(seed),
    }
    config.update({f"policy_params.{k}": v for k, v in _scalars(params).items()})
    config.update({f"engine_params.{k}": v for k, v in _scalars(engine_params or {}).items()})
    config.update(_scalars(extra or {}))
    return RunIdentity(
        job_type="evaluate",
        name=name or f"{policy}-{workload}-{seed}",
        group=group if group is not None else sweep_group(),
        tags=(f"engine:{engine}", f"policy:{policy}", f"workload:{workload}"),
        config=config,
    )


def train_identity(
    *,
    predictor: str,
    data: str,
    seed: int,
    group: str | None = None,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> RunIdentity:
    """Identity of one ``train.py`` job (``predictor`` is ``cfg.predictor.name``; ``data`` a
    short name of the training data, e.g. the joined source names or the file stem)."""
    config: dict[str, Any] = {
        "predictor": predictor,
        "data": data,
        "seed": int(seed),
        "threads": threads,
    }
    config.update(_scalars(params or {}))
    return RunIdentity(
        job_type="train",
        name=name or f"train-{predictor}-{data}-{seed}",
        group=group if group is not None else sweep_group(),
        tags=(f"predictor:{predictor}", "engine:none"),
        config=config,
    )


@contextmanager
def start_run(
    logger_cfg: Mapping[str, Any] | None, identity: RunIdentity, dir: str | Path | None = None
) -> Iterator[Tracker]:
    """``tracking_run`` from a ``conf/logger/*.yaml`` node (``enabled``, ``project``, ``mode``,
    ``group``: an explicit group wins over the identity's) and a :class:`RunIdentity`."""
    lcfg = logger_cfg or {"enabled": False}
    group = lcfg.get("group") or identity.group
    with tracking_run(
        enabled=bool(lcfg.get("enabled", False)),
        project=str(lcfg.get("project", "driftsched")),
        job_type=identity.job_type,
        name=identity.name,
        config=identity.config,
        group=group,
        tags=list(identity.tags),
        mode=lcfg.get("mode"),
        dir=dir,
    ) as tracker:
        yield tracker


def per_tier_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per tier of a ``summary.json``: n, P50/P99 TTFT and E2E (s), SLO attainment."""
    rows = []
    for tier, t in summary.get("per_tier", {}).items():
        lat = t.get("latency", {})
        rows.append(
            {
                "tier": tier,
                "n": t.get("n"),
                "ttft_p50_s": lat.get("ttft_s", {}).get("p50"),
                "ttft_p99_s": lat.get("ttft_s", {}).get("p99"),
                "e2e_p50_s": lat.get("e2e_s", {}).get("p50"),
                "e2e_p99_s": lat.get("e2e_s", {}).get("p99"),
                "slo_ttft": t.get("slo", {}).get("ttft"),
                "slo_e2e": t.get("slo", {}).get("e2e"),
                "slo_both": t.get("slo", {}).get("both"),
                "max_wait_s": t.get("max_wait_s"),
            }
        )
    return pd.DataFrame(rows)


def log_evaluation(
    tracker: Tracker, summary: Mapping[str, Any], figures: Mapping[str, str | Path] | None = None
) -> None:
    """Summary metrics under stable names (the ``summary.json`` keys, flattened: e.g.
    ``latency.e2e_s.p99``), the per-tier table and figures (name -> PNG path)."""
    if not tracker.enabled:
        return
    tracker.log_summary(
        {
            k: v
            for k, v in summary.items()
            if k not in ("per_tenant", "policy_params", "engine_meta")
        }
    )
    table = per_tier_table(summary)
    if len(table):
        tracker.log_table("per_tier", table)
    for name, path in (figures or {}).items():
        tracker.log_image(name, path)
