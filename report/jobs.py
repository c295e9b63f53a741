"""The job layer: compose -> validate -> run -> write, for every evaluation in the repository.

``evaluate.py`` (the Hydra entry), the report generators (``report.results``,
``report.generalisation``, ``report.ablations``), the sim-vs-live fidelity and overhead commands
and the benchmarks all run evaluations through this module, so a job is built, armed (predictor
guard, injected faults), run and written the same way wherever it starts. Nothing imports an
entry point.

One job = one workload, one engine, one or more policies (the bare ``evaluate.py`` runs the
``compare`` list). :func:`prepare` does every check that can fail before an engine starts (load,
faults, guard, engine config, every policy built, the workload drawn); :func:`run_prepared` runs
each policy through :func:`run_policy`, which owns the job directory through ``report.runs``
(``INCOMPLETE`` marker while it runs, partial records when it fails, ``summary.json`` last).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from report import runs
from report.job_spec import JobSpec, LoadSpec
from scheduler.policies.base import check_admission_headroom

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
POLICY_DIR = CONF_DIR / "policy"


# --- composing -----------------------------------------------------------------------------------
def compose(overrides: Sequence[str] = (), config_name: str = "evaluate") -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` (Hydra compose API, no app).

    Inside a running Hydra app (``evaluate.py``) the app's own config search path is reused;
    elsewhere Hydra is (re)initialised on ``conf/``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from report.config_schema import register

    register()
    if GlobalHydra.instance().is_initialized() and HydraConfig.initialized():
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def known_policies() -> list[str]:
    """Every policy preset (``conf/policy/<name>.yaml``): the one list of policy names."""
    return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def resolve_path(p: str | Path) -> Path:
    """A config path relative to the launch directory (Hydra's original cwd), made absolute."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    path = Path(p)
    if path.is_absolute():
        return path
    base = Path(hydra.utils.get_original_cwd()) if HydraConfig.initialized() else Path.cwd()
    return base / path


def policy_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The policy (``+policy=x``) or, for the bare command, every policy in ``compare``, each
    composed by Hydra with this job's overrides (defaults lists and interpolations such as
    ``${predictor_dir}`` resolve exactly as for a single-policy run)."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("policy") is not None:
        name = None
        if HydraConfig.initialized():
            name = HydraConfig.get().runtime.choices.get("policy")
        return {name or str(cfg.policy.get("_target_", "policy")).rsplit(".", 1)[-1]: cfg.policy}
    known = known_policies()
    task: list[str] = []
    if HydraConfig.initialized():
        task = [
            o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("policy")
        ]
    out = {}
    for name in cfg.compare:
        if name not in known:
            raise ValueError(
                f"compare: unknown policy {name!r}; expected one of {known} "
                "(conf/policy/<name>.yaml)"
            )
        out[str(name)] = _compose_policy(str(name), cfg, task)
    return out


def _compose_policy(name: str, cfg: DictConfig, task: list[str]) -> DictConfig:
    if _in_hydra_app():
        return compose([*task, f"+policy={name}"]).policy
    # outside a Hydra app: the preset, its interpolations resolved against this config's keys
    root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    root.policy = compose([f"+policy={name}"]).policy
    return root.policy


def _in_hydra_app() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def build_policy(pcfg: DictConfig) -> Any:
    """A fresh policy from its config node (``predictor_dir`` resolved from the launch dir);
    its ``victim`` node (``report.config_schema.POLICY_KNOBS``) becomes ``policy.victim``, and
    an ``admission_headroom`` becomes the policy's admission gate (``scheduler.policies.base``):
    drift's config has one (its default 0.05; null: vLLM's rule), any other policy's config
    gets one appended (``+policy.admission_headroom=0.05``; absent by default, so baselines'
    configs and finished runs stay as they were)."""
    from hydra.utils import instantiate

    kwargs = {}
    if "predictor_dir" in pcfg:
        kwargs["predictor_dir"] = str(resolve_path(pcfg.predictor_dir))
    spec = OmegaConf.to_container(pcfg, resolve=True)  # (interpolations from the root)
    victim = spec.pop("victim", None)  # type: ignore[union-attr]
    gated = "admission_headroom" in spec  # type: ignore[operator]
    headroom = spec.pop("admission_headroom", None)  # type: ignore[union-attr]
    policy = instantiate(spec, **kwargs)
    if victim:  # null: the class's default rule (vLLM's for all but drift)
        policy.victim = instantiate(victim)  # (victims.order_key: None, vLLM's rule)
    if gated:  # null turns a class default (drift's) off
        policy.admission_headroom = check_admission_headroom(headroom)
    return policy


