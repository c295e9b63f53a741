"""Per-step policy overhead inside the live engine with a long waiting queue.

    python -m report.overhead                    # drift, 256 waiting, 16 running
    python -m report.overhead --policy fifo --waiting 512

``n = waiting + 4 * max_num_seqs`` short requests (synthetic ids, prompt text from the shipped
AlpacaEval prompts so text-reading predictors do real work) all arrive at t=0; the engine's
scheduler measures, every step, the time spent in the policy driver (mirror sync, batched hooks,
predictor calls, keys, re-heapify: ``policy_us``, see ``scheduler.live.adapter``). Reported:
percentiles of ``policy_us`` over the steps that started with at least ``waiting`` requests
waiting (the issue's target: p50 <= 100 us with 256 waiting). Steps in which requests finish also pay
the policy's ``on_finish`` (``--output-tokens`` sets how often that happens).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.schema import TIERS

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = REPO_ROOT / "data" / "raw" / "alpaca_eval" / "alpaca_eval_prompts.jsonl"


def queue_frame(n: int, seed: int = 0, output_tokens: int = 96) -> pd.DataFrame:
    """``n`` requests at t=0 with real prompt text and outputs of ``output_tokens / 2`` to
    ``2 * output_tokens`` tokens (short outputs make most steps finish a request, which
    measures ``on_finish`` rather than a typical step)."""
    rng = np.random.default_rng(seed)
    texts = []
    with PROMPTS.open(encoding="utf-8") as f:
        for line in f:
            texts.append(str(json.loads(line)["instruction"]))
            if len(texts) >= n:
                break
    if len(texts) < n:
        raise ValueError(f"{PROMPTS}: {len(texts)} prompts; need {n}")
    return pd.DataFrame(
        {
            "request_id": [f"q{i}" for i in range(n)],
            "tenant": [f"t{k}" for k in rng.integers(0, 3, n)],
            "tier": [TIERS[k] for k in rng.integers(0, len(TIERS), n)],
            "category": "unknown",
            "source": "alpaca_eval",
            "model": "unknown",
            "arrival_s": np.zeros(n),
            "prompt": texts,
            "prompt_tokens": [max(1, len(t.split())) for t in texts],
            "output_tokens": rng.integers(output_tokens // 2, output_tokens * 2, n),
        }
    )


def measure(
    policy: str = "drift",
    waiting: int = 256,
    max_num_seqs: int = 16,
    output_tokens: int = 96,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the queue through the live engine; percentiles of ``policy_us`` (module docstring)."""
    from hydra.utils import instantiate

    from report.fidelity import compose_config
    from report.jobs import build_policy

    cfg = compose_config(policy, [f"engine.max_num_seqs={max_num_seqs}", *overrides])
    engine = instantiate(cfg.engine)
    pol = build_policy(cfg.policy)
    # 4 batches more than the queue: ~4 x output_tokens steps start with >= `waiting` waiting
    frame = queue_frame(waiting + 4 * max_num_seqs, output_tokens=output_tokens)
    res = engine.run(frame, pol, policy_name=policy)
    st = res.steps
    w = st[[f"waiting_{t}" for t in TIERS]].sum(axis=1)
    deep = st.loc[w >= waiting, "policy_us"].to_numpy(float)
    allp = st["policy_us"].to_numpy(float)

    def pct(x: np.ndarray) -> dict[str, float]:
        if x.size == 0:
            return {"n": 0}
        return {
            "n": int(x.size),
            "p50": float(np.percentile(x, 50)),
            "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)),
            "mean": float(x.mean()),
        }

    return {
        "policy": policy,
        "waiting": waiting,
        "max_num_seqs": max_num_seqs,
        "output_tokens": output_tokens,
        "policy_us_with_queue": pct(deep),
        "policy_us_all_steps": pct(allp),
        "mean_step_ms": float(st["duration_s"].mean() * 1e3),
        "policy_faults": res.meta["policy_faults"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m report.overhead", description=__doc__)
    ap.add_argument("--policy", default="drift")
    ap.add_argument("--waiting", type=int, default=256)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--output-tokens", type=int, default=96, help="typical output length")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = ap.parse_args(argv)
    out = measure(a.policy, a.waiting, a.max_num_seqs, a.output_tokens, a.overrides)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
