"""Simulator fidelity: the same workload and policy on the live vLLM engine and the simulator.

    python -m report.fidelity                       # drift, 150 requests, utilisation 0.8
    python -m report.fidelity --policy fifo --requests 300 --out outputs/fidelity
    python -m report.fidelity --save-profile scheduler/sim/fitted/cpu_tiny_llama.json
    python -m report.fidelity workload=poisson engine.max_num_seqs=8   # Hydra overrides
    python -m report.fidelity --preemption          # preemptions under a small KV cache

``--preemption``: :mod:`report.preemption_fidelity`.

Procedure (:func:`run_fidelity`):

1. compose ``conf/evaluate.yaml`` with ``engine=vllm`` and the overrides; build the workload and
   take its first ``n_requests``;
2. start the live engine and rewrite the workload as the engine serves it
   (:meth:`VllmEngine.served_frame`: the model's tokenizer, lengths clamped to its context), so
   both engines compute exactly the same tokens;
3. rate = ``utilisation`` x the live engine's measured capacity (or ``rate_rps``);
4. replay it live under the policy; read the engine's limits (``max_num_seqs``,
   ``max_num_batched_tokens``, KV blocks, block size, ``max_model_len``);
5. simulate it with the same limits under a fresh instance of the same policy, once per step-time
   profile: each ``--profile`` file (default: the shipped CPU tiny-model profile), ``self``
   (fitted on this live run's own steps: the simulator's error with the timing model's drift
   between runs removed) and ``self+load`` (that fit times the live run's measured slowdown in
   each 1 s window, :class:`ReplayedLoad`: on a shared machine other processes slow the live
   engine down for seconds at a time, which no step-time model can know; what is left is the
   error of the simulator's scheduling and batching logic);
6. the table: live value, simulated value and relative error ``sim / live - 1`` of mean and P99
   end-to-end latency, TTFT and TPOT and of throughput, written as ``fidelity.md`` and
   ``fidelity.json`` (plus both engines' records and steps) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from report.fidelity_common import ReplayedLoad, at_rate, jsonable, with_requests
from report.preemption_fidelity import (
    ARRIVALS,
    PREEMPTION_ENGINE,
    PREEMPTION_POLICIES,
    VICTIM_RULES,
    main_preemption,
)
from report.tables import NA, md_table
from scheduler.sim.profiles import FITTED_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PROFILE = FITTED_DIR / "cpu_tiny_llama.json"
SELF = "self"  # profile label: fitted on the live run being compared
SELF_LOAD = "self+load"  # ... and scaled by the live run's measured slowdown over time
SPECIAL = (SELF, SELF_LOAD)

# (row name, summary path, what it is)
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("e2e_mean_s", ("latency", "e2e_s", "mean")),
    ("e2e_p99_s", ("latency", "e2e_s", "p99")),
    ("ttft_mean_s", ("latency", "ttft_s", "mean")),
    ("ttft_p99_s", ("latency", "ttft_s", "p99")),
    ("tpot_mean_s", ("latency", "tpot_s", "mean")),
    ("tpot_p99_s", ("latency", "tpot_s", "p99")),
    ("throughput_tok_s", ("throughput", "output_tokens_per_s")),
    ("throughput_req_s", ("throughput", "requests_per_s")),
)


@dataclass
class FidelityReport:
    """Live vs simulated metrics (``table``) and how they were obtained (``meta``)."""

    table: pd.DataFrame  # index: metric; columns: live, sim[<p>], err[<p>] per profile label p
    meta: dict[str, Any]
    live: Any = None  # EngineResult of the live run
    sims: dict[str, Any] = field(default_factory=dict)  # profile label -> EngineResult

    def to_json(self) -> dict[str, Any]:
        rows = {m: {c: _num(v) for c, v in self.table.loc[m].items()} for m in self.table.index}
        return {"metrics": rows, "meta": jsonable(self.meta)}

    def to_markdown(self) -> str:
        cols = list(self.table.columns)
        rows = [[m, *[_md_cell(c, self.table.loc[m, c]) for c in cols]] for m in self.table.index]
        return md_table(["metric", *cols], rows, align="l" + "r" * len(cols))


def _md_cell(col: str, v: float) -> str:
    """A table value: relative errors as signed percentages, the rest to 4 digits."""
    if not np.isfinite(v):
        return NA
    if col.startswith("err"):
        return f"{v:+.1%}"
    return f"{v:.4g}"


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _get(d: dict[str, Any], path: tuple[str, ...]) -> float:
    for k in path:
        d = d[k]
    return float(d) if d is not None else math.nan


def metric_values(records: pd.DataFrame) -> dict[str, float]:
    """The table's metrics for one record table (``scheduler.metrics.summarize`` definitions)."""
    from scheduler.metrics import slo_table, summarize

    s = summarize(records, slos=slo_table())  # SLOs do not enter these metrics
    return {name: _get(s, path) for name, path in METRICS}