# --- preparing a job: every check before an engine starts ----------------------------------------
@dataclass
class Prepared:
    """A job ready to run: its engine (constructed, not started), workload and policies."""

    engine: Any
    workload: Any
    pcfgs: dict[str, DictConfig]  # policy label -> its config node
    policies: dict[str, Any]  # policy label -> a fresh, armed policy
    faults: Any  # scheduler.faults.FaultPlan | None


def prepare(spec: JobSpec, workload: Callable[[], Any] | None = None) -> Prepared:
    """Validate and build a job. Every config error surfaces here (or in
    :meth:`JobSpec.from_config`), before an engine starts and before the workload is drawn: the
    engine's constructor validates its config without starting anything, and every policy is
    built and armed up front.

    ``workload``: builds the workload (default:
    ``data.presets.workload_from_config(spec.workload, spec.seed)``).
    """
    from hydra.utils import instantiate

    from data.presets import workload_from_config

    faults = spec.faults
    engine = instantiate(spec.engine)
    if faults is not None and faults.live_only and not engine.supports_live_faults:
        raise ValueError(
            f"faults: client and engine faults (faults.client, faults.engine) need the live "
            f"engine (engine=vllm); engine {engine.name!r} supports faults.predictor only"
        )
    pcfgs = dict(spec.policies)
    require_preset_predictor(spec.workload, pcfgs)
    policies = {name: build_policy(p) for name, p in pcfgs.items()}
    gated = [n for n, p in policies.items() if getattr(p, "admission_headroom", None) is not None]
    if gated and not getattr(engine, "supports_admission_headroom", False):
        raise ValueError(
            f"policy.admission_headroom (policies {gated}): engine {engine.name!r} does not "
            "implement the admission gate yet; use the simulator (engine=sim)"
        )
    _arm_policies(policies, faults, spec.guard, single=spec.single)
    wl = workload() if workload is not None else workload_from_config(spec.workload, spec.seed)
    cap = engine.max_requests
    if cap is not None and len(wl) > cap:
        # The live engine serves a few requests/s on CPU: the head of the workload (same
        # order and mix); engine.max_requests=null serves all of it.
        print(
            f"engine {engine.name!r}: serving the first {cap} of {len(wl)} requests "
            f"(engine.max_requests={cap}; set engine.max_requests=null for all)"
        )
        wl = wl.head(int(cap))
    return Prepared(engine, wl, pcfgs, policies, faults)


def require_preset_predictor(workload: Mapping[str, Any], pcfgs: Mapping[str, DictConfig]) -> None:
    """A workload preset judged with its own predictor (``workload.predictor``: dir + train
    overrides) names the command that trains it when a learned policy finds it missing."""
    pred = workload.get("predictor")
    if pred is None or not pred.get("train"):
        return
    for name, p in pcfgs.items():
        d = p.get("predictor_dir")
        if d is None or str(d) != str(pred["dir"]):
            continue
        if not (resolve_path(d) / "length" / "meta.json").is_file():
            train = " ".join(str(o) for o in pred["train"])
            raise FileNotFoundError(
                f"policy {name!r}: workload {workload.get('name')!r} is judged with the "
                f"predictor at {d}, which is not trained yet; train it with `python train.py "
                f"{train} out_dir={d} logger=none` (or run the suite: python -m "
                "report.generalisation, which trains it)"
            )


