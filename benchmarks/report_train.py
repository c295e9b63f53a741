"""Section 5 of docs/BENCHMARKS.md: training cost (wall, CPU, peak memory) per training size."""

from __future__ import annotations

from itertools import pairwise

from benchmarks.report_format import NA, section_error
from report.tables import record_table


def train_section(sec: dict | None, targets: list) -> list[str]:
    out = ["## 5. Training", ""]
    err = section_error(sec, "train")
    if err:
        return [*out, err, ""]
    rows = sec["rows"]
    if sec.get("partial"):
        out += ["_Partial: the run was cut short; only the sizes below finished._", ""]
    out += [
        "`python train.py logger=none out_dir=<tmp> train.max_train_rows=N` (LightGBM length +",
        "drift models, every baseline scored), one whole process per size under",
        "`/usr/bin/time -v`, `threads=2` (the config default: LightGBM uses both cores). One run",
        "per size (expensive). The largest N is the default config (`max_train_rows: 200000`).",
        "",
        record_table(
            [
                {
                    "train rows": r["rows"],
                    "wall s": r.get("wall_s", NA),
                    "CPU s": r.get("cpu_s", NA),
                    "peak RSS MiB": r.get("peak_rss_mb", NA),
                    "note": r.get("error", "")[:120],
                }
                for r in rows
            ]
        ),
        "",
    ]
    good = [r for r in rows if "wall_s" in r]
    for a, b in pairwise(good):
        out.append(
            f"- {a['rows']:,} -> {b['rows']:,} rows ({b['rows'] / a['rows']:.0f}x): wall "
            f"{b['wall_s'] / a['wall_s']:.2f}x, CPU {b['cpu_s'] / a['cpu_s']:.2f}x, peak memory "
            f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x"
        )
    if len(good) > 1:
        out += [
            "",
            "Cost grows well below linearly in the training rows: data loading and splitting,",
            "the drift model's trace cap (`max_drift_traces`, independent of N) and the",
            "baselines are fixed costs. Caveat: with `threads=2` LightGBM's OpenMP threads",
            "spin-wait whenever a neighbour takes one of the two cores, which inflates wall *and*",
            "CPU time; a run that overlaps heavy background load (as the smallest size did here,",
            "slower than the 5x larger one) is not comparable. Rerun on a quiet machine, or with",
            "`python -m benchmarks.bench_train --threads 1`, for a clean curve.",
        ]
    return [*out, ""]
