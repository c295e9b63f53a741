"""Run every benchmark and write docs/BENCHMARKS.md (+ figures under docs/figures/).

    python -m benchmarks.run            # full suite (~30-60 min on the 2-core dev box)
    python -m benchmarks.run --quick    # small sizes, few repeats (~10 min): a sanity pass
    python -m benchmarks.run --only sim,policy --quick
    python -m benchmarks.run --report-only   # re-render the doc from the saved results

Sections: ``sim`` (simulator throughput, scaling, peers), ``policy`` (overhead per step),
``predictor`` (latency, memory), ``live`` (inside vLLM), ``train`` (wall time and memory vs rows).
Raw results go to ``outputs/benchmarks/results.json`` (merged with earlier sections when
``--only`` is used) and every section that fails is reported in the doc with its error, not
silently dropped. The peers need their one-time venv: ``bash benchmarks/install_peers.sh``.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

from benchmarks.common import ROOT, machine_info

RESULTS = ROOT / "outputs" / "benchmarks" / "results.json"
DOC = ROOT / "docs" / "BENCHMARKS.md"
FIGURES = ROOT / "docs" / "figures"
SECTIONS = ("sim", "policy", "predictor", "live", "train")


def plan(quick: bool, million: bool) -> dict:
    """Sizes and repeats (quick: a sanity pass; full: the figures the doc reports)."""
    if quick:
        return {
            "sim_sizes": [1_000, 10_000],
            "sim_repeats": {1_000: 3, 10_000: 1},
            "sim_scaling_policies": {"fifo": None, "drift": None},
            "sim_policies_10k": [],
            "sim_policies_10k_repeats": 1,
            "peer_n": 1_000,
            "peer_repeats": 1,
            "waiting": [100, 1_000, 10_000],
            "batches": [1, 64, 1024],
            "live_waiting": 256,
            "live_requests": 48,
            "live_repeats": 1,
            "train_rows": [10_000],
        }
    return {
        "sim_sizes": [1_000, 10_000, 100_000] + ([1_000_000] if million else []),
        # 100k and 1M: one run (minutes each); drift (learned predictor + featurising 100k
        # prompts) is scaled to 10k only
        "sim_repeats": {1_000: 5, 10_000: 5, 100_000: 1, 1_000_000: 1},
        "sim_scaling_policies": {"fifo": None, "drift": 10_000},
        "sim_policies_10k": [
            "priority",
            "weighted",
            "weighted_fair",
            "aging",
            "sjf",
            "driftsched",
            "uniboost",
            "tie",
            "trail",
            "srpt_oracle",
            "oracle",
        ],
        "sim_policies_10k_repeats": 1,
        "peer_n": 10_000,
        "peer_repeats": 3,
        "waiting": [100, 1_000, 10_000],
        "batches": [1, 64, 1024],
        "live_waiting": 256,
        "live_requests": 192,
        "live_repeats": 5,
        "train_rows": [10_000, 50_000, 200_000],
    }


def run_sim(p: dict) -> dict:
    from benchmarks import bench_sim

    rows = []
    for pol, cap in p["sim_scaling_policies"].items():
        sizes = [n for n in p["sim_sizes"] if cap is None or n <= cap]
        rows += bench_sim.scaling(sizes, p["sim_repeats"], [pol])
    out = {"scaling": rows}
    out["policies_10k"] = bench_sim.scaling(
        [10_000], {10_000: p["sim_policies_10k_repeats"]}, p["sim_policies_10k"]
    )
    out["peers"] = bench_sim.peers(p["peer_n"], p["peer_repeats"])
    from benchmarks.traces import sim_trace, trace_meta

    out["traces"] = {n: trace_meta(sim_trace(n)) for n in p["sim_sizes"]}
    return out


def run_policy(p: dict) -> dict:
    from benchmarks import bench_policy
    from benchmarks.bench_sim import default_predictor_dir

    return {
        "rows": bench_policy.measure(
            bench_policy.all_policies(), p["waiting"], default_predictor_dir()
        ),
        "running": bench_policy.RUNNING,
    }


def run_predictor(p: dict) -> dict:
    from benchmarks import bench_predictor
    from benchmarks.bench_sim import default_predictor_dir

    return bench_predictor.measure(default_predictor_dir(), p["batches"])


def run_live(p: dict) -> dict:
    from benchmarks.common import python_cmd, run_measured

    m = run_measured(
        python_cmd(
            "benchmarks.bench_live",
            "--json",
            "--waiting",
            str(p["live_waiting"]),
            "--throughput-requests",
            str(p["live_requests"]),
            "--repeats",
            str(p["live_repeats"]),
        ),
        timeout_s=3000,
    )
    return {**m.result, "wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb}


def run_train(p: dict) -> dict:
    from benchmarks import bench_train

    def partial(rows: list[dict]) -> None:  # keep finished sizes if a later one is cut short
        _merge_save(
            RESULTS, {"sections": {"train": {"rows": list(rows), "partial": True}}}, "train"
        )

    return {"rows": bench_train.measure(p["train_rows"], on_row=partial)}


RUNNERS = {
    "sim": run_sim,
    "policy": run_policy,
    "predictor": run_predictor,
    "live": run_live,
    "train": run_train,
}


def ensure_artifacts() -> str | None:
    """The drift/sjf policies need trained predictors; train a small set if none exist.

    Returns a note for the report when it had to train (the user's ``artifacts/`` is never
    written: the small set goes to ``outputs/benchmarks/artifacts``)."""
    import os
    import subprocess
    import sys

    from benchmarks.bench_sim import default_predictor_dir

    if (Path(default_predictor_dir()) / "length" / "meta.json").is_file():
        return None
    small = ROOT / "outputs" / "benchmarks" / "artifacts"
    if not (small / "length" / "meta.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "train.py",
                "logger=none",
                f"out_dir={small}",
                f"hydra.run.dir={small}/run",
                "train.max_train_rows=20000",
                "train.max_drift_traces=5000",
            ],
            cwd=ROOT,
            check=True,
        )
    os.environ["DRIFTSCHED_BENCH_ARTIFACTS"] = str(small)
    return f"no artifacts/ found: trained a small predictor set (20k rows) into {small}"


def _merge_save(path: Path, saved: dict, section: str) -> dict:
    """Write ``section`` into the results file, keeping sections other runs wrote meanwhile
    (several ``--only`` runs may go in parallel); atomic rename."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.setdefault("sections", {})[section] = saved["sections"][section]
    for k in ("machine", "quick", "plan", "artifacts_note"):
        if k in saved:
            current[k] = saved[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{section}.tmp")
    tmp.write_text(json.dumps(current, indent=1, default=str))
    tmp.replace(path)
    return current


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--million", action="store_true", help="also simulate 1M requests (slow)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--doc", default=str(DOC))
    args = ap.parse_args(argv)
    results_path = Path(args.results)
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not args.report_only:
        only = [s for s in args.only.split(",") if s]
        bad = sorted(set(only) - set(SECTIONS))
        if bad:
            raise SystemExit(f"--only: unknown section(s) {bad}; expected some of {SECTIONS}")
        p = plan(args.quick, args.million)
        saved.setdefault("sections", {})
        saved["machine"] = machine_info()
        saved["quick"] = args.quick
        saved["plan"] = {k: v for k, v in p.items()}
        note = ensure_artifacts()
        if note:
            saved["artifacts_note"] = note
        for name in only:
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                res = RUNNERS[name](p)
            except Exception as e:  # reported in the doc, the other sections still run
                res = {"error": f"{e!r}\n{traceback.format_exc()[-2000:]}"}
                print(res["error"], flush=True)
            res["section_wall_s"] = time.perf_counter() - t0
            res["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            res["load_avg_after"] = machine_info()["load_avg"]
            saved["sections"][name] = res
            saved = _merge_save(results_path, saved, name)
    from benchmarks.report import write_report

    write_report(saved, Path(args.doc), FIGURES)
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