def _arm_policies(policies: Mapping[str, Any], faults: Any, guard: Any, single: bool) -> None:
    """Predictor guard and injected predictor faults on the learned policies (others have no
    predictor: with a single policy that is a config error, in the bare command a note)."""
    from scheduler.faults import guard_policy, inject_predictor_faults

    for name, policy in policies.items():
        learned = getattr(policy, "lengths", None) is not None
        if guard is not None and learned:
            guard_policy(policy, guard)
        if faults is None or faults.predictor is None:
            continue
        if learned:
            inject_predictor_faults(policy, faults.predictor)
        elif single:
            raise ValueError(
                f"faults.predictor: policy {name!r} has no learned predictor to inject "
                "faults into; use a learned policy (+policy=drift or +policy=sjf)"
            )
        else:
            print(f"faults.predictor: policy {name!r} has no predictor; not injected")


# --- running a job -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """The offered load of a job, fixed once per workload (every policy sees the same)."""

    utilisation: float | None  # None when the load was set as rate_rps
    rate_rps: float
    capacity_rps: float  # NaN when rate_rps was given


def offered_load(load: LoadSpec, engine: Any, workload: Any) -> Load:
    if load.rate_rps is not None:
        return Load(None, load.rate_rps, float("nan"))
    assert load.utilisation is not None  # (JobSpec.from_config checked the load)
    capacity = float(engine.capacity_rps(workload))
    return Load(load.utilisation, load.utilisation * capacity, capacity)


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Run every selected policy on one workload and engine; returns summaries by policy."""
    pcfgs = policy_configs(cfg)
    spec = JobSpec.from_config(cfg, pcfgs)  # the config, converted once: typed from here down
    job = prepare(spec)
    return run_prepared(spec, run_dir, job)


def run_prepared(spec: JobSpec, run_dir: Path, job: Prepared) -> dict[str, dict[str, Any]]:
    """Run a prepared job into ``run_dir`` (one sub-directory per policy unless ``+policy=``);
    the engine is started once for the capacity probe and every policy, and shut down when the
    job ends, also when a run fails."""
    from scheduler.metrics import workload_slos

    with job.engine:
        load = offered_load(spec.load, job.engine, job.workload)
        workload = job.workload.at_rate(load.rate_rps)
        ctx = _JobContext(
            spec=spec,
            engine=job.engine,
            workload=workload,
            load=load,
            slos=workload_slos(workload),
            overlap=train_overlap(spec, workload, job.pcfgs),
            distinct=workload.distinct_prompts(),  # once: the same workload for every policy
            faults=job.faults,
        )
        print(
            f"workload {workload.name!r} seed {spec.seed}: {len(workload)} requests, "
            f"capacity {load.capacity_rps:.3f} req/s, load {load.rate_rps:.3f} req/s "
            f"(utilisation {'n/a' if load.utilisation is None else load.utilisation})"
        )
        single = len(job.pcfgs) == 1 and spec.single
        summaries = {
            name: run_policy(
                ctx, name, pcfg, job.policies[name], run_dir if single else run_dir / name
            )
            for name, pcfg in job.pcfgs.items()
        }
        if len(summaries) > 1:
            write_comparison(ctx, run_dir, summaries)
        return summaries


def train_overlap(spec: JobSpec, workload: Any, pcfgs: Mapping[str, DictConfig]) -> dict:
    """``train_overlap`` per policy (None without a predictor); refuses a learned policy on
    prompts its predictor trained on unless ``allow_train_overlap`` (``data.holdout``)."""
    from data.holdout import train_overlaps

    dirs = {
        name: resolve_path(p.predictor_dir) if p.get("predictor_dir") is not None else None
        for name, p in pcfgs.items()
    }
    return train_overlaps(
        workload.requests,
        dirs,
        allow=spec.allow_train_overlap,
        workload=workload.name,
    )


@dataclass
class _JobContext:
    """What every policy of a job shares."""

    spec: JobSpec
    engine: Any
    workload: Any  # at its offered rate
    load: Load
    slos: dict[str, tuple[float, float]]
    overlap: dict[str, float | None]
    distinct: int
    faults: Any

    def identity(self, policy: str, **kw: Any) -> Any:
        from report.tracking import evaluate_identity

        return evaluate_identity(
            policy=policy,
            workload=self.workload.name,
            seed=self.spec.seed,
            engine=self.engine.name,
            utilisation=self.load.utilisation,
            rate_rps=self.load.rate_rps,
            **kw,
        )


def run_policy(ctx: _JobContext, name: str, pcfg: DictConfig, policy: Any, out_dir: Path) -> dict:
    """One policy of a job: wandb run, INCOMPLETE marker, engine run, outputs, summary."""
    from report.tracking import log_evaluation, start_run
    from scheduler.metrics import summarize

    engine = ctx.engine
    identity = ctx.identity(
        name,
        policy_params=OmegaConf.to_container(pcfg, resolve=True),
        engine_params=engine.describe(),
        name=ctx.spec.run_name,
        extra={"capacity_rps": ctx.load.capacity_rps, "train_overlap": ctx.overlap[name]},
    )
    with start_run(dict(ctx.spec.logger), identity, dir=out_dir) as tracker:
        # marks the job unfinished until summary.json is written (report.runs reads it): a run
        # that raises or is killed stays flagged, also in the bare command's tree
        marker = runs.mark_running(out_dir, f"running policy {name}\n")
        t0 = time.perf_counter()
        try:
            result = engine.run(ctx.workload, policy, faults=ctx.faults, progress=f"{name}")
        except BaseException as e:
            # the records so far (engine death, policy bug, Ctrl-C), marked incomplete; then
            # re-raise: wandb finishes (start_run), the engine shuts down (run_prepared)
            text = runs.write_partial(out_dir, name, e)
            runs.atomic_write(marker, lambda p: p.write_text(text))
            raise
        finally:
            close = getattr(getattr(policy, "lengths", None), "close", None)
            if close is not None:
                close()  # the predictor guard's worker thread
        wall = time.perf_counter() - t0
        extra = _summary_extra(ctx, name, policy, result, wall)
        summary = summarize(result.records, ctx.slos, extra, tokens=result.meta)
        runs.write_outputs(out_dir, result, summary)  # summary.json last: marks the job finished
        marker.unlink(missing_ok=True)
        log_evaluation(tracker, runs.clean_json(summary))
    lat = summary["latency"]
    print(
        f"  {name:14s} E2E mean {lat['e2e_s']['mean']:8.2f} s  p99 "
        f"{lat['e2e_s']['p99']:8.2f} s  TTFT p99 {lat['ttft_s']['p99']:8.2f} s  "
        f"SLO {summary['slo']['attainment']:.3f}  ({wall:.1f} s)"
    )
    return summary


def _summary_extra(ctx: _JobContext, name: str, policy: Any, result: Any, wall: float) -> dict:
    from scheduler.faults import predictor_health
    from scheduler.policies.victims import describe_victim

    return {
        "policy": name,
        "engine": ctx.engine.name,
        "workload": ctx.workload.name,
        "seed": ctx.spec.seed,
        "utilisation": ctx.spec.load.utilisation,
        "rate_rps": ctx.load.rate_rps,
        "capacity_rps": ctx.load.capacity_rps,
        "train_overlap": ctx.overlap[name],
        "allow_train_overlap": ctx.spec.allow_train_overlap,
        "distinct_prompts": ctx.distinct,
        "unseen_by": ctx.spec.workload.get("unseen_by"),
        "sim_wall_s": wall,
        "policy_params": {
            **policy.describe(),
            **describe_victim(policy.victim),
            **_describe_headroom(policy),
        },
        "predictor": predictor_health(policy) or result.meta.get("predictor"),
        "faults": ctx.faults.as_dict() if ctx.faults is not None else None,
        "client_faults": result.meta.get("client_faults"),
        "engine_meta": {
            k: v for k, v in result.meta.items() if isinstance(v, int | float | str | bool)
        },
    }


def _describe_headroom(policy: Any) -> dict[str, float]:
    """The admission gate in summary.json's policy_params, only when set (older summaries
    have no key: vLLM's rule)."""
    h = getattr(policy, "admission_headroom", None)
    return {} if h is None else {"admission_headroom": h}


