"""Serving API the scheduler policies call (``drift``, ``driftsched``). See docs/ARCHITECTURE.md.

    pred = load_predictor("artifacts")          # or load_predictor() for the default root
    X = pred.featurize(rows)                    # once per request, at arrival: (n, d)
    adm = pred.predict_admission(X)             # (n, 2) p50, p90 of total output tokens
    rem = pred.predict_remaining(X, adm, gen)   # (n, 2) p50, p90 of tokens still to come
    rem = pred.predict_remaining(X, adm, gen, texts)  # optional: partial output texts so far

``rows`` is a DataFrame with the schema's columns (``prompt`` may be missing or NA); unknown
tenant/model/source values go to the explicit unknown bucket. ``frame_from_requests`` builds it
from ``SchedRequest`` objects. ``load_predictor`` accepts the artifact root (holding ``length/``
and ``drift/``) or a length artifact directory (then ``drift_dir`` is optional).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from predictor.artifacts import (
    META,
    TRAIN_COMMAND,
    ArtifactError,
    ArtifactNotFoundError,
    default_artifact_root,
    read_meta,
)


class AdmissionRequest(Protocol):
    """What :func:`frame_from_requests` reads of a request: its admission-time features (the
    scheduler's ``SchedRequest`` has them; the predictor never imports the scheduler)."""

    request_id: str
    tenant: str
    tier: str
    category: str
    source: str
    model: str
    prompt: str | None
    prompt_tokens: int


class _Length(Protocol):
    def featurize(self, X: pd.DataFrame) -> np.ndarray: ...
    def predict_features(self, F: np.ndarray) -> np.ndarray: ...


class _Drift(Protocol):
    def predict_remaining(
        self, F: np.ndarray, admission: np.ndarray, generated: np.ndarray
    ) -> np.ndarray: ...  # LightGBMDrift also takes texts= (partial output texts)


def fingerprint(meta: dict[str, Any]) -> str:
    """Identity of a length artifact (hash of its file digests): drift models record it."""
    return hashlib.sha256(json.dumps(meta.get("files", {}), sort_keys=True).encode()).hexdigest()


def load_length_artifact(directory: str | Path) -> Any:
    """Load any length artifact (LightGBM or transformer) by the kind in its meta.json."""
    meta = read_meta(Path(directory))
    kind = meta.get("kind")
    if kind == "lgbm_length":
        from predictor.lgbm import LightGBMLength

        return LightGBMLength.load(directory)
    if kind == "torch_length":
        from predictor.transformer import TransformerLength

        return TransformerLength.load(directory)
    if kind == "factorised_length":
        from predictor.factorised import FactorisedLength

        return FactorisedLength.load(directory)
    raise ArtifactError(
        f"{directory}: kind {kind!r} is not a servable length model; expected "
        "'lgbm_length', 'torch_length' or 'factorised_length'"
    )


def load_drift_artifact(directory: str | Path) -> Any:
    meta = read_meta(Path(directory))
    kind = meta.get("kind")
    if kind == "lgbm_drift":
        from predictor.lgbm import LightGBMDrift

        return LightGBMDrift.load(directory)
    if kind == "torch_drift":
        from predictor.transformer import TransformerDrift

        return TransformerDrift.load(directory)
    raise ArtifactError(
        f"{directory}: kind {kind!r} is not a drift model; expected 'lgbm_drift' or 'torch_drift'"
    )


@dataclass
class ServingPredictor:
    length: _Length
    drift: _Drift | None = None
    length_dir: Path | None = None
    drift_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_drift(self) -> bool:
        return self.drift is not None

    @property
    def reads_text(self) -> bool:
        """Whether the drift model reads the partial output text (``predict_remaining``'s
        ``texts``); callers skip decoding text otherwise."""
        return bool(getattr(self.drift, "text_feature_names_", None))

    def featurize(self, rows: pd.DataFrame) -> np.ndarray:
        """Admission features (n, d) float32; call once per request, at arrival."""
        if not isinstance(rows, pd.DataFrame):
            raise TypeError(
                f"featurize expects a DataFrame of requests, got {type(rows).__name__}"
                " (use predictor.serving.frame_from_requests)"
            )
        return self.length.featurize(rows)

    def predict_admission(self, X: np.ndarray) -> np.ndarray:
        """(n, 2) = (p50, p90) of the total output length in tokens."""
        return self.length.predict_features(X)

    def predict_remaining(
        self,
        X: np.ndarray,
        admission: np.ndarray,
        generated: np.ndarray,
        texts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """(n, 2) = (p50, p90) of tokens still to come, given not finished at ``generated``.

        ``texts`` (optional): each request's partial output text so far, i.e. the decoded first
        ``generated`` tokens (``predictor.text_progress.PartialText`` builds it from a trace's
        ``output_text``), None where unknown. Ignored by drift models that do not read text.
        """
        if self.drift is None:
            raise ArtifactNotFoundError(
                f"no drift model loaded next to {self.length_dir}; train one with "
                f"`{TRAIN_COMMAND}` (writes artifacts/drift)"
            )
        X = np.asarray(X)
        adm = np.asarray(admission, dtype=np.float64).reshape(-1, 2)
        gen = np.asarray(generated, dtype=np.float64).reshape(-1)
        if not (X.shape[0] == adm.shape[0] == gen.shape[0]):
            raise ValueError(
                f"X ({X.shape[0]}), admission ({adm.shape[0]}) and generated "
                f"({gen.shape[0]}) must have the same number of rows"
            )
        if texts is not None and self.reads_text:
            if len(texts) != gen.shape[0]:
                raise ValueError(f"texts ({len(texts)}) and generated ({gen.shape[0]}) differ")
            return self.drift.predict_remaining(X, adm, gen, texts=list(texts))  # type: ignore[call-arg]
        return self.drift.predict_remaining(X, adm, gen)

    def describe(self) -> dict[str, Any]:
        return {
            "length_dir": str(self.length_dir),
            "drift_dir": str(self.drift_dir),
            "length_kind": self.meta.get("length_kind"),
            "drift_kind": self.meta.get("drift_kind"),
        }


def load_predictor(
    artifact_dir: str | Path | None = None,
    drift_dir: str | Path | None = None,
    *,
    require_drift: bool = True,
) -> ServingPredictor:
    """Load a length model and (by default, required) its drift model.

    ``artifact_dir``: the root holding ``length/`` and ``drift/`` (default ``artifacts/`` at
    the repo root), or a length artifact directory itself. ``drift_dir`` overrides where the
    drift model is read. Missing artifacts raise :class:`ArtifactNotFoundError` naming
    ``python train.py``.
    """
    root = Path(artifact_dir) if artifact_dir is not None else default_artifact_root()
    if (root / "length" / META).is_file() or not (root / META).is_file():
        length_dir = root / "length"
        default_drift = root / "drift"
    else:
        length_dir = root
        default_drift = root.parent / "drift"
    if not (length_dir / META).is_file():
        raise ArtifactNotFoundError(
            f"no trained length predictor at {length_dir}; train one with `{TRAIN_COMMAND}` "
            "(default LightGBM, writes artifacts/length and artifacts/drift) or "
            "`python train.py predictor=transformer`"
        )
    length = load_length_artifact(length_dir)
    lmeta = read_meta(length_dir)
    ddir = Path(drift_dir) if drift_dir is not None else default_drift
    drift = None
    dmeta: dict[str, Any] = {}
    if (ddir / META).is_file():
        drift = load_drift_artifact(ddir)
        dmeta = read_meta(ddir)
        want = dmeta.get("length_fingerprint")
        if want is not None and want != fingerprint(lmeta):
            raise ArtifactError(
                f"drift model {ddir} was trained on another length model than "
                f"{length_dir}; retrain both with `{TRAIN_COMMAND}`"
            )
    elif require_drift:
        raise ArtifactNotFoundError(
            f"no drift model at {ddir}; train one with "
            f"`{TRAIN_COMMAND}` (writes artifacts/drift), or pass "
            "require_drift=False"
        )
    return ServingPredictor(
        length=length,
        drift=drift,
        length_dir=length_dir,
        drift_dir=ddir if drift is not None else None,
        meta={
            "length_kind": lmeta.get("kind"),
            "drift_kind": dmeta.get("kind"),
            "length": lmeta,
            "drift": dmeta,
        },
    )


def frame_from_requests(requests: Sequence[AdmissionRequest]) -> pd.DataFrame:
    """The admission columns of requests (e.g. ``SchedRequest``) as a DataFrame for
    ``featurize``."""
    return pd.DataFrame(
        {
            "request_id": [r.request_id for r in requests],
            "tenant": [r.tenant for r in requests],
            "tier": [r.tier for r in requests],
            "category": [r.category for r in requests],
            "source": [r.source for r in requests],
            "model": [r.model for r in requests],
            "prompt": pd.array([r.prompt for r in requests], dtype="string"),
            "prompt_tokens": np.array([r.prompt_tokens for r in requests], dtype=np.int64),
        }
    )
