"""Simulator fidelity: the same workload and policy on the live vLLM engine and the simulator.

    python -m report.fidelity                       # drift, 150 requests, utilisation 0.8
    python -m report.fidelity --policy fifo --requests 300 --out outputs/fidelity
    python -m report.fidelity --save-profile scheduler/sim/fitted/cpu_tiny_llama.json
    python -m report.fidelity workload=poisson engine.max_num_seqs=8   # Hydra overrides

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
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
        return {"metrics": rows, "meta": _jsonable(self.meta)}

    def to_markdown(self) -> str:
        cols = list(self.table.columns)
        lines = [
            "| metric | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for m in self.table.index:
            cells = []
            for c in cols:
                v = self.table.loc[m, c]
                if not np.isfinite(v):
                    cells.append("n/a")
                elif c.startswith("err"):
                    cells.append(f"{v:+.1%}")
                else:
                    cells.append(f"{v:.4g}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "item"):
        return _jsonable(o.item())
    if isinstance(o, str | int | bool) or o is None:
        return o
    return str(o)


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


class ReplayedLoad:
    """A cost model times the live run's slowdown at the same (simulated) time.

    ``factor[k]`` = measured / predicted wall time of the live run's busy steps that started
    in window ``k`` (``window_s`` long; 1 where a window has no steps). The simulator's
    ``observer`` hook keeps ``now`` (the end of the last simulated step), so a step is scaled
    by the window it starts in; an idle jump to the next arrival is seen one step late, which
    the 1 s windows make negligible. A diagnostic for fidelity runs, not a profile.
    """

    def __init__(self, base: Any, live_steps: pd.DataFrame, window_s: float = 1.0) -> None:
        from scheduler.sim.calibrate import usable_steps

        s, y = usable_steps(live_steps)
        pred = np.array(
            [
                base.step_time(a, b, c, d, prefill_seqs=e)
                for a, b, c, d, e in zip(
                    s["prefill_tokens"],
                    s["decode_seqs"],
                    s["kv_read_tokens"],
                    s["prefill_pairs"],
                    s["prefill_seqs"],
                )
            ]
        )
        k = (s["time_s"].to_numpy(float) // window_s).astype(np.int64)
        n = int(k.max()) + 1 if len(k) else 1
        meas = np.bincount(k, weights=y, minlength=n)
        model = np.bincount(k, weights=pred, minlength=n)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(model > 0, meas / model, 1.0)
        self.base = base
        self.window_s = float(window_s)
        self.factor = f
        self.now = 0.0

    def observe(self, state: Any) -> None:
        self.now = float(state.now)

    def step_time(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        kv_tokens: int,
        prefill_pairs: float = 0.0,
        prefill_seqs: int = 0,
    ) -> float:
        k = min(int(self.now // self.window_s), len(self.factor) - 1)
        t = self.base.step_time(
            prefill_tokens, decode_seqs, kv_tokens, prefill_pairs, prefill_seqs=prefill_seqs
        )
        return t * float(self.factor[k])

    def describe(self) -> dict[str, object]:
        f = self.factor
        return {
            **self.base.describe(),
            "load_window_s": self.window_s,
            "load_factor_p10": float(np.percentile(f, 10)),
            "load_factor_p90": float(np.percentile(f, 90)),
        }


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
    from scheduler.sim.engine import SimEngine

    _check_profiles(profiles)
    live_policy = make_policy()
    sim_policies = {p: make_policy() for p in profiles}
    owned = not engine.is_open
    try:
        engine.open()
        served = _with_requests(workload, engine.served_frame(workload))
        if rate_rps is None:
            capacity = float(engine.capacity_rps(served))
            rate = float(utilisation) * capacity
        else:
            capacity, rate = math.nan, float(rate_rps)
        served = _at_rate(served, rate)
        live = engine.run(served, live_policy, policy_name=policy_name)
        limits = engine.sim_limits()
        prov = engine.provenance()
    finally:
        if owned:
            engine.close()
    n = len(served)
    fitted, fit_stats = fit_step_profile(
        live.steps,
        origin=f"live vLLM steps: {policy_name}, {n} requests at {rate:.3g} req/s",
    )
    meta_fit = {
        **prov,
        "workload": getattr(workload, "name", "frame"),
        **(extra_meta or {}),
        "n_requests": n,
        "policy": policy_name,
        "rate_rps": rate,
        "capacity_rps": capacity,
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
    sims = {}
    for label in profiles:
        cost: Any = None
        if label == SELF:
            cost = fitted
        elif label == SELF_LOAD:
            cost = ReplayedLoad(fitted, live.steps)
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
        sims[label] = sim.run(served, sim_policies[label])
    table = fidelity_table(live.records, {profile_label(k): v.records for k, v in sims.items()})
    st = live.steps
    meta = {
        **meta_fit,
        "limits": limits,
        "profiles": list(profiles),
        "self_fit": {**fit_stats, **fitted.describe()},
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
    return FidelityReport(table=table, meta=meta, live=live, sims=sims)


def _with_requests(workload: Any, frame: pd.DataFrame) -> Any:
    """``workload`` (a ``Workload`` or a request DataFrame) with its requests replaced."""
    if isinstance(workload, pd.DataFrame):
        return frame
    return dataclasses.replace(workload, requests=frame)


def _at_rate(workload: Any, rate: float) -> Any:
    """``Workload.at_rate`` for a ``Workload`` or a request DataFrame (same rescaling)."""
    if not isinstance(workload, pd.DataFrame):
        return workload.at_rate(rate)
    a = workload["arrival_s"].to_numpy(dtype=np.float64)
    span = float(a[-1] - a[0]) if len(a) > 1 else 0.0
    if span <= 0:
        raise ValueError("fidelity: need at least two distinct arrival times to set a rate")
    out = workload.copy()
    out["arrival_s"] = a * (((len(a) - 1) / span) / rate)
    return out


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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m report.fidelity",
        description="Replay one workload and policy on the live vLLM engine and the simulator; "
        "report the simulator's error (Markdown + JSON).",
    )
    ap.add_argument("--policy", default="drift", help="conf/policy/<name>.yaml (default drift)")
    ap.add_argument("--requests", type=int, default=150, help="first N workload requests")
    ap.add_argument("--utilisation", type=float, default=0.8, help="of the measured capacity")
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
    ap.add_argument("--out", default="outputs/fidelity", help="output directory")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = ap.parse_args(argv)
    shipped = [str(SHIPPED_PROFILE.relative_to(REPO_ROOT))] if SHIPPED_PROFILE.is_file() else []
    profiles = a.profile or [*shipped, SELF, SELF_LOAD]
    report = run_fidelity(
        policy=a.policy,
        n_requests=a.requests,
        utilisation=a.utilisation,
        rate_rps=a.rate_rps,
        profiles=profiles,
        overrides=a.overrides,
        save_profile=a.save_profile,
        out_dir=a.out,
    )
    m = report.meta
    print(
        f"fidelity: policy {a.policy}, {a.requests} requests at {m['rate_rps']:.3f} req/s "
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
