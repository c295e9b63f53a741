"""Step-time cost models for the simulator.

A cost model maps what one engine iteration computes to its duration in seconds. The default,
:class:`LinearCostModel`, is the sum of four terms, each with a physical reading::

    t = c0                               # weights streamed once per step + launch overhead (s)
      + c_token * batched_tokens         # linear-layer FLOPs per token (prefill and decode) (s/token)
      + c_kv * kv_tokens_read            # decode attention: KV bytes read / memory bandwidth (s/token)
      + c_pair * prefill_attention_pairs # prefill attention: (query, key) pairs, compute-bound (s/pair)

``batched_tokens`` = prefill tokens + decode sequences; ``kv_tokens_read`` is the context the step
attends over (sum of the computed tokens of every scheduled request); ``prefill_attention_pairs``
is, summed over prefill chunks, ``chunk * (context_before + chunk / 2)``. Any object with the same
``step_time`` method can be passed to the engine (e.g. a model fitted from live vLLM steps).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LinearCostModel:
    c0: float  # s per step
    c_token: float  # s per batched token (prefill token or decode sequence)
    c_kv: float  # s per KV token read by attention
    c_pair: float = 0.0  # s per prefill attention (query, key) pair
    origin: str = ""  # where the coefficients come from (documentation, logged in meta)

    def step_time(
        self, prefill_tokens: int, decode_seqs: int, kv_tokens: int, prefill_pairs: float = 0.0
    ) -> float:
        return (
            self.c0
            + self.c_token * (prefill_tokens + decode_seqs)
            + self.c_kv * kv_tokens
            + self.c_pair * prefill_pairs
        )

    def describe(self) -> dict[str, object]:
        return {
            "c0_s": self.c0,
            "c_token_s": self.c_token,
            "c_kv_s": self.c_kv,
            "c_pair_s": self.c_pair,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class LayerFit:
    """Least-squares fit of one transformer layer's linear-operator time ``a + b * tokens``."""

    a_s: float  # s per layer per step (weight reads: memory-bound at small batches)
    b_s: float  # s per layer per token (compute-bound)
    r2: float  # coefficient of determination of the fit
    n_rows: int  # profile rows used


def fit_vidur_mlp(path: str | Path, max_tokens: int = 512, tp: int = 1) -> LayerFit:
    """Fit ``a + b * num_tokens`` to the sum of Vidur's per-operator median times for one layer.

    Vidur's ``mlp.csv`` times every non-attention operator of one layer (projections, MLP, norms,
    rotary, residual add) in milliseconds at many token counts. We sum the operator medians
    (excluding the embedding, which runs once per step, not per layer) and fit a line over
    ``num_tokens <= max_tokens`` (the range decode batches and prefill chunks live in).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        import pandas as pd

        df = pd.read_csv(fh)
    need = {"num_tokens", "num_tensor_parallel_workers"}
    if not need <= set(df.columns):
        raise ValueError(
            f"{path}: expected Vidur mlp.csv columns {sorted(need)}; got {list(df.columns)[:8]}..."
        )
    df = df[(df["num_tensor_parallel_workers"] == tp) & (df["num_tokens"] <= max_tokens)]
    if len(df) < 3:
        raise ValueError(f"{path}: fewer than 3 rows with tp={tp} and num_tokens<={max_tokens}")
    ops = [
        c
        for c in df.columns
        if c.startswith("time_stats.")
        and c.endswith(".median")
        and not c.startswith("time_stats.emb.")
    ]
    t_ms = df[ops].sum(axis=1).to_numpy(dtype=np.float64)
    n = df["num_tokens"].to_numpy(dtype=np.float64)
    design = np.c_[np.ones_like(n), n]
    coef, *_ = np.linalg.lstsq(design, t_ms, rcond=None)
    resid = t_ms - design @ coef
    r2 = 1.0 - float(resid @ resid) / float(((t_ms - t_ms.mean()) ** 2).sum())
    return LayerFit(a_s=float(coef[0]) / 1e3, b_s=float(coef[1]) / 1e3, r2=r2, n_rows=len(df))
