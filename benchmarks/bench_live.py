"""Inside live vLLM (CPU, tiny model): policy share of step time, and replay throughput (section 4).

    python -m benchmarks.bench_live                   # both parts
    python -m benchmarks.bench_live --waiting 256 --policies fifo,weighted_fair,drift

1. *Policy share of step time at a deep queue* (helper-4's original benchmark, kept): serves
   ``waiting + max_num_seqs`` short requests (prompt 16, output 4 tokens) that all arrive at t=0
   on the tiny CPU model, so most steps see ~``waiting`` queued requests, and reports the
   adapter's own per-step timing ``policy_us`` (mirror sync, policy hooks including the
   predictor, keys, re-heapify) over the steps with at least ``waiting / 2`` requests waiting,
   as a share of the step (``sched_s + exec_s``: vLLM's scheduling plus the forward pass).
   Target: <= 5% at 256 waiting. ``drift`` reads ``artifacts/`` (``python train.py``).
2. *End-to-end replay throughput*: the same saturating workload (``--throughput-requests``
   requests, prompt 64 and output 32 tokens, all at t=0, 16 sequences) through vLLM with our
   adapter (``scheduler_cls``) under ``fifo`` and ``drift``, and through stock vLLM with its
   own ``fcfs`` and ``priority`` scheduling (no adapter; priority = tier rank), driven by the
   same replay client (``scheduler.live.replay.replay_inprocess``). Output tokens per second of
   replay wall time, median of ``--repeats`` rounds (every arm once per round, interleaved),
   as a ratio to stock FCFS.

Stock vLLM is ``VllmEngine(scheduler_impl="vllm_fcfs" | "vllm_priority")`` (conf/engine/vllm.yaml,
docs/LIVE.md): the same engine configuration and replay client with vLLM's own scheduler class.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

from benchmarks.common import emit
from report.tables import record_table

SPECS = {
    "fifo": {"_target_": "scheduler.policies.fifo.FIFOPolicy"},
    "oracle": {"_target_": "scheduler.policies.oracle.OraclePolicy"},
    "weighted_fair": {"_target_": "scheduler.policies.weighted_fair.WeightedFairPolicy"},
    "drift": {"_target_": "scheduler.policies.drift.DriftPolicy"},
}


def workload(n: int, prompt_tokens: int, output_tokens: int) -> pd.DataFrame:
    tiers = np.array(["premium", "standard", "batch"])[np.arange(n) % 3]
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": "t0",
            "tier": tiers,
            "category": "chat",
            "source": "bench",
            "model": "m",
            "arrival_s": 0.0,
            "prompt": ["Write a short poem about the sea."] * n,
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
        }
    )


def policy_share(waiting: int, max_num_seqs: int, policies: list[str]) -> dict:
    from hydra.utils import instantiate

    from scheduler.live.engine import VllmEngine

    df = workload(waiting + max_num_seqs, 16, 4)
    out = {}
    with VllmEngine(max_num_seqs=max_num_seqs, prompt_source="synthetic") as eng:
        for name in policies:
            try:
                policy = instantiate(SPECS[name])
            except Exception as e:  # e.g. drift without artifacts: reported, not fatal
                out[name] = {"skipped": repr(e)[:200]}
                continue
            res = eng.run(df, policy)
            s = res.steps
            deep = s[
                s[["waiting_premium", "waiting_standard", "waiting_batch"]].sum(axis=1)
                >= waiting // 2
            ]
            us = deep["policy_us"].to_numpy()
            step_us = (deep["sched_s"] + deep["exec_s"]).to_numpy() * 1e6
            cpu_us = deep["policy_cpu_us"].to_numpy()
            step_cpu_us = deep["cpu_s"].to_numpy() * 1e6
            out[name] = {
                "steps": len(deep),
                "policy_p50_us": float(np.percentile(us, 50)),
                "policy_p99_us": float(np.percentile(us, 99)),
                "step_p50_ms": float(np.percentile(step_us, 50) / 1e3),
                "share_pct": float(100 * us.sum() / step_us.sum()),
                "share_p50_pct": float(100 * np.median(us / step_us)),
                # the same on the engine thread's CPU time (time.thread_time): other
                # processes' time slices on the shared machine count in neither part
                "policy_cpu_p50_us": float(np.percentile(cpu_us, 50)),
                "cpu_share_pct": float(100 * cpu_us.sum() / step_cpu_us.sum()),
                "faults": res.meta["policy_faults"],
            }
    return out


def throughput(n: int, repeats: int, max_num_seqs: int = 16) -> list[dict]:
    """Every arm once per round, ``repeats`` rounds (interleaved: a drifting background load on
    the shared machine hits every arm alike); engine start-up is not timed. Every arm is one
    ``VllmEngine.run`` (the same replay client and bookkeeping); the stock arms only differ in
    ``scheduler_impl`` (vLLM's own scheduler class and policy, no adapter)."""
    from hydra.utils import instantiate

    from scheduler.live.engine import VllmEngine

    df = workload(n, 64, 32)
    cfg = {"max_num_seqs": max_num_seqs, "prompt_source": "synthetic", "progress": False}
    arms = [("ours:fifo", "driftsched", "fifo"), ("ours:drift", "driftsched", "drift")]
    arms += [("vllm:fcfs", "vllm_fcfs", "fifo"), ("vllm:priority", "vllm_priority", "fifo")]
    # Every engine is started before any policy is built: a predictor that imports llvmlite
    # (numba-compiled trees) breaks the start of a later vLLM engine in the same process
    # (vLLM's triton dispatcher scan trips over llvmlite's FFI wrappers).
    engines = {}
    res: dict[str, list[tuple[float, int]]] = {}
    try:
        for impl in dict.fromkeys(impl for _, impl, _ in arms):
            engines[impl] = VllmEngine(scheduler_impl=impl, **cfg).open()
        for _ in range(repeats):
            for arm, impl, pol in arms:
                try:
                    r = engines[impl].run(df, instantiate(SPECS[pol]))
                except Exception as e:  # drift without artifacts: reported, not fatal
                    print(f"  live {arm}: {e!r}"[:300])
                    continue
                res.setdefault(arm, []).append((r.meta["wall_s"], r.meta["output_tokens"]))
    finally:
        for eng in engines.values():
            eng.close()
    rows = []
    for arm, runs in res.items():
        tps = [tok / w for w, tok in runs if w > 0]
        rows.append(
            {
                "arm": arm,
                "runs": len(tps),
                "wall_s": statistics.median([w for w, _ in runs]),
                "output_tokens": runs[0][1],
                "tok_per_s": statistics.median(tps),
                "tok_per_s_min": min(tps),
                "tok_per_s_max": max(tps),
            }
        )
    base = next(r["tok_per_s"] for r in rows if r["arm"] == "vllm:fcfs")
    for r in rows:
        r["ratio_vs_vllm_fcfs"] = r["tok_per_s"] / base
        # per-round ratio (same round, adjacent in time): steadier than the ratio of medians
        if r["arm"] in res and "vllm:fcfs" in res and len(res[r["arm"]]) == len(res["vllm:fcfs"]):
            rr = [
                (tok / w) / (tok0 / w0)
                for (w, tok), (w0, tok0) in zip(res[r["arm"]], res["vllm:fcfs"])
            ]
            r["ratio_per_round_median"] = statistics.median(rr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiting", type=int, default=256)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--policies", default="fifo,oracle,weighted_fair,drift")
    ap.add_argument("--throughput-requests", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list: share,throughput")
    ap.add_argument("--json", action="store_true", help="one BENCH_JSON line (for benchmarks.run)")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    out: dict = {"waiting": args.waiting, "max_num_seqs": args.max_num_seqs}
    if "share" not in skip:
        out["share"] = policy_share(
            args.waiting, args.max_num_seqs, [p for p in args.policies.split(",") if p]
        )
    if "throughput" not in skip:
        out["throughput"] = throughput(args.throughput_requests, args.repeats)
    if args.json:
        emit(out)
        return
    if "share" in out:
        print(record_table([{"policy": k, **v} for k, v in out["share"].items()]))
    if "throughput" in out:
        print(record_table(out["throughput"]))


if __name__ == "__main__":
    main()
