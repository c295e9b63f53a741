"""Which prompts a predictor has seen, and evaluation pools that avoid them.

A learned scheduling policy must be judged on prompts its predictor never trained or validated
on: otherwise it schedules partly on memorised lengths (on the first default workload 71% of
the requests reused training prompts; Kendall tau was 0.59 on those and 0.23 elsewhere).

A prompt is identified by a 64-bit *prompt key*:

* rows with prompt text: blake2b of the normalised text (Unicode NFKC, case-folded, whitespace
  collapsed), so the same prompt under two sources, ids or models is one prompt;
* rows without text (length-only traces such as Vidur's arXiv set): blake2b of
  ``source/prompt_id`` (``request_id`` where no prompt id), the best identity those rows have.

:class:`SeenPrompts` is a sorted ``uint64`` array of the keys of every train and validation row
of a split (before any subsampling: a prompt in the train split counts as seen even when
``max_train_rows`` left it out) plus a description of the split. ``python train.py`` stores it
in each artifact (``seen_prompts.safetensors`` listed in ``meta.json``, so it is sha256-checked
like the models); workloads read it back to draw only unseen prompts, and ``evaluate.py``
reports ``train_overlap``, the share of requests whose key is in the set.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEEN_FILE = "seen_prompts.safetensors"
SEEN_KEY = "seen_prompts"  # the meta.json entry describing the set
_WS = re.compile(r"\s+")


def normalise_prompt(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed and stripped: what makes two prompts the same."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def prompt_keys(df: pd.DataFrame) -> np.ndarray:
    """The prompt key of every row, ``uint64`` shape ``(len(df),)`` (see the module doc).

    Needs ``source`` and ``request_id``; uses ``prompt`` and ``prompt_id`` where present.
    """
    for col in ("source", "request_id"):
        if col not in df.columns:
            raise ValueError(f"prompt_keys: column {col!r} missing (columns: {list(df.columns)})")
    n = len(df)
    texts = df["prompt"] if "prompt" in df.columns else pd.Series([pd.NA] * n, index=df.index)
    ids = df["request_id"].astype("string")
    if "prompt_id" in df.columns:
        ids = df["prompt_id"].astype("string").fillna(ids)
    # a workload keeps the source's id in source_request_id and renames request_id
    if "source_request_id" in df.columns and "prompt_id" not in df.columns:
        ids = df["source_request_id"].astype("string")
    out = np.empty(n, dtype=np.uint64)
    for i, (t, s, pid) in enumerate(zip(texts.tolist(), df["source"].tolist(), ids.tolist())):
        if isinstance(t, str) and t.strip():
            out[i] = _h64("text:" + normalise_prompt(t))
        else:
            out[i] = _h64(f"id:{s}/{pid}")
    return out


@dataclass(frozen=True)
class SeenPrompts:
    """The prompt keys a predictor trained or validated on (sorted, unique ``uint64``)."""

    keys: np.ndarray
    spec: Mapping[str, Any] = field(default_factory=dict)  # sources/path and split it came from

    def __post_init__(self) -> None:
        k = np.unique(np.asarray(self.keys, dtype=np.uint64))
        object.__setattr__(self, "keys", k)

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask, True where a key is in the set."""
        keys = np.asarray(keys, dtype=np.uint64)
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=bool)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def overlap(self, df: pd.DataFrame) -> float:
        """Share of the rows of ``df`` whose prompt is in the set (0.0 for an empty table)."""
        if len(df) == 0:
            return 0.0
        return float(self.contains(prompt_keys(df)).mean())

    # -- storage (an artifact directory; safetensors + the meta.json entry) --------------------
    def describe(self) -> dict[str, Any]:
        return {"file": SEEN_FILE, "n_prompts": len(self), "spec": dict(self.spec)}

    def save(self, directory: Path) -> Path:
        from predictor.artifacts import save_arrays

        path = Path(directory) / SEEN_FILE
        save_arrays(path, {"keys": self.keys})
        return path

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> SeenPrompts:
        """From an artifact whose ``meta.json`` (already verified: sha256) has the entry."""
        from predictor.artifacts import ArtifactError, load_arrays

        entry = meta.get(SEEN_KEY)
        if not isinstance(entry, Mapping) or entry.get("file") != SEEN_FILE:
            raise ArtifactError(
                f"{directory}: the artifact does not record which prompts it trained on "
                f"(no '{SEEN_KEY}' in meta.json; written before this check existed); retrain "
                "with `python train.py` so evaluations can exclude them"
            )
        arr = load_arrays(Path(directory) / SEEN_FILE).get("keys")
        if arr is None or arr.dtype != np.uint64 or arr.ndim != 1:
            raise ArtifactError(
                f"{directory / SEEN_FILE}: expected one 1-D uint64 tensor 'keys'; retrain "
                "with `python train.py`"
            )
        return cls(arr, dict(entry.get("spec") or {}))


def seen_from_split(train: pd.DataFrame, val: pd.DataFrame, spec: Mapping[str, Any]) -> SeenPrompts:
    """The seen set of a split: every row of its train and validation parts."""
    return SeenPrompts(np.concatenate([prompt_keys(train), prompt_keys(val)]), dict(spec))


