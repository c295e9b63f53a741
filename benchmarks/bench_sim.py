"""Simulator speed and policy overhead, printed as tables.

    python -m benchmarks.bench_sim                       # default workload, 10,000 requests
    python -m benchmarks.bench_sim --n 2000 --policies fifo,sjf

1. *Simulation speed*: every policy serves ``--n`` requests of the default workload at
   ``--utilisation`` (0.95) of the default engine's capacity, on one core; wall time, engine
   steps and microseconds per step. Target: 10,000 requests in <= 10 s. ``prepare_s`` is the
   learned policies' one-off featurisation of the trace (``Policy.prepare``), shown apart.
2. *Policy overhead per engine step with 1,000 waiting requests*: the policy hooks an engine
   calls every step (``on_step``, ``preempt``, ``take_changed`` + re-keying, ``ranked`` for
   dynamic policies, the key of the next candidate), timed on a queue of 1,000 waiting and 50
   running requests that advance one token per step, with an admission and a completion every
   10 steps. Target: <= 100 us.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd

from scheduler.engine import requests_from_frame
from scheduler.policies.base import Policy
from scheduler.request import Status
from scheduler.sim.engine import SimEngine

ROOT = Path(__file__).resolve().parents[1]
ALL = [
    "fifo",
    "priority",
    "weighted",
    "weighted_fair",
    "aging",
    "sjf",
    "driftsched",
    "drift",
    "oracle",
]


def make_policy(name: str, predictor_dir: str) -> Policy:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate", overrides=[f"+policy={name}", f"predictor_dir={predictor_dir}"]
        )
    return instantiate(cfg.policy)


def policy_overhead(
    name: str,
    predictor_dir: str,
    frame: pd.DataFrame,
    n_wait: int = 1000,
    n_run: int = 50,
    steps: int = 300,
) -> float:
    """Mean seconds of policy work per engine step (see the module docstring)."""
    pol = make_policy(name, predictor_dir)
    reqs = requests_from_frame(frame.iloc[: n_wait + n_run + steps].reset_index(drop=True))
    for r in reqs:
        r.arrival_s = 0.0
    now = 1.0
    pol.prepare(reqs)
    pol.on_arrival(reqs[: n_wait + n_run], now)
    running = reqs[:n_run]
    for r in running:
        r.status = Status.RUNNING
        r.admitted_s = now
        r.num_computed_tokens = r.prompt_tokens
    pol.on_admit(running, now)
    waiting = {r.index: r for r in reqs[n_run : n_wait + n_run]}
    spare = list(reqs[n_wait + n_run :])
    uses_preempt = type(pol).preempt is not Policy.preempt
    dynamic = pol.dynamic_keys and not pol.incremental_keys
    total = 0.0
    for step in range(steps):
        now += 0.05
        for r in running:  # the engine's progress for this step
            r.num_output_tokens += 1
            r.num_computed_tokens += 1
        t0 = time.perf_counter()
        if pol.uses_step_hook:
            pol.on_step(running, list(waiting.values()), now)
            for r in pol.take_changed():
                pol.key(r, now)
        if uses_preempt:
            pol.preempt(running, list(waiting.values()), now)
        if dynamic:
            nxt = next(iter(pol.ranked(list(waiting.values()), now)), None)
        else:
            nxt = next(iter(waiting.values()))
        if nxt is not None:
            pol.key(nxt, now)
        if step % 10 == 0 and spare:  # one completion, one admission, one arrival
            done = running.pop(0)
            done.status = Status.FINISHED
            pol.on_finish([done], now)
            new = waiting.pop(nxt.index) if nxt is not None else None
            if new is not None:
                new.status = Status.RUNNING
                running.append(new)
                pol.on_admit([new], now)
            arr = spare.pop()
            pol.on_arrival([arr], now)
            waiting[arr.index] = arr
        total += time.perf_counter() - t0
    return total / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="requests in the workload")
    ap.add_argument("--utilisation", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default=",".join(ALL))
    ap.add_argument("--predictor-dir", default=str(ROOT / "artifacts"))
    args = ap.parse_args()
    from data.presets import load_workload

    names = [p for p in args.policies.split(",") if p]
    t0 = time.perf_counter()
    wl = load_workload("default", seed=args.seed, overrides=[f"n_requests={args.n}"])
    print(f"workload: {len(wl)} requests built in {time.perf_counter() - t0:.1f} s")
    eng = SimEngine()
    t0 = time.perf_counter()
    cap = eng.capacity_rps(wl)
    print(
        f"capacity {cap:.3f} req/s measured in {time.perf_counter() - t0:.2f} s "
        f"(profile {eng.profile.name}, {eng.num_gpu_blocks * eng.block_size} KV tokens)"
    )
    wl = wl.at_rate(args.utilisation * cap)
    rows = []
    for name in names:
        pol = make_policy(name, args.predictor_dir)
        # admission-time predictor work over the whole trace (featurising prompts), timed apart
        # from the simulation; the engine's own prepare() call then finds everything cached
        t0 = time.perf_counter()
        pol.prepare(requests_from_frame(wl.requests))
        prepare = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = eng.run(wl, pol)
        wall = time.perf_counter() - t0
        n_steps = len(res.steps)
        e2e = (res.records["finish_s"] - res.records["arrival_s"]).mean()
        over = policy_overhead(name, args.predictor_dir, wl.requests)
        rows.append(
            {
                "policy": name,
                "requests": len(wl),
                "prepare_s": prepare,
                "sim_s": wall,
                "steps": n_steps,
                "us_per_step": 1e6 * wall / max(n_steps, 1),
                "max_waiting": int(res.steps.filter(like="waiting_").sum(axis=1).max()),
                "e2e_mean_s": e2e,
                "overhead_us_1000_waiting": 1e6 * over,
                "speed_ok": wall <= 10.0,
                "overhead_ok": over <= 100e-6,
            }
        )
    table = pd.DataFrame(rows).set_index("policy")
    print()
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    print(
        f"\ntargets: {args.n} requests at utilisation {args.utilisation} in <= 10 s on one "
        "core; policy overhead <= 100 us per step with 1,000 waiting"
    )
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
