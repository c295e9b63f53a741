"""``python evaluate.py``: policies drive an engine over a workload; QoS metrics out.

    python evaluate.py                         # every policy in `compare`, comparison table
    python evaluate.py +policy=drift           # one policy
    python evaluate.py -m +policy=fifo,sjf,drift seed=0,1,2
    python evaluate.py engine=sim_paper workload=paper utilisation=1.05 logger=none

Thin entry: compose -> workload (``data.presets``) -> engine (``hydra.utils.instantiate``) ->
load = utilisation x ``engine.capacity_rps(workload)`` -> ``engine.run(workload, policy)`` ->
``scheduler.metrics.summarize`` -> ``records.parquet``, ``steps.parquet``, ``summary.json``
(atomic writes) in the Hydra run directory (one sub-directory per policy for the bare command,
plus ``comparison.csv``) -> wandb via ``report.tracking`` (one run per policy).

Failures (docs/RELIABILITY.md, part 5): a job whose engine raises (a policy bug in the
simulator, a live engine that dies) or is interrupted (Ctrl-C, SIGTERM) writes the records the
engine kept (``exc.partial_result``) next to an ``INCOMPLETE`` marker naming the error and no
``summary.json``, finishes wandb and shuts the engine down; in a multirun sweep the next job
runs (Ctrl-C stops the sweep). ``+faults=<name>`` (``conf/faults/``) injects faults and
``+predictor_guard.deadline_ms=50`` puts learned predictors behind a deadline
(``scheduler.faults``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf


def _original_cwd() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(hydra.utils.get_original_cwd())
    return Path.cwd()


def _resolve(p: str | os.PathLike[str]) -> Path:
    path = Path(p)
    return path if path.is_absolute() else _original_cwd() / path


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, then rename (no torn files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _clean(o: Any) -> Any:
    """NaN/inf -> None so summary.json is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Mapping):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    return o


INCOMPLETE_MARKER = "INCOMPLETE"  # report.runs.MARKER: present while a job runs or after it failed
PARTIAL_META = "partial.json"  # what a failed job kept: error, counts (no summary.json)


def _write_marker(path: Path, text: str) -> None:
    _atomic_write(path, lambda p: p.write_text(text))


def write_partial(out_dir: Path, name: str, exc: BaseException) -> str:
    """After a failed or interrupted run: the records the engine kept (``exc.partial_result``,
    both engines) and ``partial.json``; never ``summary.json``, so the job stays incomplete.
    Returns the marker text. Never raises over ``exc``."""
    kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    head = f"policy {name} {kind}: {type(exc).__name__}: {exc}\n"
    res = getattr(exc, "partial_result", None)
    if res is None or getattr(res, "records", None) is None:
        why = getattr(exc, "partial_error", "the engine kept no records of this run")
        return head + f"no records were written for it ({why})\n"
    try:
        (out_dir / "summary.json").unlink(missing_ok=True)
        _atomic_write(out_dir / "records.parquet", lambda p: res.records.to_parquet(p))
        if getattr(res, "steps", None) is not None:
            _atomic_write(out_dir / "steps.parquet", lambda p: res.steps.to_parquet(p))
        meta = {**dict(res.meta or {}), "complete": False, "error": head.strip()}
        _atomic_write(
            out_dir / PARTIAL_META,
            lambda p: p.write_text(
                json.dumps(_clean(meta), indent=2, default=_json_default, allow_nan=False)
            ),
        )
    except Exception as e:  # keep the original error; say what was lost
        return head + f"its partial records could not be written ({type(e).__name__}: {e})\n"
    rec = res.records
    n_fin = int((rec["status"] == "finished").sum()) if "status" in rec else 0
    left = (res.meta or {}).get("unfinished_requests")
    return head + (
        f"partial records: {len(rec)} request(s) that ended before it ({n_fin} finished, "
        f"{len(rec) - n_fin} aborted) in records.parquet"
        + (f"; {left} unfinished request(s) left out" if left is not None else "")
        + f"; details in {PARTIAL_META}. This run is INCOMPLETE: do not compare it as finished\n"
    )


def write_outputs(out_dir: Path, result: Any, summary: Mapping[str, Any]) -> None:
    # a re-run into a finished job's directory: drop the old summary first, so a crash between
    # the renames below never pairs new records with a summary that claims completion
    (out_dir / "summary.json").unlink(missing_ok=True)
    _atomic_write(out_dir / "records.parquet", lambda p: result.records.to_parquet(p))
    _atomic_write(out_dir / "steps.parquet", lambda p: result.steps.to_parquet(p))
    _atomic_write(
        out_dir / "summary.json",
        lambda p: p.write_text(
            json.dumps(_clean(summary), indent=2, default=_json_default, allow_nan=False)
        ),
    )


