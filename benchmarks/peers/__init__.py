"""Workers that run PEER simulators (Vidur, sched-sim) on a DriftSched trace.

They run inside the separate peers venv (``benchmarks/install_peers.sh``), import nothing from
DriftSched, read a CSV trace (``arrival_s, prompt_tokens, output_tokens``) and print one line
``BENCH_JSON {...}`` with the in-process simulation time, like ``benchmarks.bench_sim``'s worker.
"""
