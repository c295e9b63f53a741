"""Step-time cost models for the simulator.

A cost model maps what one engine iteration computes to its duration in seconds. The default,
:class:`LinearCostModel`, is the sum of four terms, each with a physical reading::

    t = c0                               # weights streamed once per step + launch overhead (s)
      + c_token * batched_tokens         # linear-layer FLOPs per token (prefill and decode) (s/token)
      + c_kv * kv_tokens_read            # decode attention: KV bytes read / memory bandwidth (s/token)
      + c_pair * prefill_attention_pairs # prefill attention: (query, key) pairs, compute-bound (s/pair)
      + c_decode * decode_seqs           # per decoding sequence on top of c_token (s/seq): sampling,
                                         # output processing; 0 for the GPU profiles, large on CPU
      + c_prefill_seq * prefill_seqs     # per prefill chunk (s/seq): new-request set-up in the
                                         # model runner; 0 for the GPU profiles

``batched_tokens`` = prefill tokens + decode sequences; ``kv_tokens_read`` is the context the step
attends over (sum of the computed tokens of every scheduled request); ``prefill_attention_pairs``
is, summed over prefill chunks, ``chunk * (context_before + chunk / 2)``. Any object with the same
``step_time`` method can be passed to the engine (e.g. a model fitted from live vLLM steps).

Fitted models are stored as JSON (kind ``driftsched.linear_step_time``, written by
``scheduler.sim.calibrate.save_profile``) and read by :func:`load_cost_model`; the simulator
takes such a file as its profile (``engine=sim engine.profile=path/to/fitted.json``).
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LinearCostModel:
    c0: float  # s per step
    c_token: float  # s per batched token (prefill token or decode sequence)
    c_kv: float  # s per KV token read by attention
    c_pair: float = 0.0  # s per prefill attention (query, key) pair
    origin: str = ""  # where the coefficients come from (documentation, logged in meta)
    c_decode: float = 0.0  # s per decoding sequence, on top of c_token
    c_prefill_seq: float = 0.0  # s per prefill chunk (sequence computing prompt tokens)

    def step_time(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        kv_tokens: int,
        prefill_pairs: float = 0.0,
        prefill_seqs: int = 0,
    ) -> float:
        return (
            self.c0
            + self.c_token * (prefill_tokens + decode_seqs)
            + self.c_kv * kv_tokens
            + self.c_pair * prefill_pairs
            + self.c_decode * decode_seqs
            + self.c_prefill_seq * prefill_seqs
        )

    def describe(self) -> dict[str, object]:
        return {
            "c0_s": self.c0,
            "c_token_s": self.c_token,
            "c_kv_s": self.c_kv,
            "c_pair_s": self.c_pair,
            "c_decode_s": self.c_decode,
            "c_prefill_seq_s": self.c_prefill_seq,
            "origin": self.origin,
        }


PROFILE_KIND = "driftsched.linear_step_time"
PROFILE_VERSION = 2  # 2: + c_decode, c_prefill_seq, kv_capacity_tokens, limits (v1 still loads)
COEFFICIENTS = ("c0", "c_token", "c_kv", "c_pair", "c_decode", "c_prefill_seq")
OPTIONAL_COEFFICIENTS = ("c_decode", "c_prefill_seq")  # absent in version 1 files: 0


def accepts_prefill_seqs(step_time: object) -> bool:
    """Whether a cost model's ``step_time`` takes ``prefill_seqs`` (engines pass it only then,
    so cost objects with the original four-argument signature keep working)."""
    import inspect

    try:
        params = inspect.signature(step_time).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return "prefill_seqs" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def read_profile_doc(path: str | Path) -> dict[str, Any]:
    """The validated JSON document of a fitted step-time profile (see the module docstring)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such step-time profile; fit one with "
            "python -m report.fidelity --save-profile PATH (docs/LIVE.md)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a step-time profile ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != PROFILE_KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"{path}: field 'kind' is {kind!r}; expected {PROFILE_KIND!r} "
            "(written by scheduler.sim.calibrate.save_profile)"
        )
    for k in COEFFICIENTS:
        v = doc.get(k, 0.0 if k in OPTIONAL_COEFFICIENTS else None)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(
                f"{path}: coefficient {k!r} is {v!r}; expected a finite number of seconds >= 0"
            )
    cap = doc.get("kv_capacity_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(
            f"{path}: field 'kv_capacity_tokens' is {cap!r}; expected null or an integer >= 1"
        )
    return doc


def load_cost_model(path: str | Path) -> LinearCostModel:
    """A :class:`LinearCostModel` from a fitted-profile JSON file (validated)."""
    doc = read_profile_doc(path)
    return LinearCostModel(
        **{k: float(doc.get(k, 0.0)) for k in COEFFICIENTS},
        origin=str(doc.get("origin") or Path(path).name),
    )


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
