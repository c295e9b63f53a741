"""Simulator throughput, scaling with work, and side-by-side peers (BENCHMARKS.md section 1).

    python -m benchmarks.bench_sim                        # table: every policy, 10,000 requests
    python -m benchmarks.bench_sim --n 2000 --policies fifo,sjf
    python -m benchmarks.bench_sim worker TRACE.parquet --policy fifo   # one measured run

Every run is its own process under ``/usr/bin/time -v`` (whole-process wall clock and peak
RSS); inside it, ``sim_s`` is ``SimEngine.run`` alone and ``prepare_s`` the learned policies'
one-off featurisation of the trace (``Policy.prepare``), timed apart. Simulated requests per
second = requests / ``sim_s``. Traces: ``benchmarks.traces`` (default workload at 95% of the
default engine's capacity). Target: 10,000 requests in <= 10 s on one core.

Peers (``benchmarks/install_peers.sh``): Vidur and sched-sim run the identical trace (arrival,
prompt and output tokens) in their own venv; ours runs it with the same KV capacity. Both peers
break down once KV preemption happens (see the workers' docstrings and BENCHMARKS.md), so the
side-by-side runs use ``PEER_KV_BLOCKS`` blocks, enough that no simulator preempts.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.common import (
    ROOT,
    BenchError,
    emit,
    median,
    peers_python,
    python_cmd,
    run_measured,
)
from benchmarks.traces import peer_csv, sim_trace, trace_meta
from report.tables import record_table

PEER_KV_BLOCKS = 33_000  # 528k KV tokens of 16: no preemption on the benchmark traces
PEERS = ("vidur", "sched-sim")


def compare_policies() -> list[str]:
    """The policies the bare ``python evaluate.py`` compares (``conf/evaluate.yaml``'s
    ``compare``): the benchmark's default set."""
    from report.jobs import compose

    return [str(p) for p in compose().compare]


def make_policy(name: str, predictor_dir: str) -> Any:
    """The policy of ``conf/policy/<name>.yaml``, composed like ``evaluate.py +policy=name``."""
    from report.jobs import build_policy, compose

    cfg = compose([f"+policy={name}", f"predictor_dir={predictor_dir}"])
    return build_policy(cfg.policy)


def default_predictor_dir() -> str:
    return os.environ.get("DRIFTSCHED_BENCH_ARTIFACTS", str(ROOT / "artifacts"))


# ---------------------------------------------------------------------------------- worker
def worker(
    trace: str, policy: str, predictor_dir: str, kv_blocks: int | None, fast_forward: bool = True
) -> dict:
    """One simulation in this process (run under GNU time by the parent)."""
    import pandas as pd

    from scheduler.engine import requests_from_frame
    from scheduler.policies.base import Policy
    from scheduler.sim.engine import SimEngine

    t0 = time.perf_counter()
    df = pd.read_parquet(trace)
    load_s = time.perf_counter() - t0
    eng = SimEngine(num_gpu_blocks=kv_blocks, fast_forward=fast_forward)
    pol = make_policy(policy, predictor_dir)
    # admission-time predictor work over the whole trace, timed apart from the simulation; the
    # engine's own prepare() call then finds every request featurised (cached by index). A
    # policy without prepare() gets none (a second copy of every request: ~1.5 GB at 1M).
    t0 = time.perf_counter()
    if type(pol).prepare is not Policy.prepare:
        pol.prepare(requests_from_frame(df))
    else:
        requests_from_frame(df.iloc[:1])  # the one-off pyarrow/pandas warm-up, untimed
    prepare_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    res = eng.run(df, pol)
    sim_s, sim_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    steps = int(res.meta["steps"])
    return {
        "fast_forward": fast_forward,
        "fast_forward_steps": int(res.meta.get("fast_forward_steps", 0)),
        "aggregate_steps": int(res.meta.get("aggregate_steps", 0)),
        "policy": policy,
        "requests": len(df),
        "load_s": load_s,
        "prepare_s": prepare_s,
        "sim_s": sim_s,
        "sim_cpu_s": sim_cpu_s,
        "steps": steps,
        "preemptions": int(res.meta["preemptions"]),
        "kv_blocks": eng.num_gpu_blocks,
        "makespan_s": float(res.meta["makespan_s"]),
    }


# ---------------------------------------------------------------------------------- drivers
def run_ours(
    trace: Path,
    policy: str,
    repeats: int,
    kv_blocks: int | None = None,
    timeout_s: float = 3600,
    fast_forward: bool = True,
) -> dict:
    """Median of ``repeats`` worker processes; every run's figures are kept too."""
    args = ["worker", str(trace), "--policy", policy, "--predictor-dir", default_predictor_dir()]
    if kv_blocks is not None:
        args += ["--kv-blocks", str(kv_blocks)]
    if not fast_forward:
        args += ["--no-fast-forward"]
    runs = [
        run_measured(python_cmd("benchmarks.bench_sim", *args), timeout_s=timeout_s)
        for _ in range(repeats)
    ]
    return summarize_runs(runs)


