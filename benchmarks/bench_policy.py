"""Policy overhead per engine step, every policy, 100 / 1,000 / 10,000 waiting (section 2).

    python -m benchmarks.bench_policy                          # every conf/policy/*.yaml
    python -m benchmarks.bench_policy --policies fifo,drift --waiting 1000

What one "step" costs the policy, exactly as ``SimEngine.run`` calls it: ``on_step`` (with the
waiting list the engine materialises for it), ``take_changed`` + re-keying of changed requests,
voluntary ``preempt``, and every 10 steps one completion (``on_finish``) that frees a slot, so
the admission order is asked for (``ranked`` for dynamic non-incremental policies, else the key
of the heap head), one admission (``on_admit``) and one arrival (``on_arrival``). With every
slot taken the engine asks for no admission order, as ``SimEngine.run`` does. The queue holds ``waiting`` requests
and 256 running ones that each generate one token per step. Requests come from the benchmark
trace (default workload), so learned policies featurise real prompts (``prepare``, not timed).
Per policy and queue size: 320 steps in a fresh process per policy; the figure is the median of
the means of 5 blocks of 64 steps (each block holds two of ``drift``'s re-prediction rounds), with
the p99 of single steps. Times are CPU time of the (single-threaded) process
(``time.process_time``), with the wall-clock figure beside it: the machine is shared, and CPU
time is what the policy costs the engine. Targets: <= 100 us per step at 1,000 waiting, <= 1 ms at 10,000.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from benchmarks.common import BenchError, emit, python_cmd, run_measured
from report.tables import record_table

WAITING = (100, 1_000, 10_000)
RUNNING = 256
STEPS = 320
BLOCKS = 5


def all_policies() -> list[str]:
    """Every policy preset (``report.jobs.known_policies``)."""
    from report.jobs import known_policies

    return known_policies()


def step_times(
    policy, frame, n_wait: int, n_run: int = RUNNING, steps: int = STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """(wall, CPU) seconds of policy work for each of ``steps`` engine steps (module doc)."""
    from scheduler.engine import requests_from_frame
    from scheduler.policies.base import Policy
    from scheduler.request import Status

    pol = policy
    need = n_wait + n_run + steps
    if len(frame) < need:
        raise ValueError(f"trace has {len(frame)} rows; the overhead benchmark needs {need}")
    reqs = requests_from_frame(frame.iloc[:need].reset_index(drop=True))
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
    wall = np.empty(steps)
    cpu = np.empty(steps)
    clock, cpu_clock = time.perf_counter, time.process_time
    for step in range(steps):
        now += 0.05
        for r in running:  # the engine's progress for this step (not timed)
            r.num_output_tokens += 1
            r.num_computed_tokens += 1
        t0, c0 = clock(), cpu_clock()
        if pol.uses_step_hook:
            pol.on_step(running, list(waiting.values()), now)
            for r in pol.take_changed():
                pol.key(r, now)
        if uses_preempt:
            for v in pol.preempt(running, list(waiting.values()), now):
                running.remove(v)  # back to the queue, as the engine does
                v.status = Status.WAITING
                v.num_computed_tokens = 0
                v.num_preemptions += 1
                waiting[v.index] = v
        if step % 10 == 0 and spare:
            # one completion frees a slot, so the engine asks for the admission order (with
            # every slot taken it does not: SimEngine admits only while len(running) <
            # max_num_seqs), admits the head, and one request arrives
            done = running.pop(0)
            done.status = Status.FINISHED
            pol.on_finish([done], now)
            if dynamic:
                nxt = next(iter(pol.ranked(list(waiting.values()), now)), None)
            else:
                nxt = next(iter(waiting.values()), None)  # the engine's heap head
            if nxt is not None:
                pol.key(nxt, now)
                new = waiting.pop(nxt.index)
                new.status = Status.RUNNING
                running.append(new)
                pol.on_admit([new], now)
            arr = spare.pop()
            pol.on_arrival([arr], now)
            waiting[arr.index] = arr
        wall[step], cpu[step] = clock() - t0, cpu_clock() - c0
    return wall, cpu


def worker(name: str, trace: str, waiting: list[int], predictor_dir: str) -> dict:
    import pandas as pd

    from benchmarks.bench_sim import make_policy

    frame = pd.read_parquet(trace)
    rows = []
    for n in waiting:
        wall, cpu = step_times(make_policy(name, predictor_dir), frame, n)
        k = (len(wall) // BLOCKS) * BLOCKS
        blocks = cpu[:k].reshape(BLOCKS, -1).mean(axis=1)
        wblocks = wall[:k].reshape(BLOCKS, -1).mean(axis=1)
        rows.append(
            {
                "waiting": n,
                "us_per_step": float(np.median(blocks) * 1e6),  # CPU time (see README)
                "us_block_min": float(blocks.min() * 1e6),
                "us_block_max": float(blocks.max() * 1e6),
                "wall_us_per_step": float(np.median(wblocks) * 1e6),
                "us_p99_step": float(np.percentile(cpu, 99) * 1e6),
            }
        )
    return {"policy": name, "rows": rows}


def measure(policies: list[str], waiting: list[int], predictor_dir: str) -> list[dict]:
    from benchmarks.traces import sim_trace

    trace = sim_trace(max(12_000, max(waiting) + RUNNING + STEPS + 1))
    out = []
    for name in policies:
        args = ["worker", name, str(trace), "--predictor-dir", predictor_dir]
        args += ["--waiting", ",".join(map(str, waiting))]
        try:
            m = run_measured(python_cmd("benchmarks.bench_policy", *args), timeout_s=1800)
        except BenchError as e:
            out.append({"policy": name, "error": str(e)[-600:]})
            continue
        for r in m.result["rows"]:
            target = 100.0 if r["waiting"] <= 1_000 else 1_000.0
            out.append(
                {
                    "policy": name,
                    **r,
                    "target_us": target,
                    "ok": r["us_per_step"] <= target,
                    "peak_rss_mb": m.peak_rss_mb,
                }
            )
        print(f"  policy {name}: done", flush=True)
    return out


def main() -> None:
    from benchmarks.bench_sim import default_predictor_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("policy")
    w.add_argument("trace")
    w.add_argument("--predictor-dir", default=default_predictor_dir())
    w.add_argument("--waiting", default=",".join(map(str, WAITING)))
    ap.add_argument("--policies", default=",".join(all_policies()))
    ap.add_argument("--waiting", default=",".join(map(str, WAITING)))
    ap.add_argument("--predictor-dir", default=default_predictor_dir())
    args = ap.parse_args()
    waiting = [int(x) for x in args.waiting.split(",") if x]
    if args.cmd == "worker":
        emit(worker(args.policy, args.trace, waiting, args.predictor_dir))
        return
    rows = measure([p for p in args.policies.split(",") if p], waiting, args.predictor_dir)
    cols = ["policy", "waiting", "us_per_step", "wall_us_per_step", "us_p99_step", "target_us"]
    print(record_table(rows, [*cols, "ok"]))


if __name__ == "__main__":
    main()