def workload_slos(workload: Any) -> dict[str, tuple[float, float]]:
    """(TTFT s, E2E s) per tenant from the workload's tenants, and per tier as a fallback."""
    from data.schema import TIER_SLOS

    slos: dict[str, tuple[float, float]] = dict(TIER_SLOS)
    for t in getattr(workload, "tenants", ()):
        slos[t.name] = (float(t.slo_ttft_s), float(t.slo_e2e_s))
    return slos


def policy_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The policy (``+policy=x``) or, for the bare command, every policy in ``compare``."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("policy") is not None:
        name = None
        if HydraConfig.initialized():
            name = HydraConfig.get().runtime.choices.get("policy")
        return {name or str(cfg.policy.get("_target_", "policy")).rsplit(".", 1)[-1]: cfg.policy}
    conf_dir = Path(__file__).resolve().parent / "conf" / "policy"
    out = {}
    for name in cfg.compare:
        path = conf_dir / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in conf_dir.glob("*.yaml"))
            raise ValueError(
                f"compare: unknown policy {name!r}; expected one of {known} "
                "(conf/policy/<name>.yaml)"
            )
        out[str(name)] = _compose_policy(str(name), cfg, path)
    return out


def _compose_policy(name: str, cfg: DictConfig, path: Path) -> DictConfig:
    """``+policy=name`` composed by Hydra with this run's overrides (defaults lists and
    interpolations such as ``${predictor_dir}`` resolve exactly as for a single-policy run)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if GlobalHydra.instance().is_initialized() and HydraConfig.initialized():
        task = [
            o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("policy")
        ]
        return compose(config_name="evaluate", overrides=[*task, f"+policy={name}"]).policy
    # outside a Hydra app: the file itself, resolved against this config's keys
    root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    root.policy = OmegaConf.load(path)
    return root.policy


def build_policy(pcfg: DictConfig, cfg: DictConfig) -> Any:
    from hydra.utils import instantiate

    kwargs = {}
    if "predictor_dir" in pcfg:
        kwargs["predictor_dir"] = str(_resolve(pcfg.predictor_dir))
    return instantiate(pcfg, **kwargs)


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Run every selected policy on one workload and engine; returns summaries by policy."""
    from hydra.utils import instantiate

    from data.presets import check_load, workload_from_config
    from scheduler.faults import FaultPlan, guard_config

    seed = int(cfg.seed)
    check_load(cfg.get("utilisation"), cfg.get("rate_rps"))
    # Every config error surfaces here, before an engine starts (and before the workload is
    # built): the engine's constructor validates its config without starting anything, and
    # every policy is built up front.
    faults = FaultPlan.from_config(_container(cfg.get("faults")))
    guard = guard_config(_container(cfg.get("predictor_guard")))
    engine = instantiate(cfg.engine)
    if faults is not None and faults.live_only and not _takes_faults(engine):
        raise ValueError(
            f"faults: client and engine faults (faults.client, faults.engine) need the live "
            f"engine (engine=vllm); engine {engine.name!r} supports faults.predictor only"
        )
    pcfgs = policy_configs(cfg)
    require_preset_predictor(cfg, pcfgs)
    policies = {name: build_policy(pcfg, cfg) for name, pcfg in pcfgs.items()}
    _arm_policies(policies, faults, guard, single=cfg.get("policy") is not None)
    workload = workload_from_config(cfg.workload, seed=seed)
    cap = getattr(engine, "max_requests", None)
    if cap is not None and len(workload) > cap:
        # The live engine serves a few requests/s on CPU: the head of the workload (same
        # order and mix); engine.max_requests=null serves all of it.
        print(
            f"engine {engine.name!r}: serving the first {cap} of {len(workload)} requests "
            f"(engine.max_requests={cap}; set engine.max_requests=null for all)"
        )
        workload = workload.head(int(cap))
    with contextlib.ExitStack() as stack:
        if hasattr(engine, "__enter__"):
            # One engine for the capacity probe and every policy, shut down in `finally`
            # (ExitStack) also when a run fails; sweeps build a fresh engine per job.
            stack.enter_context(engine)
        return _evaluate(cfg, run_dir, engine, workload, pcfgs, policies)


