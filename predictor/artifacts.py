"""Safe, self-describing artifact directories (never pickle).

An artifact is a directory holding model files in safe formats (LightGBM native text,
safetensors, JSON) and ``meta.json``::

    {"artifact_format": 1, "kind": "lgbm_length", "feature_schema_version": 1,
     "created_utc": ..., "library_versions": {...}, "hyperparameters": {...},
     "training_data_hash": "...", "metrics": {...}, "files": {"name": "sha256", ...}, ...}

Reading verifies the format and feature-schema versions, the kind, and the sha256 of every listed
file, so a truncated or edited file is reported as corrupt instead of loading garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.features import FEATURE_SCHEMA_VERSION

ARTIFACT_FORMAT = 1
META = "meta.json"
TRAIN_COMMAND = "python train.py"


class ArtifactError(RuntimeError):
    """An artifact directory is missing, corrupt, or written for another version."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    pass


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_artifact_root() -> Path:
    """``artifacts/`` at the repository root (``artifacts/length``, ``artifacts/drift``)."""
    return repo_root() / "artifacts"


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "numpy",
        "pandas",
        "scikit-learn",
        "lightgbm",
        "torch",
        "transformers",
        "safetensors",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def data_hash(df: pd.DataFrame, columns: tuple[str, ...] = ("request_id", "output_tokens")) -> str:
    """sha256 over the identifying columns of a training table (order-sensitive)."""
    cols = [c for c in columns if c in df.columns]
    h = hashlib.sha256()
    h.update(np.asarray(pd.util.hash_pandas_object(df[cols], index=False)).tobytes())
    h.update(str(len(df)).encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise ArtifactError(
            f"{path}: cannot read safetensors file ({e}); the artifact is "
            f"corrupt, retrain with `{TRAIN_COMMAND}`"
        ) from e


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def write_meta(directory: Path, kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``meta.json`` listing the sha256 of every other file already in ``directory``."""
    directory = Path(directory)
    files = {
        p.name: file_sha256(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != META
    }
    full = {
        "artifact_format": ARTIFACT_FORMAT,
        "kind": kind,
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "library_versions": library_versions(),
        **meta,
        "files": files,
    }
    (directory / META).write_text(json.dumps(_jsonable(full), indent=1, sort_keys=True))
    return full


def read_meta(directory: Path, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read and verify ``meta.json``; raise :class:`ArtifactError` with what to do."""
    directory = Path(directory)
    path = directory / META
    if not path.is_file():
        raise ArtifactNotFoundError(
            f"no predictor artifact at {directory} ({META} missing); train one with "
            f"`{TRAIN_COMMAND}` (writes artifacts/length and artifacts/drift)"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(
            f"{path}: not valid JSON ({e}); the artifact is corrupt, retrain with `{TRAIN_COMMAND}`"
        ) from e
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if meta.get("artifact_format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{path}: artifact format {meta.get('artifact_format')!r}, this "
            f"code reads format {ARTIFACT_FORMAT}; retrain with "
            f"`{TRAIN_COMMAND}`"
        )
    if meta.get("feature_schema_version") != FEATURE_SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: written for feature schema version "
            f"{meta.get('feature_schema_version')!r}, this code uses version "
            f"{FEATURE_SCHEMA_VERSION}; retrain with `{TRAIN_COMMAND}`"
        )
    if kinds is not None and meta.get("kind") not in kinds:
        raise ArtifactError(
            f"{path}: artifact kind {meta.get('kind')!r}, expected one of {list(kinds)}"
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(
            f"{path}: 'files' must map each model file to its sha256; retrain with "
            f"`{TRAIN_COMMAND}`"
        )
    for name in files:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            # a listed name such as "../x" would make the check read outside the artifact
            raise ArtifactError(
                f"{path}: listed file {name!r} is not a plain file name inside {directory}"
            )
    # a file nobody listed was not written by training (a leftover or an injected file)
    extra = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name != META and p.name not in files and not p.name.startswith(".")
    )
    if extra:
        raise ArtifactError(
            f"{directory}: unexpected file(s) {extra} not listed in {META}; remove them "
            f"or retrain with `{TRAIN_COMMAND}`"
        )
    for name, digest in files.items():
        p = directory / name
        if not p.is_file():
            raise ArtifactError(
                f"{directory}: file {name!r} listed in {META} is missing; "
                f"the artifact is incomplete, retrain with `{TRAIN_COMMAND}`"
            )
        if file_sha256(p) != digest:
            raise ArtifactError(
                f"{p}: sha256 differs from {META}; the file is corrupt or was "
                f"edited, retrain with `{TRAIN_COMMAND}`"
            )
    return meta
