"""``python -m report.fidelity --preemption``: preemptions on the live vLLM engine and the
simulator, the same requests under a small KV cache.

:func:`run_preemption_fidelity`: the first ``--requests`` (60) requests on both engines under a
small KV cache (``PREEMPTION_ENGINE``; the simulator gets the live engine's usable blocks,
``VllmEngine.sim_limits``), for every ``--policy`` x ``--victim`` rule
(``+victim@policy.victim=<rule>``; default fifo, priority, sjf, drift x order_key (vLLM's rule),
cost_aware), all arriving at once (``--arrivals burst``: no timing enters) or open-loop
(``open``); the simulator's step times are this live run's fit x its load (``self+load``).
Table: preemption total, most preemptions of one request, recompute tax, live and simulated,
``sim / live - 1``, and the victims each engine reported through ``on_preempt``. Then a scripted
case whose first victim each rule determines (:func:`scripted_frame`). Exit status 1 when a
total or max per request is off by more than 25% or a scripted victim differs.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from report.fidelity_common import ReplayedLoad, at_rate, jsonable, with_requests
from report.tables import NA, md_table

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
            "table": jsonable(self.table.to_dict(orient="records")),
            "scripted": jsonable(self.scripted.to_dict(orient="records")),
            "meta": jsonable(self.meta),
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
        return NA if math.isnan(v) else "inf"
    if col.startswith("diff_"):
        return f"{v:+.1%}"
    return f"{v:.4g}"


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    return md_table(cols, [[_md_cell(c, r[c]) for c in cols] for _, r in df.iterrows()])


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
    served = with_requests(workload, engine.served_frame(workload))
    if arrivals == "burst":
        frame = workload_frame_of(served).copy()
        frame["arrival_s"] = 0.0
        return with_requests(served, frame), math.nan
    rate = rate_rps if rate_rps is not None else utilisation * engine.capacity_rps(served)
    return at_rate(served, float(rate)), float(rate)


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
