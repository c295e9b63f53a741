"""Per-step policy overhead inside the live vLLM engine with a deep waiting queue.

    python benchmarks/bench_live.py [--waiting 256] [--policies fifo,weighted_fair,drift]

Serves ``waiting + max_num_seqs`` short requests (prompt 16, output 4 tokens) that all arrive at
t=0 on the tiny CPU model, so most steps see ~``waiting`` queued requests; reports the
driver's time per step (mirror sync, hooks, keys, re-heapify: ``policy_us``) over the steps
with at least ``waiting / 2`` requests waiting. ``drift`` needs ``artifacts/`` (python train.py).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

SPECS = {
    "fifo": {"_target_": "scheduler.policies.fifo.FIFOPolicy"},
    "oracle": {"_target_": "scheduler.policies.oracle.OraclePolicy"},
    "weighted_fair": {"_target_": "scheduler.policies.weighted_fair.WeightedFairPolicy"},
    "drift": {"_target_": "scheduler.policies.drift.DriftPolicy"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiting", type=int, default=256)
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--policies", default="fifo,oracle,weighted_fair,drift")
    args = ap.parse_args()
    from hydra.utils import instantiate

    from scheduler.live.engine import VllmEngine

    n = args.waiting + args.max_num_seqs
    tiers = np.array(["premium", "standard", "batch"])[np.arange(n) % 3]
    df = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": "t0",
            "tier": tiers,
            "category": "chat",
            "source": "bench",
            "model": "m",
            "arrival_s": 0.0,
            "prompt": ["Write a short poem about the sea."] * n,
            "prompt_tokens": 16,
            "output_tokens": 4,
        }
    )
    out = {}
    with VllmEngine(max_num_seqs=args.max_num_seqs, prompt_source="synthetic") as eng:
        for name in args.policies.split(","):
            try:
                policy = instantiate(SPECS[name])
            except Exception as e:
                out[name] = {"skipped": repr(e)[:200]}
                continue
            res = eng.run(df, policy)
            s = res.steps
            deep = s[
                (
                    s[["waiting_premium", "waiting_standard", "waiting_batch"]].sum(axis=1)
                    >= args.waiting // 2
                )
            ]
            us = deep["policy_us"].to_numpy()
            out[name] = {
                "steps": len(deep),
                "p50_us": float(np.percentile(us, 50)),
                "p99_us": float(np.percentile(us, 99)),
                "mean_exec_ms": float(deep["exec_s"].mean() * 1e3),
                "faults": res.meta["policy_faults"],
            }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
