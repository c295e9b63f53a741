"""Run sched-sim (PyPI ``sched-sim``) on a CSV trace; print ``BENCH_JSON {...}``.

    .venv-peers/bin/python benchmarks/peers/schedsim_worker.py TRACE.csv KV_BLOCKS

Configuration chosen to match DriftSched's default engine as closely as sched-sim allows: one
L4-class GPU (24 GB, 300 GB/s, 121 TFLOPS FP16) serving Llama-3-8B (32 layers, GQA 8 KV heads),
chunked prefill with a 2,048-token budget, 256 sequences, recompute preemption, ``KV_BLOCKS``
blocks of 16 tokens (set after construction: sched-sim derives it from VRAM). sched-sim's own
roofline latency model gives the step times (not DriftSched's), so the number of simulated
steps differs; the report shows steps and time per step next to requests per second.
"""

from __future__ import annotations

import csv
import json
import sys
import time


def main(path: str, blocks: int) -> None:
    from sched_sim.core.event_engine import Simulator
    from sched_sim.core.request import Request
    from sched_sim.hardware.profile import HardwareProfile
    from sched_sim.memory.preemption import PreemptionMode
    from sched_sim.schedulers.factory import create_scheduler

    hw = HardwareProfile(
        name="L4 24GB (DriftSched default engine)",
        vram_gb=24.0,
        memory_bandwidth_gb_s=300.0,
        fp16_tflops=121.0,
        tensor_core_efficiency=0.5,
        model_name="meta-llama/Meta-Llama-3-8B",
        parameter_count_billions=8.03,
        num_layers=32,
        hidden_size=4096,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        dtype_bytes=2,
    )
    t0 = time.perf_counter()
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    reqs = [
        Request(
            request_id=f"r{i}",
            arrived_at=float(r["arrival_s"]),
            prompt_tokens=int(r["prompt_tokens"]),
            output_tokens=max(1, int(r["output_tokens"])),
        )
        for i, r in enumerate(rows)
    ]
    setup = time.perf_counter() - t0
    sched = create_scheduler(
        "chunked", hw, PreemptionMode.RECOMPUTE, token_budget=2048, max_batch_size=256
    )
    bm = sched.block_manager
    bm.total_gpu_blocks = blocks
    bm.free_gpu_blocks = list(range(blocks))
    sim = Simulator(hw, sched, preemption_mode=PreemptionMode.RECOMPUTE)
    sim.submit_workload(reqs)
    t0, cpu0 = time.perf_counter(), time.process_time()
    metrics = sim.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = sum(1 for r in reqs if r.completed_at is not None)
    out = {
        "sim_s": wall,
        "sim_cpu_s": cpu,
        "setup_s": setup,
        "requests": len(reqs),
        "completed": done,
        "steps": len(sim.iteration_records),
        "makespan_s": float(sim.current_time),
        "throughput_rps": float(getattr(metrics, "throughput_rps", float("nan")) or 0.0),
    }
    print("BENCH_JSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
