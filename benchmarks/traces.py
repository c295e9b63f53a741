"""Benchmark traces: the default workload at a target utilisation of the default sim engine.

``sim_trace(n)`` builds ``n`` requests of ``conf/workload/default.yaml`` (seed 0), measures the
default ``SimEngine``'s capacity on them and rescales arrivals to ``utilisation`` x capacity, then
caches the table as parquet under ``outputs/benchmarks/cache`` (ignored by git) so that every
worker and repetition reads the identical trace. Sizes above ``MAX_BUILT`` are the
``MAX_BUILT``-request trace tiled end to end (each copy shifted by the base trace's span plus one
mean inter-arrival gap): building a million-request workload from the data pools is itself
minutes of work, and tiling keeps the length mix and the load identical. The report says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import ROOT

CACHE = ROOT / "outputs" / "benchmarks" / "cache"
MAX_BUILT = 100_000
# columns the simulator and the policies read (requests_from_frame + featurize); the rest of the
# workload table (ids of sources, sampled lengths, ...) is dropped to keep worker memory honest
COLUMNS = [
    "request_id",
    "tenant",
    "tier",
    "category",
    "source",
    "model",
    "arrival_s",
    "prompt",
    "prompt_tokens",
    "output_tokens",
    "max_tokens",
]


def _path(n: int, seed: int, utilisation: float) -> Path:
    return CACHE / f"default_n{n}_seed{seed}_u{utilisation:g}.parquet"


def sim_trace(n: int, seed: int = 0, utilisation: float = 0.95, cache: Path = CACHE) -> Path:
    """Path of the cached trace (built on first use); meta in ``<path>.json``."""
    path = cache / _path(n, seed, utilisation).name
    if path.is_file() and path.with_suffix(".json").is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if n > MAX_BUILT:
        base = pd.read_parquet(sim_trace(MAX_BUILT, seed, utilisation, cache))
        base_meta = json.loads(
            sim_trace(MAX_BUILT, seed, utilisation, cache).with_suffix(".json").read_text()
        )
        a = base["arrival_s"].to_numpy()
        shift = float(a[-1] - a[0]) + float(np.mean(np.diff(a)))
        copies = -(-n // len(base))
        parts = []
        for k in range(copies):
            part = base.copy()
            part["arrival_s"] = a + k * shift
            part["request_id"] = part["request_id"].astype(str) + f"#{k}"
            parts.append(part)
        df = pd.concat(parts, ignore_index=True).iloc[:n].reset_index(drop=True)
        meta = {**base_meta, "n": n, "tiled_from": len(base), "build_s": time.perf_counter() - t0}
    else:
        from report.presets import load_workload
        from scheduler.sim.engine import SimEngine

        wl = load_workload("default", seed=seed, overrides=[f"n_requests={n}"])
        cap = SimEngine().capacity_rps(wl)
        wl = wl.at_rate(utilisation * cap)
        df = wl.requests[[c for c in COLUMNS if c in wl.requests.columns]].copy()
        meta = {
            "n": n,
            "seed": seed,
            "utilisation": utilisation,
            "capacity_rps": cap,
            "rate_rps": utilisation * cap,
            "tiled_from": None,
            "build_s": time.perf_counter() - t0,
        }
    tmp = path.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path


def trace_meta(path: Path) -> dict:
    return json.loads(Path(path).with_suffix(".json").read_text())


def peer_csv(path: Path) -> Path:
    """The trace as the peers read it: ``arrival_s, prompt_tokens, output_tokens`` (CSV)."""
    out = Path(path).with_suffix(".peers.csv")
    if not out.is_file():
        df = pd.read_parquet(path, columns=["arrival_s", "prompt_tokens", "output_tokens"])
        df.to_csv(out, index=False)
    return out
