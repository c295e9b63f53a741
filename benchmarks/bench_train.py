"""Training cost: wall time and peak memory of ``python train.py`` vs training rows (section 5).

    python -m benchmarks.bench_train [--rows 10000,50000,200000]

Each size is one whole ``python train.py logger=none out_dir=<tmp> train.max_train_rows=N``
process under ``/usr/bin/time -v`` (wall clock, peak RSS, CPU seconds), ``threads=2`` as in the
default config (``threads`` in conf/train.yaml; LightGBM uses both cores). The largest size is
the default (``train.max_train_rows: 200000``). Every size also fits the drift model (its own
``max_drift_traces`` cap, unchanged) and scores every baseline, as the default run does; the
per-phase timings come from ``train.py``'s own ``timings`` (printed in its log).
Expensive: one run per size (the report says so).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable

from benchmarks.common import BenchError, one_thread_env, run_measured
from report.tables import record_table

DEFAULT_ROWS = (10_000, 50_000, 200_000)


def measure(
    rows: list[int],
    threads: int = 2,
    extra: list[str] | None = None,
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """One measured ``train.py`` process per size; ``on_row(rows so far)`` after each."""
    out = []
    for n in rows:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-c",
                # train.py prints its results; the wrapper adds the one BENCH_JSON line
                "import runpy, sys, json; sys.argv = ['train.py'] + sys.argv[1:]; "
                "runpy.run_path('train.py', run_name='__main__'); "
                "print('BENCH_JSON ' + json.dumps({'ok': True}))",
                "logger=none",
                f"out_dir={tmp}/artifacts",
                f"hydra.run.dir={tmp}/run",
                f"threads={threads}",
                f"train.max_train_rows={n}",
                *(extra or []),
            ]
            try:
                m = run_measured(cmd, env=one_thread_env(threads), timeout_s=3600)
            except BenchError as e:
                out.append({"rows": n, "error": str(e)[-800:]})
                if on_row is not None:
                    on_row(out)
                continue
        out.append(
            {
                "rows": n,
                "wall_s": m.wall_s,
                "cpu_s": m.cpu_s,
                "peak_rss_mb": m.peak_rss_mb,
                "threads": threads,
                "measure": m.source,
            }
        )
        print(f"  train rows={n}: {m.wall_s:.0f} s, {m.peak_rss_mb:.0f} MiB", flush=True)
        if on_row is not None:
            on_row(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=",".join(map(str, DEFAULT_ROWS)))
    ap.add_argument("--threads", type=int, default=2)
    args, extra = ap.parse_known_args()
    rows = [int(x) for x in re.split(r"[,\s]+", args.rows) if x]
    print(record_table(measure(rows, args.threads, extra)))


if __name__ == "__main__":
    main()