def fidelity_table(live: pd.DataFrame, sims: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Metrics of the live records and of each simulated record table, with relative errors."""
    lv = metric_values(live)
    out = pd.DataFrame({"live": pd.Series(lv)})
    for label, rec in sims.items():
        sv = pd.Series(metric_values(rec))
        out[f"sim[{label}]"] = sv
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"err[{label}]"] = sv / out["live"] - 1.0
    return out.astype("float64")


def compose_config(policy: str, overrides: Sequence[str] = ()) -> Any:
    """``conf/evaluate.yaml`` with ``engine=vllm``, ``+policy=<policy>`` and the overrides."""
    from report.jobs import compose

    return compose(["engine=vllm", "logger=none", *overrides, f"+policy={policy}"])


def run_fidelity(
    policy: str = "drift",
    n_requests: int = 150,
    utilisation: float = 0.8,
    rate_rps: float | None = None,
    profiles: Sequence[str] = (SELF,),
    overrides: Sequence[str] = (),
    save_profile: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> FidelityReport:
    """Compose the configs (``conf/evaluate.yaml``, ``engine=vllm``, ``+policy=<policy>``,
    overrides), build the workload's first ``n_requests`` and run :func:`compare_engines`."""
    from hydra.utils import instantiate

    from data.presets import check_load, workload_from_config
    from report.jobs import build_policy

    if not isinstance(n_requests, int) or n_requests < 2:
        raise ValueError(f"n_requests={n_requests!r}: expected an integer >= 2")
    check_load(utilisation, rate_rps)
    _check_profiles(profiles)
    cfg = compose_config(policy, overrides)
    engine = instantiate(cfg.engine)  # validates the engine config; starts nothing
    build_policy(cfg.policy)  # a bad policy config fails before the engine starts
    workload = workload_from_config(cfg.workload, seed=int(cfg.seed)).head(n_requests)
    report = compare_engines(
        engine,
        workload,
        lambda: build_policy(cfg.policy),
        policy_name=policy,
        utilisation=utilisation,
        rate_rps=rate_rps,
        profiles=profiles,
        save_profile=save_profile,
        extra_meta={"seed": int(cfg.seed), "overrides": list(overrides)},
    )
    if out_dir is not None:
        write_report(report, Path(out_dir))
    return report


def profile_label(profile: str) -> str:
    """The table's name for a profile: ``self``/``self+load``, or a file's stem."""
    return profile if profile in SPECIAL else Path(profile).stem


def _check_profiles(profiles: Sequence[str]) -> None:
    from scheduler.sim.profiles import build_profile

    if not profiles:
        raise ValueError("profiles: expected at least one ('self' or a fitted JSON path)")
    for p in profiles:
        if p not in SPECIAL:
            build_profile(p)  # a missing or malformed file fails before the engine starts


@dataclass
class LiveRun:
    """The live half of a comparison: what was served, at which rate, and what vLLM did."""

    served: Any  # the workload as the engine serves it, at the replayed rate
    result: Any  # the live EngineResult
    rate: float  # req/s replayed
    capacity: float  # measured req/s capacity (NaN when the rate was given)
    limits: dict[str, int]  # the engine's limits for the simulator (VllmEngine.sim_limits)
    provenance: dict[str, Any]


def compare_engines(
    engine: Any,
    workload: Any,
    make_policy: Callable[[], Any],
    *,
    policy_name: str,
    utilisation: float = 0.8,
    rate_rps: float | None = None,
    profiles: Sequence[str] = (SELF,),
    save_profile: str | Path | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> FidelityReport:
    """Steps 2-6 of the module docstring on a built ``VllmEngine`` and ``Workload``.

    ``make_policy()`` returns a fresh policy object (one per engine run). The engine is
    opened here if it is not open, and then shut down in ``finally``.
    """
    from scheduler.sim.calibrate import fit_step_profile
    from scheduler.sim.calibrate import save_profile as write_profile

    _check_profiles(profiles)
    live_policy = make_policy()
    sim_policies = {p: make_policy() for p in profiles}
    run = _run_live(engine, workload, live_policy, policy_name, utilisation, rate_rps)
    n, limits = len(run.served), run.limits
    fitted, fit_stats = fit_step_profile(
        run.result.steps,
        origin=f"live vLLM steps: {policy_name}, {n} requests at {run.rate:.3g} req/s",
    )
    meta_fit = {
        **run.provenance,
        "workload": getattr(workload, "name", "frame"),
        **(extra_meta or {}),
        "n_requests": n,
        "policy": policy_name,
        "rate_rps": run.rate,
        "capacity_rps": run.capacity,
        "utilisation": utilisation if rate_rps is None else None,
        "how": "python -m report.fidelity (scheduler.sim.calibrate.fit_step_profile, "
        "target=wall: full step wall time of busy steps)",
    }
    if save_profile is not None:
        write_profile(
            fitted,
            save_profile,
            fit_stats,
            meta=meta_fit,
            kv_capacity_tokens=limits["num_gpu_blocks"] * limits["block_size"],
            limits=limits,
        )
    sims = {label: _simulate(label, fitted, run, sim_policies[label]) for label in profiles}
    live = run.result
    table = fidelity_table(live.records, {profile_label(k): v.records for k, v in sims.items()})
    meta = {
        **meta_fit,
        "limits": limits,
        "profiles": list(profiles),
        "self_fit": {**fit_stats, **fitted.describe()},
        **_run_meta(live, sims, fit_stats),
    }
    return FidelityReport(table=table, meta=meta, live=live, sims=sims)


def _run_live(
    engine: Any,
    workload: Any,
    policy: Any,
    policy_name: str,
    utilisation: float,
    rate_rps: float | None,
) -> LiveRun:
    """Steps 2-4: serve the workload live at its rate (the engine closed after, if opened)."""
    owned = not engine.is_open
    try:
        engine.open()
        served = with_requests(workload, engine.served_frame(workload))
        if rate_rps is None:
            capacity = float(engine.capacity_rps(served))
            rate = float(utilisation) * capacity
        else:
            capacity, rate = math.nan, float(rate_rps)
        served = at_rate(served, rate)
        live = engine.run(served, policy, policy_name=policy_name)
        return LiveRun(served, live, rate, capacity, engine.sim_limits(), engine.provenance())
    finally:
        if owned:
            engine.close()


def _simulate(label: str, fitted: Any, run: LiveRun, policy: Any) -> Any:
    """Step 5 for one profile label: the served workload on a simulator with the live limits."""
    from scheduler.sim.engine import SimEngine

    cost: Any = None
    if label == SELF:
        cost = fitted
    elif label == SELF_LOAD:
        cost = ReplayedLoad(fitted, run.result.steps)
    limits = run.limits
    sim = SimEngine(
        # self / self+load: only `cost` is used (the named profile is a placeholder)
        profile=label if label not in SPECIAL else "l4-llama3-8b",
        cost=cost,
        max_num_seqs=limits["max_num_seqs"],
        max_num_batched_tokens=limits["max_num_batched_tokens"],
        block_size=limits["block_size"],
        num_gpu_blocks=limits["num_gpu_blocks"],
        max_model_len=limits["max_model_len"],
        observer=cost.observe if isinstance(cost, ReplayedLoad) else None,
    )
    return sim.run(run.served, policy)


def _run_meta(live: Any, sims: Mapping[str, Any], fit_stats: Mapping[str, Any]) -> dict[str, Any]:
    """The step counts and timings of both engines' runs, for the report's metadata."""
    st = live.steps
    return {
        "live_wall_s": live.meta["wall_s"],
        "live_steps": len(st),
        "live_mean_step_s": float(st["duration_s"].mean()) if len(st) else math.nan,
        "sim_steps": {k: int(v.meta["steps"]) for k, v in sims.items()},
        "sim_mean_step_s": {
            k: float(v.steps["duration_s"].mean()) if len(v.steps) else math.nan
            for k, v in sims.items()
        },
        "policy_us_per_step": live.meta["policy_us_per_step"],
        "overhead_share": fit_stats.get("overhead_share"),
        "clamp": live.meta["clamp"],
    }


def write_report(report: FidelityReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.md").write_text(report.to_markdown() + "\n")
    (out / "fidelity.json").write_text(
        json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n"
    )
    if report.live is not None:
        report.live.records.to_parquet(out / "live_records.parquet")
        report.live.steps.to_parquet(out / "live_steps.parquet")
    for label, res in report.sims.items():
        safe = "".join(ch if ch.isalnum() else "_" for ch in Path(label).stem)
        res.records.to_parquet(out / f"sim_{safe}_records.parquet")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m report.fidelity",
        description="Replay one workload and policy on the live vLLM engine and the simulator; "
        "report the simulator's error (Markdown + JSON). --preemption: the same under KV "
        "pressure, per policy x memory-victim rule, plus a scripted first-victim case.",
    )
    ap.add_argument(
        "--policy",
        action="append",
        default=None,
        help="conf/policy/<name>.yaml (default drift; --preemption: repeatable, default "
        f"{', '.join(PREEMPTION_POLICIES)})",
    )
    ap.add_argument("--requests", type=int, default=None, help="first N requests (150; 60)")
    ap.add_argument("--utilisation", type=float, default=None, help="of the measured capacity")
    ap.add_argument("--rate-rps", type=float, default=None, help="fixed rate (skips the probe)")
    ap.add_argument(
        "--profile",
        action="append",
        default=None,
        help="simulator step-time profile(s): a fitted JSON path, 'self' (fit on this run) or "
        "'self+load' (that fit x the run's measured slowdown per second); repeatable; default: "
        f"{SHIPPED_PROFILE.relative_to(REPO_ROOT)} (if present), self and self+load",
    )
    ap.add_argument("--save-profile", default=None, help="write this run's fitted profile here")
    ap.add_argument(
        "--preemption",
        action="store_true",
        help="preemption fidelity under a small KV cache (engine overrides: "
        f"{' '.join(PREEMPTION_ENGINE)}; yours come after them)",
    )
    ap.add_argument(
        "--victim",
        action="append",
        default=None,
        help=f"--preemption: conf/victim/<rule>.yaml, repeatable (default {' '.join(VICTIM_RULES)})",
    )
    ap.add_argument(
        "--arrivals",
        choices=ARRIVALS,
        default="burst",
        help="--preemption: all at t=0 (burst: the scheduling model alone) or open-loop at "
        "--rate-rps / --utilisation x capacity (default 1.0)",
    )
    ap.add_argument("--out", default="outputs/fidelity", help="output directory")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = ap.parse_args(argv)
    if not a.preemption and a.policy and len(a.policy) > 1:
        ap.error("--policy: one policy (several only with --preemption)")
    if not a.preemption and (a.victim or a.arrivals != "burst"):
        ap.error("--victim and --arrivals need --preemption")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.preemption:
        return main_preemption(a)
    shipped = [str(SHIPPED_PROFILE.relative_to(REPO_ROOT))] if SHIPPED_PROFILE.is_file() else []
    profiles = a.profile or [*shipped, SELF, SELF_LOAD]
    policy = a.policy[0] if a.policy else "drift"
    n = a.requests or 150
    report = run_fidelity(
        policy=policy,
        n_requests=n,
        utilisation=0.8 if a.utilisation is None else a.utilisation,
        rate_rps=a.rate_rps,
        profiles=profiles,
        overrides=a.overrides,
        save_profile=a.save_profile,
        out_dir=a.out,
    )
    m = report.meta
    print(
        f"fidelity: policy {policy}, {n} requests at {m['rate_rps']:.3f} req/s "
        f"(capacity {m['capacity_rps']:.3f}); live {m['live_steps']} steps, mean step "
        f"{m['live_mean_step_s'] * 1e3:.2f} ms, outside schedule+model "
        f"{(m['overhead_share'] or math.nan):.1%}; policy p50 "
        f"{m['policy_us_per_step']['p50']:.0f} us/step"
    )
    print(report.to_markdown())
    print(f"written to {a.out}/fidelity.md and fidelity.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