def require_preset_predictor(cfg: DictConfig, pcfgs: dict[str, DictConfig]) -> None:
    """A workload preset judged with its own predictor (``workload.predictor``: dir + train
    overrides) names the command that trains it when a learned policy finds it missing."""
    pred = cfg.workload.get("predictor")
    if pred is None or not pred.get("train"):
        return
    for name, p in pcfgs.items():
        d = p.get("predictor_dir")
        if d is None or str(d) != str(pred.dir):
            continue
        if not (_resolve(d) / "length" / "meta.json").is_file():
            train = " ".join(str(o) for o in pred.train)
            raise FileNotFoundError(
                f"policy {name!r}: workload {cfg.workload.get('name')!r} is judged with the "
                f"predictor at {d}, which is not trained yet; train it with `python train.py "
                f"{train} out_dir={d} logger=none` (or run the suite: python -m "
                "report.generalisation, which trains it)"
            )


def train_overlap(cfg: DictConfig, workload: Any, pcfgs: dict[str, DictConfig]) -> dict:
    """``train_overlap`` per policy (None without a predictor); refuses a learned policy on
    prompts its predictor trained on unless ``allow_train_overlap`` (``data.holdout``)."""
    from data.holdout import train_overlaps

    dirs = {
        name: _resolve(p.predictor_dir) if p.get("predictor_dir") is not None else None
        for name, p in pcfgs.items()
    }
    return train_overlaps(
        workload.requests,
        dirs,
        allow=bool(cfg.get("allow_train_overlap", False)),
        workload=workload.name,
    )


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _takes_faults(engine: Any) -> bool:
    import inspect

    return "faults" in inspect.signature(engine.run).parameters


def _arm_policies(policies: dict[str, Any], faults: Any, guard: Any, single: bool) -> None:
    """Predictor guard and injected predictor faults on the learned policies (others have no
    predictor: with a single policy that is a config error, in the bare command a note)."""
    from scheduler.faults import guard_policy, inject_predictor_faults

    for name, policy in policies.items():
        learned = getattr(policy, "lengths", None) is not None
        if guard is not None and learned:
            guard_policy(policy, guard)
        if faults is not None and faults.predictor is not None:
            if learned:
                inject_predictor_faults(policy, faults.predictor)
            elif single:
                raise ValueError(
                    f"faults.predictor: policy {name!r} has no learned predictor to inject "
                    "faults into; use a learned policy (+policy=drift or +policy=sjf)"
                )
            else:
                print(f"faults.predictor: policy {name!r} has no predictor; not injected")


