"""Simulator fidelity: the same workload and policy on the live vLLM engine and the simulator.

    python -m report.fidelity                       # drift, 150 requests, utilisation 0.8
    python -m report.fidelity --policy fifo --requests 300 --out outputs/fidelity
    python -m report.fidelity --save-profile scheduler/sim/fitted/cpu_tiny_llama.json
    python -m report.fidelity workload=poisson engine.max_num_seqs=8   # Hydra overrides
    python -m report.fidelity --preemption          # preemptions under a small KV cache

``--preemption`` (:func:`run_preemption_fidelity`): the first ``--requests`` (60) requests on
both engines under a small KV cache (``PREEMPTION_ENGINE``; the simulator gets the live
engine's usable blocks, ``VllmEngine.sim_limits``), for every ``--policy`` x ``--victim`` rule
(``+victim@policy.victim=<rule>``; default fifo, priority, sjf, drift x order_key (vLLM's rule),
cost_aware), all arriving at once (``--arrivals burst``: no timing enters) or open-loop
(``open``); the simulator's step times are this live run's fit x its load (``self+load``).
Table: preemption total, most preemptions of one request, recompute tax, live and simulated,
``sim / live - 1``, and the victims each engine reported through ``on_preempt``. Then a scripted
case whose first victim each rule determines (:func:`scripted_frame`). Exit status 1 when a
total or max per request is off by more than 25% or a scripted victim differs.

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


# ----------------------------------------------------------------------------- preemption
# `python -m report.fidelity --preemption`: the same requests under KV pressure on both engines,
# per policy x memory-victim rule, and a scripted case whose first victim each rule determines.
PREEMPTION_ENGINE: tuple[str, ...] = (
    # a KV cache of 95 usable blocks of 32 tokens (3 040 tokens): a few dozen of the first 60
    # default-workload requests are preempted when they arrive at once (measured, docs/LIVE.md)
    "engine.kv_cache_gib=0.25",  # (the memory vLLM sets aside; the override sets the blocks)
    "engine.num_gpu_blocks=96",
    "engine.block_size=32",
    "engine.max_num_seqs=16",
    "engine.max_num_batched_tokens=1024",
    "engine.max_model_len=2048",
    "engine.progress=false",
)
PREEMPTION_POLICIES = ("fifo", "priority", "sjf", "drift")
VICTIM_RULES = ("order_key", "cost_aware")  # vLLM's rule (victim key = order key), ours
PREEMPTION_TOLERANCE = 0.25  # |sim / live - 1| the totals and the max per request must meet
ARRIVALS = ("burst", "open")
# The scripted case: three requests arrive at once (a, b, c in arrival order) and outgrow the KV
# cache while decoding; its first victim is fixed by the rule (FIFO order, no length estimates):
# vLLM's rule evicts the latest arrival (c, also the one with the most KV), the cost-aware and
# least-computed rules the request with the fewest computed tokens (a).
SCRIPTED_VICTIM = {"order_key": "script_c", "cost_aware": "script_a", "least_computed": "script_a"}
SCRIPTED_SHARE = {"script_a": 0.0, "script_b": 0.25, "script_c": 0.45}  # of the usable KV


def record_victims(policy: Any) -> list[list[str]]:
    """A log of every preemption an engine reports to ``policy`` through ``on_preempt``: one
    sorted list of request ids per call (one step's victims; vLLM keeps a step's preempted ids
    in a set, so their order within a step is not observable). The policy's own hook still runs.

    The object's class is swapped for a subclass that overrides ``on_preempt``: engines call the
    hook only when the policy's *class* overrides it (an instance attribute would go unseen).
    In-process engines only (a multiprocess engine rebuilds the policy from its spec)."""
    log: list[list[str]] = []
    cls = type(policy)

    def on_preempt(self: Any, requests: Sequence[Any], now: float) -> None:
        log.append(sorted(str(r.request_id) for r in requests))
        cls.on_preempt(self, requests, now)

    policy.__class__ = type(cls.__name__, (cls,), {"on_preempt": on_preempt})
    return log


def preemption_stats(result: Any) -> dict[str, float]:
    """Preemption total, most preemptions of one request and recompute tax of a run (the
    ``preemptions`` block of ``summary.json``, ``scheduler.metrics``)."""
    from scheduler.metrics import recompute_tax

    pre = result.records["num_preemptions"].to_numpy()
    meta = result.meta
    return {
        "preemptions": float(pre.sum()),
        "max_per_request": float(pre.max()) if len(pre) else 0.0,
        "recompute_tax": recompute_tax(meta["recomputed_tokens"], meta["computed_tokens"]),
    }


def rel_diff(sim: float, live: float) -> float:
    """``sim / live - 1``; 0 when both are 0, inf when only the live value is 0."""
    if live == 0:
        return 0.0 if sim == 0 else math.inf
    return sim / live - 1.0


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading entries ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class PairRun:
    """One policy x victim rule on both engines: results and the victims each reported."""

    live: Any
    sim: Any
    live_victims: list[list[str]]
    sim_victims: list[list[str]]


def run_pair(
    engine: Any, served: Any, make_policy: Callable[[], Any], limits: dict[str, int], name: str
) -> PairRun:
    """``served`` on the open live engine, then on a simulator with the same limits whose step
    times are fitted on this live run and scaled by its measured slowdown (``self+load``), so
    what differs is the scheduling model, not the clock."""
    from scheduler.sim.calibrate import fit_step_profile
    from scheduler.sim.engine import SimEngine

    live_policy, sim_policy = make_policy(), make_policy()
    live_victims, sim_victims = record_victims(live_policy), record_victims(sim_policy)
    live = engine.run(served, live_policy, policy_name=name)
    fitted, _ = fit_step_profile(live.steps, origin=f"live vLLM steps: {name}")
    cost = ReplayedLoad(fitted, live.steps)
    sim = SimEngine(profile="l4-llama3-8b", cost=cost, observer=cost.observe, **limits)
    return PairRun(live, sim.run(served, sim_policy), live_victims, sim_victims)


def pair_row(policy: str, victim: str, pair: PairRun) -> dict[str, Any]:
    """One row of the preemption table: live and simulated values, ``sim / live - 1``, and how
    the victims compare (first victim, events agreeing from the start)."""
    lv, sv = preemption_stats(pair.live), preemption_stats(pair.sim)
    row: dict[str, Any] = {"policy": policy, "victim": victim}
    for k in lv:
        row[f"live_{k}"], row[f"sim_{k}"] = lv[k], sv[k]
        row[f"diff_{k}"] = rel_diff(sv[k], lv[k])
    a, b = pair.live_victims, pair.sim_victims
    row["live_first_victim"] = ",".join(a[0]) if a else ""
    row["sim_first_victim"] = ",".join(b[0]) if b else ""
    row["victim_steps_live"], row["victim_steps_sim"] = len(a), len(b)
    row["victim_steps_same_from_start"] = common_prefix(a, b)
    return row


def scripted_frame(limits: dict[str, int]) -> pd.DataFrame:
    """The scripted case (``SCRIPTED_VICTIM``) sized to the engine's KV cache: prompts of
    1 block and ``SCRIPTED_SHARE`` of the usable blocks, outputs up to the context window, so
    the three run together and their decodes outgrow the cache long before any finishes."""
    from scheduler.sim.synthetic import synthetic_frame

    bs, blocks, mml = limits["block_size"], limits["num_gpu_blocks"], limits["max_model_len"]
    nblocks = {k: max(1, round(v * blocks)) for k, v in SCRIPTED_SHARE.items()}
    prompts = {k: n * bs - 1 for k, n in nblocks.items()}
    # decoding together, the three fill the free blocks in about free tokens / 3 steps: each
    # must still be decoding then (its output is what the context window leaves)
    fill_steps = (blocks - sum(nblocks.values())) * bs // len(prompts)
    if blocks < 12 or mml - max(prompts.values()) < fill_steps + 2 * bs:
        raise ValueError(
            f"scripted victim case: needs >= 12 usable KV blocks and max_model_len >= "
            f"{max(prompts.values()) + fill_steps + 2 * bs} (got {blocks} blocks, {mml})"
        )
    df = synthetic_frame(len(prompts), seed=0)
    df["request_id"] = list(prompts)
    df["tier"] = "standard"
    df["arrival_s"] = 0.0
    df["prompt_tokens"] = np.array(list(prompts.values()), dtype=np.int64)
    # long enough to outgrow the cache (after about fill_steps), short enough to finish soon
    df["output_tokens"] = np.minimum(mml - df["prompt_tokens"], 2 * fill_steps + 4 * bs)
    df["max_tokens"] = df["output_tokens"]
    return df


@dataclass
class PreemptionReport:
    """Preemption fidelity: one row per policy x victim rule (``table``), one per rule on the
    scripted case (``scripted``), and how they were obtained (``meta``)."""

    table: pd.DataFrame
    scripted: pd.DataFrame
    meta: dict[str, Any]

    def agrees(self, tol: float = PREEMPTION_TOLERANCE) -> bool:
        """Totals and max per request within ``tol``; the scripted victims as determined."""
        t = self.table
        close = (t[["diff_preemptions", "diff_max_per_request"]].abs() <= tol).all(axis=None)
        return bool(close and self.scripted["as_determined"].all())

    def to_json(self) -> dict[str, Any]:
        return {
            "table": _jsonable(self.table.to_dict(orient="records")),
            "scripted": _jsonable(self.scripted.to_dict(orient="records")),
            "meta": _jsonable(self.meta),
        }

    def to_markdown(self) -> str:
        return "\n\n".join((_md_table(self.table), _md_table(self.scripted)))


def _md_cell(col: str, v: Any) -> str:
    if isinstance(v, str):
        return v or "-"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    v = float(v)
    if not math.isfinite(v):
        return "n/a" if math.isnan(v) else "inf"
    if col.startswith("diff_"):
        return f"{v:+.1%}"
    return f"{v:.4g}"


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_md_cell(c, r[c]) for c in cols) + " |")
    return "\n".join(lines)


def scripted_rows(
    engine: Any, limits: dict[str, int], make_policy: Callable[[str], Any], rules: Sequence[str]
) -> pd.DataFrame:
    """The scripted case under FIFO with each rule: the first victim live and simulated, the
    one the rule determines, and whether the whole victim sequence is the same."""
    frame = engine.served_frame(scripted_frame(limits))
    rows = []
    for rule in rules:
        pair = run_pair(engine, frame, lambda r=rule: make_policy(r), limits, f"scripted/{rule}")
        a, b = pair.live_victims, pair.sim_victims
        first_live, first_sim = (",".join(x[0]) if x else "" for x in (a, b))
        expected = SCRIPTED_VICTIM.get(rule, "")
        rows.append(
            {
                "victim": rule,
                "determined_victim": expected or "n/a",
                "live_first_victim": first_live,
                "sim_first_victim": first_sim,
                "as_determined": bool(first_live == first_sim and (first_live == expected)),
                "same_sequence": a == b,
                "live_preemptions": float(sum(map(len, a))),
                "sim_preemptions": float(sum(map(len, b))),
            }
        )
    return pd.DataFrame(rows)


def preemption_served(
    engine: Any, workload: Any, arrivals: str, rate_rps: float | None, utilisation: float
) -> tuple[Any, float]:
    """The workload as the engine serves it, all arriving at 0 (``burst``: the scheduling model
    alone, step by step) or open-loop at ``rate_rps`` (else ``utilisation`` x the measured
    capacity: the timing model enters too). Returns (served workload, rate or NaN)."""
    served = _with_requests(workload, engine.served_frame(workload))
    if arrivals == "burst":
        frame = workload_frame_of(served).copy()
        frame["arrival_s"] = 0.0
        return _with_requests(served, frame), math.nan
    rate = rate_rps if rate_rps is not None else utilisation * engine.capacity_rps(served)
    return _at_rate(served, float(rate)), float(rate)


def workload_frame_of(workload: Any) -> pd.DataFrame:
    return workload if isinstance(workload, pd.DataFrame) else workload.requests


def victim_config(policy: str, victim: str, overrides: Sequence[str]) -> Any:
    """``conf/evaluate.yaml`` with ``engine=vllm``, the overrides, ``+policy=<policy>`` and
    the memory-victim rule ``+victim@policy.victim=<victim>`` (``conf/victim/``)."""
    from report.jobs import compose

    over = ["engine=vllm", "logger=none", *overrides, f"+policy={policy}"]
    return compose([*over, f"+victim@policy.victim={victim}"])


def run_preemption_fidelity(
    policies: Sequence[str] = PREEMPTION_POLICIES,
    victims: Sequence[str] = VICTIM_RULES,
    n_requests: int = 60,
    arrivals: str = "burst",
    rate_rps: float | None = None,
    utilisation: float = 1.0,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
) -> PreemptionReport:
    """Compose every policy x rule (``+victim@policy.victim=<rule>``; ``PREEMPTION_ENGINE``
    then ``overrides``), build them all before the engine starts, run each pair on one engine,
    then the scripted case; write ``preemption.md``/``preemption.json`` under ``out_dir``."""
    from hydra.utils import instantiate

    from data.presets import workload_from_config
    from report.jobs import build_policy

    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals {arrivals!r}: expected one of {ARRIVALS}")
    if not isinstance(n_requests, int) or n_requests < 2:
        raise ValueError(f"n_requests={n_requests!r}: expected an integer >= 2")
    over = [*PREEMPTION_ENGINE, *overrides]
    cfgs = {(p, v): victim_config(p, v, over) for p in policies for v in victims}
    for c in cfgs.values():
        build_policy(c.policy)  # a bad policy or rule fails before the engine starts
    scripted_cfgs = {v: victim_config("fifo", v, over) for v in victims}
    cfg0 = next(iter(cfgs.values()))
    engine = instantiate(cfg0.engine)
    if engine.cfg.process_mode != "inprocess":
        raise ValueError("--preemption: needs engine.process_mode=inprocess (victims are logged)")
    workload = workload_from_config(cfg0.workload, seed=int(cfg0.seed)).head(n_requests)
    rows = []
    with engine:
        limits = engine.sim_limits()
        served, rate = preemption_served(engine, workload, arrivals, rate_rps, utilisation)
        for (p, v), c in cfgs.items():
            pair = run_pair(engine, served, lambda c=c: build_policy(c.policy), limits, p)
            rows.append(pair_row(p, v, pair))
        scripted = scripted_rows(
            engine, limits, lambda v: build_policy(scripted_cfgs[v].policy), victims
        )
        prov = engine.provenance()
    meta = {
        **prov,
        "how": "python -m report.fidelity --preemption",
        "workload": getattr(workload, "name", "frame"),
        "seed": int(cfg0.seed),
        "n_requests": len(workload_frame_of(served)),
        "arrivals": arrivals,
        "rate_rps": rate,
        "limits": limits,
        "vllm_num_gpu_blocks": engine.num_gpu_blocks,
        "overrides": list(overrides),
        "tolerance": PREEMPTION_TOLERANCE,
    }
    report = PreemptionReport(pd.DataFrame(rows), scripted, meta)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "preemption.md").write_text(report.to_markdown() + "\n")
        text = json.dumps(report.to_json(), indent=1, allow_nan=False)
        (out / "preemption.json").write_text(text + "\n")
    return report


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


def main_preemption(a: argparse.Namespace) -> int:
    """``--preemption``: the table, the scripted case and whether they agree (exit 1 if not)."""
    report = run_preemption_fidelity(
        policies=a.policy or PREEMPTION_POLICIES,
        victims=a.victim or VICTIM_RULES,
        n_requests=a.requests or 60,
        arrivals=a.arrivals,
        rate_rps=a.rate_rps,
        utilisation=1.0 if a.utilisation is None else a.utilisation,
        overrides=a.overrides,
        out_dir=a.out,
    )
    m = report.meta
    rate = "at once" if m["arrivals"] == "burst" else f"at {m['rate_rps']:.3f} req/s"
    print(
        f"preemption fidelity: {m['n_requests']} requests {rate}; KV {m['limits']['num_gpu_blocks']}"
        f" usable blocks of {m['limits']['block_size']} tokens, max_num_seqs "
        f"{m['limits']['max_num_seqs']}, max_num_batched_tokens "
        f"{m['limits']['max_num_batched_tokens']}"
    )
    print(report.to_markdown())
    ok = report.agrees()
    print(
        f"within {PREEMPTION_TOLERANCE:.0%} (totals, max per request) and scripted victims as "
        f"determined: {'yes' if ok else 'NO'}; written to {a.out}/preemption.md and .json"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