def write_comparison(ctx: _JobContext, run_dir: Path, summaries: Mapping[str, dict]) -> None:
    """``comparison.csv`` over the job's policies, printed with its plain-words reading."""
    from report.tracking import start_run
    from scheduler.metrics import comparison_reading, comparison_table

    spec = ctx.spec
    table = comparison_table(summaries, baseline=spec.baseline, reference=spec.reference)
    runs.atomic_write(run_dir / runs.COMPARISON, lambda p: table.to_csv(p))
    print()
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    reading = comparison_reading(table, baseline=spec.baseline, reference=spec.reference)
    if reading:
        print(
            f"\nWhat this says (workload {ctx.workload.name!r}, utilisation "
            f"{spec.load.utilisation}, seed {spec.seed}, {ctx.distinct:,} distinct "
            "prompts; one seed: use a sweep for intervals):"
        )
        for line in reading:
            print(f"  - {line}")
    identity = ctx.identity(
        "compare",
        name=f"compare-{ctx.workload.name}-{spec.seed}",
        extra={"compare": ",".join(summaries)},
    )
    with start_run(dict(spec.logger), identity, dir=run_dir) as tracker:
        tracker.log_table("comparison", table.reset_index())


# --- whole jobs ----------------------------------------------------------------------------------
def run_job(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """``evaluate.py``'s job: skipped when ``skip_finished`` and the directory holds a finished
    run of this config; else the config is saved and the job run. None when skipped."""
    if cfg.get("skip_finished") and runs.finished_same_config(run_dir, cfg):
        print(f"skipping {run_dir}: it holds a finished run of this config (skip_finished=true)")
        return None
    runs.save_config(run_dir, cfg)
    return evaluate(cfg, run_dir)


@dataclass(frozen=True)
class Arm:
    """One policy variant of a group: ``+policy=<policy>`` plus ``overrides``, run as ``label``."""

    label: str
    policy: str
    overrides: tuple[str, ...] = ()


JOBS = {"run": 0, "reused": 0}  # arms run / reused by this process (the report headers)


def run_arms(
    run_dir: Path,
    base: Sequence[str],
    arms: Sequence[Arm],
    workload: Callable[[], Any],
    rate_rps: float | None = None,
) -> dict[str, Path]:
    """Run each arm on one workload (same seed, same load) into ``run_dir/<label>``: one job
    whose policies are the arms that have no finished run of the same config yet.

    ``base``: overrides shared by every arm (logger=none is added); ``workload``: builds the
    workload (called only if some arm must run). Writes ``group_timing.json`` (wall time of the
    group: workload build, capacity probe, every arm run).
    """
    base = [*base, "logger=none"]
    todo: dict[str, DictConfig] = {}
    dirs: dict[str, Path] = {}
    for arm in arms:
        cfg = compose([*base, f"+policy={arm.policy}", *arm.overrides])
        if rate_rps is not None:
            with open_dict(cfg):
                cfg.rate_rps = float(rate_rps)
        d = dirs[arm.label] = run_dir / arm.label
        if runs.finished_same_config(d, cfg):
            continue
        runs.save_config(d, cfg)
        todo[arm.label] = cfg
    if todo:
        cfg0 = OmegaConf.create(OmegaConf.to_container(next(iter(todo.values())), resolve=False))
        del cfg0["policy"]  # no policy key: one sub-directory per arm
        t0 = time.perf_counter()
        spec = JobSpec.from_config(cfg0, {label: c.policy for label, c in todo.items()})
        job = prepare(spec, workload)
        run_prepared(spec, run_dir, job)
        timing = {"wall_s": time.perf_counter() - t0, "arms": sorted(todo)}
        runs.write_json(run_dir / "group_timing.json", timing)
    JOBS["run"] += len(todo)
    JOBS["reused"] += len(dirs) - len(todo)
    return dirs


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, a SLURM time limit) raise KeyboardInterrupt, so
    the records so far are written marked incomplete, wandb finishes and the engine shuts down.

    SIGINT gets Python's handler even when the process started with it ignored (a shell starts
    background jobs so): ``kill -INT`` must still stop and flush the run.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)