def _evaluate(
    cfg: DictConfig,
    run_dir: Path,
    engine: Any,
    workload: Any,
    pcfgs: dict[str, DictConfig],
    policies: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    from report.tracking import evaluate_identity, log_evaluation, start_run
    from scheduler.metrics import comparison_reading, comparison_table, summarize
    from scheduler.progress import sim_observer

    seed = int(cfg.seed)
    if cfg.get("rate_rps") is not None:
        rate = float(cfg.rate_rps)
        capacity = float("nan")
    else:
        capacity = float(engine.capacity_rps(workload))
        rate = float(cfg.utilisation) * capacity
    workload = workload.at_rate(rate)
    slos = workload_slos(workload)
    overlap = train_overlap(cfg, workload, pcfgs)
    distinct = workload.distinct_prompts()  # once: the same workload for every policy
    unseen_by = _container(cfg.workload).get("unseen_by")
    single = len(pcfgs) == 1 and cfg.get("policy") is not None
    print(
        f"workload {workload.name!r} seed {seed}: {len(workload)} requests, "
        f"capacity {capacity:.3f} req/s, load {rate:.3f} req/s "
        f"(utilisation {cfg.utilisation if cfg.get('rate_rps') is None else 'n/a'})"
    )
    from scheduler.faults import FaultPlan, predictor_health

    summaries: dict[str, dict[str, Any]] = {}
    lcfg = OmegaConf.to_container(cfg.logger, resolve=True)
    faults = FaultPlan.from_config(_container(cfg.get("faults")))
    run_kw = {"faults": faults} if faults is not None and _takes_faults(engine) else {}
    for name, pcfg in pcfgs.items():
        policy = policies[name]
        out_dir = run_dir if single else run_dir / name
        params = OmegaConf.to_container(pcfg, resolve=True)
        identity = evaluate_identity(
            policy=name,
            workload=workload.name,
            seed=seed,
            engine=engine.name,
            utilisation=None if cfg.get("rate_rps") is not None else float(cfg.utilisation),
            rate_rps=rate,
            policy_params=params,
            engine_params=engine.describe(),
            name=cfg.get("run_name"),
            extra={"capacity_rps": capacity, "train_overlap": overlap[name]},
        )
        with start_run(lcfg, identity, dir=out_dir) as tracker:
            observer = None
            if hasattr(engine, "observer"):  # the simulator: quiet progress in simulated time
                observer = sim_observer(f"{name} (sim)", workload)
                engine.observer = observer
            # marks the job unfinished until summary.json is written (report.runs reads it):
            # a run that raises or is killed stays flagged, also in the bare command's tree
            marker = out_dir / INCOMPLETE_MARKER
            _write_marker(marker, f"running policy {name}\n")
            t0 = time.perf_counter()
            try:
                result = engine.run(workload, policy, **run_kw)
            except BaseException as e:
                # the records so far (engine death, policy bug, Ctrl-C), marked incomplete;
                # then re-raise: wandb finishes (start_run), the engine shuts down (ExitStack)
                _write_marker(marker, write_partial(out_dir, name, e))
                raise
            finally:
                if observer is not None:
                    observer.close()
                    engine.observer = None
                close = getattr(getattr(policy, "lengths", None), "close", None)
                if close is not None:
                    close()  # the predictor guard's worker thread
            wall = time.perf_counter() - t0
            extra = {
                "policy": name,
                "engine": engine.name,
                "workload": workload.name,
                "seed": seed,
                "utilisation": cfg.utilisation,
                "rate_rps": rate,
                "capacity_rps": capacity,
                "train_overlap": overlap[name],
                "allow_train_overlap": bool(cfg.get("allow_train_overlap", False)),
                "distinct_prompts": distinct,
                "unseen_by": unseen_by,
                "sim_wall_s": wall,
                "policy_params": policy.describe(),
                "predictor": predictor_health(policy) or result.meta.get("predictor"),
                "faults": faults.as_dict() if faults is not None else None,
                "client_faults": result.meta.get("client_faults"),
                "engine_meta": {
                    k: v for k, v in result.meta.items() if isinstance(v, int | float | str | bool)
                },
            }
            summary = summarize(result.records, slos, extra)
            write_outputs(out_dir, result, summary)  # summary.json last: marks the job finished
            marker.unlink(missing_ok=True)
            log_evaluation(tracker, _clean(summary))
            summaries[name] = summary
        lat = summary["latency"]
        print(
            f"  {name:14s} E2E mean {lat['e2e_s']['mean']:8.2f} s  p99 "
            f"{lat['e2e_s']['p99']:8.2f} s  TTFT p99 {lat['ttft_s']['p99']:8.2f} s  "
            f"SLO {summary['slo']['attainment']:.3f}  ({wall:.1f} s)"
        )
    if len(summaries) > 1:
        table = comparison_table(summaries, baseline=cfg.baseline, reference=cfg.reference)
        _atomic_write(run_dir / "comparison.csv", lambda p: table.to_csv(p))
        print()
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        reading = comparison_reading(table, baseline=cfg.baseline, reference=cfg.reference)
        if reading:
            print(
                f"\nWhat this says (workload {workload.name!r}, utilisation "
                f"{cfg.utilisation}, seed {seed}, {distinct:,} distinct "
                "prompts; one seed: use a sweep for intervals):"
            )
            for line in reading:
                print(f"  - {line}")
        identity = evaluate_identity(
            policy="compare",
            workload=workload.name,
            seed=seed,
            engine=engine.name,
            utilisation=float(cfg.utilisation),
            rate_rps=rate,
            name=f"compare-{workload.name}-{seed}",
            extra={"compare": ",".join(summaries)},
        )
        with start_run(lcfg, identity, dir=run_dir) as tracker:
            tracker.log_table("comparison", table.reset_index())
    return summaries


def finished_same_config(run_dir: Path, cfg: DictConfig) -> bool:
    """True if ``run_dir`` holds a finished evaluation (``report.runs.job_finished``) whose
    saved ``config.yaml`` equals ``cfg`` (a re-run of a resumable sweep skips it)."""
    from report.runs import job_finished

    saved = run_dir / "config.yaml"
    if not saved.is_file() or not job_finished(run_dir):
        return False
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    return old == OmegaConf.to_container(cfg, resolve=False)


def _interrupts_stop_the_run() -> None:
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


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    _interrupts_stop_the_run()

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("skip_finished") and finished_same_config(run_dir, cfg):
        print(f"skipping {run_dir}: it holds a finished run of this config (skip_finished=true)")
        return None
    _atomic_write(run_dir / "config.yaml", lambda p: OmegaConf.save(cfg, p))
    summaries = evaluate(cfg, run_dir)
    if len(summaries) == 1:  # the value a sweeper would optimise
        return float(next(iter(summaries.values()))["latency"]["e2e_s"]["mean"])
    return None


if __name__ == "__main__":
    main()
