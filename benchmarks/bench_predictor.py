"""Predictor cost: per-request latency by batch size, and memory of a loaded artifact (section 3).

    python -m benchmarks.bench_predictor [--artifacts artifacts] [--batches 1,64,1024]

LightGBM (``artifacts/``: ``python train.py``): per request, at batch 1, 64 and 1,024, the
admission-time featurisation (prompt text -> features, once per request at arrival), the
admission prediction (p50, p90) and the drift re-prediction (remaining tokens given progress),
each the median of ``REPEATS`` timed calls on distinct real prompts from the benchmark trace,
one thread. Target: admission + re-prediction <= 20 us per request at batch 64 (the per-step
work; featurisation runs once per request and is reported apart).

Transformer (``predictor/transformer.py``): if ``artifacts/transformer`` exists it is loaded,
else a small MiniLM length model is fitted on 600 trace rows in a temporary directory (latency
does not depend on how well it is trained: the encoder is the fixed all-MiniLM-L6-v2 and the
head is the configured MLP). Per request: encoding fresh prompts (never seen: the featuriser
caches embeddings) plus prediction, at batch 1, 64 and 1,024 (1,024: fewer repeats). Target:
<= 5 ms per request batched.

Memory: each artifact is loaded in a fresh process; the figure is the RSS growth from just before
to just after ``load_predictor`` (and the whole process's peak under GNU time).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from benchmarks.common import ROOT, BenchError, emit, md_table, python_cmd, run_measured

BATCHES = (1, 64, 1024)
REPEATS = 7


def _rss_mb() -> float:
    """Current resident set size (MiB) from /proc (Linux); peak RSS as a fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frame(n: int):
    import pandas as pd

    from benchmarks.traces import sim_trace

    df = pd.read_parquet(sim_trace(10_000))
    return df.iloc[:n].reset_index(drop=True)


def _time(fn, repeats: int) -> float:
    """Median CPU seconds of ``repeats`` calls (one thread: CPU time is the cost; the shared
    machine inflates wall time). Wall-clock medians are kept in ``WALL``."""
    ts, ws = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.process_time() - c0)
        ws.append(time.perf_counter() - t0)
    WALL.append(float(np.median(ws)))
    return float(np.median(ts))


WALL: list[float] = []


def lgbm_worker(artifacts: str, batches: list[int]) -> dict:
    from predictor.serving import frame_from_requests, load_predictor
    from scheduler.engine import requests_from_frame

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    pred = load_predictor(artifacts)
    load_s = time.perf_counter() - t0
    rss1 = _rss_mb()
    big = max(batches)
    df = _frame(big * (REPEATS + 1))
    rows = frame_from_requests(requests_from_frame(df))
    pred.featurize(rows.iloc[:64])  # warm-up (lazy imports, first-call allocations)
    out = []
    for b in batches:
        chunks = [rows.iloc[i * b : (i + 1) * b] for i in range(REPEATS)]
        it = iter(chunks)
        feat = _time(lambda it=it: pred.featurize(next(it)), REPEATS)  # distinct prompts each call
        X = pred.featurize(chunks[0])
        adm = _time(lambda X=X: pred.predict_admission(X), REPEATS)
        a = pred.predict_admission(X)
        gen = np.full(len(X), 64.0)
        rem = (
            _time(lambda X=X, a=a, gen=gen: pred.predict_remaining(X, a, gen), REPEATS)
            if pred.has_drift
            else float("nan")
        )
        out.append(
            {
                "model": "lightgbm",
                "batch": b,
                "featurize_us": 1e6 * feat / b,
                "admission_us": 1e6 * adm / b,
                "remaining_us": 1e6 * rem / b,
                "per_step_us": 1e6 * (adm + rem) / b,
                "per_step_wall_us": 1e6 * (WALL[-2] + WALL[-1]) / b if pred.has_drift else 0.0,
            }
        )
    return {"rows": out, "load_s": load_s, "load_rss_mb": rss1 - rss0}


def transformer_worker(artifacts: str | None, batches: list[int]) -> dict:
    import torch

    torch.set_num_threads(1)
    from predictor.transformer import TransformerLength

    df = _frame(600 + max(batches) * 3 + 64 * REPEATS)
    trained = None
    with tempfile.TemporaryDirectory() as tmp:
        if artifacts is None or not (Path(artifacts) / "meta.json").is_file():
            y = df["output_tokens"].to_numpy()[:600]
            m = TransformerLength(
                mode="frozen", epochs=2, min_count=1, num_threads=1, max_train_prompts=None
            ).fit(df.iloc[:600], y)
            artifacts = str(Path(tmp) / "length")
            m.save(artifacts)
            trained = "fitted on 600 trace rows (temporary)"
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        model = TransformerLength.load(artifacts)
        load_s = time.perf_counter() - t0
        rss1 = _rss_mb()
    fresh = df.iloc[600:].reset_index(drop=True)
    model.featurize(fresh.iloc[:2])  # warm-up
    pos = 2
    out = []
    for b in batches:
        reps = REPEATS if b <= 64 else 2
        ts, ws = [], []
        for _ in range(reps):
            chunk = fresh.iloc[pos : pos + b]
            pos += b
            t0, c0 = time.perf_counter(), time.process_time()
            model.predict_features(model.featurize(chunk))
            ts.append(time.process_time() - c0)
            ws.append(time.perf_counter() - t0)
        out.append(
            {
                "model": "transformer",
                "batch": b,
                "encode_predict_us": 1e6 * float(np.median(ts)) / b,
                "encode_predict_wall_us": 1e6 * float(np.median(ws)) / b,
                "repeats": reps,
            }
        )
    return {"rows": out, "load_s": load_s, "load_rss_mb": rss1 - rss0, "artifact": trained}


def measure(artifacts: str, batches: list[int]) -> dict:
    res: dict = {}
    m = run_measured(
        python_cmd(
            "benchmarks.bench_predictor",
            "worker",
            "lightgbm",
            artifacts,
            "--batches",
            ",".join(map(str, batches)),
        ),
        timeout_s=1800,
    )
    res["lightgbm"] = {**m.result, "peak_rss_mb": m.peak_rss_mb}
    tdir = Path(artifacts) / "transformer" / "length"
    if not (ROOT / "predictor" / "transformer.py").is_file():
        res["transformer"] = {"error": "predictor/transformer.py does not exist"}
        return res
    try:
        m = run_measured(
            python_cmd(
                "benchmarks.bench_predictor",
                "worker",
                "transformer",
                str(tdir),
                "--batches",
                ",".join(map(str, batches)),
            ),
            timeout_s=1800,
        )
        res["transformer"] = {**m.result, "peak_rss_mb": m.peak_rss_mb}
    except BenchError as e:
        res["transformer"] = {"error": str(e)[-800:]}
    return res


def main() -> None:
    from benchmarks.bench_sim import default_predictor_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("kind", choices=["lightgbm", "transformer"])
    w.add_argument("artifacts")
    w.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--artifacts", default=default_predictor_dir())
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",") if x]
    if args.cmd == "worker":
        if args.kind == "lightgbm":
            emit(lgbm_worker(args.artifacts, batches))
        else:
            emit(transformer_worker(args.artifacts, batches))
        return
    res = measure(args.artifacts, batches)
    for k, v in res.items():
        print(k, {a: b for a, b in v.items() if a != "rows"})
        if "rows" in v:
            print(md_table(v["rows"]))


if __name__ == "__main__":
    main()