def attach_to_artifact(directory: Path, seen: SeenPrompts) -> None:
    """Add ``seen`` to a saved artifact: write the file and re-list it in ``meta.json``."""
    from predictor.artifacts import META, write_meta

    directory = Path(directory)
    meta = json.loads((directory / META).read_text())
    seen.save(directory)
    kind = meta.pop("kind")
    for k in ("files", "artifact_format", "feature_schema_version", "created_utc"):
        meta.pop(k, None)
    meta[SEEN_KEY] = seen.describe()
    write_meta(directory, kind, meta)


def seen_in_artifact(directory: str | Path) -> SeenPrompts:
    """The seen set of one artifact directory (``artifacts/length``) or of an artifact root
    (``artifacts``: the length and drift sets together, as both models saw them)."""
    from predictor.artifacts import ArtifactNotFoundError, read_meta

    d = Path(directory)
    parts = [p for p in (d / "length", d / "drift") if (p / "meta.json").is_file()]
    if not parts:
        if not (d / "meta.json").is_file():
            raise ArtifactNotFoundError(
                f"no predictor artifact at {d} (meta.json missing); train one with "
                "`python train.py`"
            )
        parts = [d]
    sets = [SeenPrompts.load(p, read_meta(p)) for p in parts]
    return SeenPrompts(np.concatenate([s.keys for s in sets]), sets[0].spec)


@lru_cache(maxsize=8)
def seen_from_data_config(name: str = "default") -> SeenPrompts:
    """The seen set that ``python train.py data=<name>`` would record, computed from the data
    config alone (for workloads built where no trained artifact exists yet)."""
    from omegaconf import OmegaConf

    from data.loaders import load_sources, load_trace_file
    from data.splits import split_by_config

    path = Path(__file__).resolve().parent.parent / "conf" / "data" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"unknown data config {name!r}; expected one of {known}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(cfg, dict)
    table = load_trace_file(cfg["path"]) if cfg.get("path") else load_sources(list(cfg["sources"]))
    split = cfg.get("split") or {"kind": "grouped"}
    sp = split_by_config(table, split)
    return seen_from_split(
        sp.train, sp.val, training_spec(cfg.get("sources"), cfg.get("path"), split)
    )


def training_spec(sources: Any, path: Any, split: Mapping[str, Any]) -> dict[str, Any]:
    """How a seen set was made (stored with it; compared when reporting)."""
    return {
        "sources": list(sources) if sources is not None and not path else None,
        "path": str(path) if path else None,
        "split": dict(split),
    }


def resolve_seen(unseen_by: str | None, notes: list[str] | None = None) -> SeenPrompts | None:
    """A workload's ``unseen_by`` setting -> the set its pools must avoid.

    ``None``/``"none"``: no restriction. ``"data:<name>"``: the split of ``conf/data/<name>``.
    Otherwise an artifact root or directory; where it holds no trained artifact yet, the
    default data config's split (what ``python train.py`` would record).
    """
    if unseen_by is None or str(unseen_by).lower() in ("none", "null", ""):
        return None
    s = str(unseen_by)
    if s.startswith("data:"):
        return seen_from_data_config(s[5:] or "default")
    d = Path(s)
    if not d.is_absolute():
        d = Path.cwd() / d
    if (d / "meta.json").is_file() or (d / "length" / "meta.json").is_file():
        return seen_in_artifact(d)
    if notes is not None:
        notes.append(
            f"unseen_by={unseen_by}: no trained artifact there yet; pools avoid the train and "
            "validation prompts of conf/data/default.yaml's split instead (what `python "
            "train.py` records)"
        )
    return seen_from_data_config("default")


class TrainOverlapError(ValueError):
    """A learned policy would be evaluated on prompts its predictor trained on."""


def train_overlaps(
    requests: pd.DataFrame,
    predictor_dirs: Mapping[str, Path | None],
    *,
    allow: bool = False,
    workload: str = "workload",
) -> dict[str, float | None]:
    """``train_overlap`` per policy: the share of ``requests`` whose prompt the policy's
    predictor (``predictor_dirs[name]``, None for a policy without one) trained or validated
    on. Raises :class:`TrainOverlapError` for a share > 0 unless ``allow``."""
    keys = prompt_keys(requests)
    cache: dict[Path, float] = {}
    out: dict[str, float | None] = {}
    for name, d in predictor_dirs.items():
        if d is None:
            out[name] = None
            continue
        d = Path(d)
        if d not in cache:
            cache[d] = float(seen_in_artifact(d).contains(keys).mean()) if len(keys) else 0.0
        share = cache[d]
        out[name] = share
        if share > 0 and not allow:
            raise TrainOverlapError(
                f"policy {name!r}: {share:.1%} of the {len(keys):,} requests of workload "
                f"{workload!r} ({round(share * len(keys)):,}) use a prompt its predictor ({d}) "
                "trained or validated on, so its numbers would partly measure memorised "
                f"lengths. Draw the workload from unseen prompts (workload.unseen_by={d}; the "
                "default workloads do this via predictor_dir), or set allow_train_overlap=true "
                "to run anyway (train_overlap is then shown in every table of the run)"
            )
    return out