def summarize_runs(runs: list) -> dict:
    r0 = runs[0].result
    sim = [m.result["sim_s"] for m in runs]
    out = {
        "requests": r0["requests"],
        "runs": len(runs),
        "sim_s": median(sim),
        "sim_cpu_s": median([m.result["sim_cpu_s"] for m in runs]),
        "sim_s_min": min(sim),
        "sim_s_max": max(sim),
        "wall_s": median([m.wall_s for m in runs]),
        "cpu_s": median([m.cpu_s for m in runs]),
        "peak_rss_mb": max(m.peak_rss_mb for m in runs),
        "measure": runs[0].source,
    }
    for k in (
        "prepare_s",
        "steps",
        "preemptions",
        "setup_s",
        "completed",
        "makespan_s",
        "fast_forward_steps",
        "aggregate_steps",
    ):
        if k in r0:
            out[k] = median([m.result[k] for m in runs]) if k.endswith("_s") else r0[k]
    out["req_per_s"] = out["requests"] / out["sim_s"]
    out["req_per_cpu_s"] = out["requests"] / out["sim_cpu_s"]
    if "steps" in out:
        out["us_per_step"] = 1e6 * out["sim_s"] / max(1, out["steps"])
    return out


def run_peer(peer: str, trace: Path, repeats: int, timeout_s: float = 1800) -> dict:
    """A peer on the same trace; ``{"error": why}`` when it cannot run."""
    py = peers_python()
    if py is None:
        return {"error": "peers venv missing: run `bash benchmarks/install_peers.sh`"}
    from scheduler.sim.engine import SimEngine

    csv = peer_csv(trace)
    if peer == "vidur":
        c = SimEngine().cost
        cmd = [
            str(py),
            str(ROOT / "benchmarks/peers/vidur_worker.py"),
            str(csv),
            *(repr(float(v)) for v in (c.c0, c.c_token, c.c_kv, c.c_pair)),
            str(PEER_KV_BLOCKS),
        ]
    elif peer == "sched-sim":
        cmd = [
            str(py),
            str(ROOT / "benchmarks/peers/schedsim_worker.py"),
            str(csv),
            str(PEER_KV_BLOCKS),
        ]
    else:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")
    try:
        runs = [run_measured(cmd, timeout_s=timeout_s) for _ in range(repeats)]
    except BenchError as e:
        return {"error": str(e)[-800:]}
    return summarize_runs(runs)


def scaling(sizes: list[int], repeats: dict[int, int], policies: list[str]) -> list[dict]:
    rows = []
    for n in sizes:
        trace = sim_trace(n)
        meta = trace_meta(trace)
        for pol in policies:
            r = run_ours(trace, pol, repeats.get(n, 1))
            rows.append({"policy": pol, "n": n, "tiled": bool(meta.get("tiled_from")), **r})
            print(f"  sim {pol} n={n}: {r['sim_s']:.2f} s ({r['req_per_s']:.0f} req/s)", flush=True)
    return rows


def peers(n: int, repeats: int, which: tuple[str, ...] = PEERS) -> dict:
    """Ours (fifo) and each peer on the same ``n``-request trace and KV capacity."""
    trace = sim_trace(n)
    ours = run_ours(trace, "fifo", repeats, kv_blocks=PEER_KV_BLOCKS)
    # the same engine stepping one step at a time (identical records): what fast-forward buys
    step = run_ours(trace, "fifo", repeats, kv_blocks=PEER_KV_BLOCKS, fast_forward=False)
    step["cpu_slowdown_vs_ours"] = step["sim_cpu_s"] / ours["sim_cpu_s"]
    step["slowdown_vs_ours"] = step["sim_s"] / ours["sim_s"]
    out = {"n": n, "kv_blocks": PEER_KV_BLOCKS, "ours": ours, "ours_no_ff": step, "peers": {}}
    for p in which:
        r = run_peer(p, trace, repeats)
        if "error" not in r:
            # ratios of the simulation loop alone (wall and CPU) and of the whole process
            r["slowdown_vs_ours"] = r["sim_s"] / ours["sim_s"]
            r["cpu_slowdown_vs_ours"] = r["sim_cpu_s"] / ours["sim_cpu_s"]
            r["wall_ratio_vs_ours"] = r["wall_s"] / ours["wall_s"]
        out["peers"][p] = r
        print(f"  peer {p} n={n}: {r.get('sim_s', r.get('error'))}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="one measured simulation (internal)")
    w.add_argument("trace")
    w.add_argument("--policy", default="fifo")
    w.add_argument("--predictor-dir", default=default_predictor_dir())
    w.add_argument("--kv-blocks", type=int, default=None)
    w.add_argument("--no-fast-forward", action="store_true", help="step one step at a time")
    ap.add_argument("--n", type=int, default=10_000, help="requests in the workload")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--policies", default=None, help="comma-separated (default: compare)")
    args = ap.parse_args()
    if args.cmd == "worker":
        emit(
            worker(
                args.trace,
                args.policy,
                args.predictor_dir,
                args.kv_blocks,
                fast_forward=not args.no_fast_forward,
            )
        )
        return
    names = [p for p in (args.policies or ",".join(compare_policies())).split(",") if p]
    rows = scaling([args.n], {args.n: args.repeats}, names)
    cols = [
        "policy",
        "n",
        "sim_s",
        "req_per_s",
        "us_per_step",
        "prepare_s",
        "wall_s",
        "peak_rss_mb",
    ]
    print(record_table(rows, cols))


if __name__ == "__main__":
    main()
