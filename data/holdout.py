"""Which prompts a predictor has seen, and evaluation pools that avoid them.

A learned scheduling policy must be judged on prompts its predictor never trained or validated
on: otherwise it schedules partly on memorised lengths (on the first default workload 71% of
the requests reused training prompts; Kendall tau was 0.59 on those and 0.23 elsewhere).

A prompt is identified by a 64-bit *prompt key*:

* rows with prompt text: blake2b of the normalised text (Unicode NFKC, case-folded, whitespace
  collapsed), so the same prompt under two sources, ids or models is one prompt;
* rows without text (length-only traces such as Vidur's arXiv set): blake2b of
  ``source/prompt_id`` (``request_id`` where no prompt id), the best identity those rows have.

Near-duplicates count as seen: a *prefix key* hashes only the first ``PREFIX_CHARS`` (1,000)
normalised characters (for shorter prompts it equals the prompt key), so perturbed variants of
a training prompt (the same long context with another question or a typo at the end: 12 of the
default workload's 3,000 requests before this key) are caught too. A seen set stores both key
sets; a row is seen when either matches (:meth:`SeenPrompts.seen_mask`), and workload filters
report how many rows only the prefix key caught.

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
PREFIX_CHARS = 1000  # normalised characters a prefix key reads (near-duplicates share them)
SEEN_KEY = "seen_prompts"  # the meta.json entry describing the set
_WS = re.compile(r"\s+")


def normalise_prompt(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed and stripped: what makes two prompts the same."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def prompt_key(prompt: object, source: object, prompt_id: object, prefix: bool = False) -> int:
    """The 64-bit key of one row: its normalised text (the first ``PREFIX_CHARS`` characters
    with ``prefix``), else ``source/prompt_id``."""
    if isinstance(prompt, str) and prompt.strip():
        if prefix:
            # normalising never lengthens whitespace runs past what 8x the prefix holds
            return _h64("text:" + normalise_prompt(prompt[: 8 * PREFIX_CHARS])[:PREFIX_CHARS])
        return _h64("text:" + normalise_prompt(prompt))
    return _h64(f"id:{source}/{prompt_id}")


def _identity(df: pd.DataFrame) -> tuple[list[object], list[object], list[object]]:
    """(texts, sources, prompt ids) of every row, for the key functions."""
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
    return texts.tolist(), df["source"].tolist(), ids.tolist()


def prompt_keys(df: pd.DataFrame, prefix: bool = False) -> np.ndarray:
    """The prompt key of every row, ``uint64`` shape ``(len(df),)`` (see the module doc);
    ``prefix=True``: the prefix keys (first ``PREFIX_CHARS`` normalised characters).

    Needs ``source`` and ``request_id``; uses ``prompt`` and ``prompt_id`` where present.
    """
    texts, sources, ids = _identity(df)
    out = np.empty(len(df), dtype=np.uint64)
    for i, (t, s, pid) in enumerate(zip(texts, sources, ids)):
        out[i] = prompt_key(t, s, pid, prefix)
    return out


@dataclass(frozen=True)
class SeenPrompts:
    """The prompt keys a predictor trained or validated on (sorted, unique ``uint64``), and
    their prefix keys (None for a set stored before prefix keys existed: exact keys only)."""

    keys: np.ndarray
    spec: Mapping[str, Any] = field(default_factory=dict)  # sources/path and split it came from
    prefix: np.ndarray | None = None

    def __post_init__(self) -> None:
        k = np.unique(np.asarray(self.keys, dtype=np.uint64))
        object.__setattr__(self, "keys", k)
        if self.prefix is not None:
            object.__setattr__(self, "prefix", np.unique(np.asarray(self.prefix, np.uint64)))

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask, True where a (prompt) key is in the set."""
        return _member(self.keys, keys)

    def seen_mask(self, df: pd.DataFrame) -> np.ndarray:
        """Rows of ``df`` whose prompt is seen: the same prompt, or a near-duplicate (the
        same first ``PREFIX_CHARS`` normalised characters), shape ``(len(df),)``."""
        seen = self.contains(prompt_keys(df))
        if self.prefix is not None and len(df):
            seen |= _member(self.prefix, prompt_keys(df, prefix=True))
        return seen

    def near_duplicates(self, df: pd.DataFrame) -> np.ndarray:
        """Rows only the prefix key catches (perturbed variants of a seen prompt)."""
        return self.seen_mask(df) & ~self.contains(prompt_keys(df))

    def overlap(self, df: pd.DataFrame) -> float:
        """Share of the rows of ``df`` whose prompt is seen (0.0 for an empty table)."""
        if len(df) == 0:
            return 0.0
        return float(self.seen_mask(df).mean())

    # -- storage (an artifact directory; safetensors + the meta.json entry) --------------------
    def describe(self) -> dict[str, Any]:
        out = {"file": SEEN_FILE, "n_prompts": len(self), "spec": dict(self.spec)}
        if self.prefix is not None:
            out["prefix_chars"] = PREFIX_CHARS
        return out

    def save(self, directory: Path) -> Path:
        from predictor.artifacts import save_arrays

        path = Path(directory) / SEEN_FILE
        arrays = {"keys": self.keys}
        if self.prefix is not None:
            arrays["prefix_keys"] = self.prefix
        save_arrays(path, arrays)
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
        arrays = load_arrays(Path(directory) / SEEN_FILE)
        arr, pre = arrays.get("keys"), arrays.get("prefix_keys")
        for name, a in (("keys", arr), ("prefix_keys", pre)):
            if (a is None and name == "keys") or (
                a is not None and (a.dtype != np.uint64 or a.ndim != 1)
            ):
                raise ArtifactError(
                    f"{directory / SEEN_FILE}: expected a 1-D uint64 tensor {name!r}; retrain "
                    "with `python train.py`"
                )
        prefix_chars = entry.get("prefix_chars")
        if pre is not None and prefix_chars != PREFIX_CHARS:
            raise ArtifactError(
                f"{directory}: its prefix keys read {prefix_chars} characters, this code "
                f"{PREFIX_CHARS}; retrain with `python train.py`"
            )
        return cls(arr, dict(entry.get("spec") or {}), pre)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``keys`` are in the sorted unique array ``sorted_keys``."""
    keys = np.asarray(keys, dtype=np.uint64)
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def seen_filter_reason(seen: SeenPrompts, df: pd.DataFrame, what: str) -> tuple[np.ndarray, str]:
    """(rows to keep, the filter's reason) for dropping seen prompts from ``df``; the reason
    counts the near-duplicates only the prefix key caught."""
    near = int(seen.near_duplicates(df).sum()) if seen.prefix is not None else 0
    keep = ~seen.seen_mask(df)
    note = (
        f"; {near:,} of them near-duplicates (same first {PREFIX_CHARS:,} normalised characters)"
        if near
        else ""
    )
    return keep, f"{what}{note}"


def seen_from_split(train: pd.DataFrame, val: pd.DataFrame, spec: Mapping[str, Any]) -> SeenPrompts:
    """The seen set of a split: every row of its train and validation parts."""
    return SeenPrompts(
        np.concatenate([prompt_keys(train), prompt_keys(val)]),
        dict(spec),
        np.concatenate([prompt_keys(train, prefix=True), prompt_keys(val, prefix=True)]),
    )


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
    prefixes = [s.prefix for s in sets]
    prefix = None if any(p is None for p in prefixes) else np.concatenate(prefixes)
    return SeenPrompts(np.concatenate([s.keys for s in sets]), sets[0].spec, prefix)


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
    n_req = len(requests)
    cache: dict[Path, float] = {}
    out: dict[str, float | None] = {}
    for name, d in predictor_dirs.items():
        if d is None:
            out[name] = None
            continue
        d = Path(d)
        if d not in cache:
            cache[d] = float(seen_in_artifact(d).seen_mask(requests).mean()) if n_req else 0.0
        share = cache[d]
        out[name] = share
        if share > 0 and not allow:
            raise TrainOverlapError(
                f"policy {name!r}: {share:.1%} of the {n_req:,} requests of workload "
                f"{workload!r} ({round(share * n_req):,}) use a prompt its predictor ({d}) "
                "trained or validated on, so its numbers would partly measure memorised "
                f"lengths. Draw the workload from unseen prompts (workload.unseen_by={d}; the "
                "default workloads do this via predictor_dir), or set allow_train_overlap=true "
                "to run anyway (train_overlap is then shown in every table of the run)"
            )
    return out
