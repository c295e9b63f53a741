"""data.holdout: prompt keys, seen sets stored in artifacts, train_overlap and the refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.holdout import (
    SEEN_FILE,
    SeenPrompts,
    TrainOverlapError,
    attach_to_artifact,
    normalise_prompt,
    prompt_keys,
    resolve_seen,
    seen_in_artifact,
    train_overlaps,
)


def _rows(prompts: list[object], sources: list[str] | None = None) -> pd.DataFrame:
    n = len(prompts)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "prompt_id": [f"p{i}" for i in range(n)],
            "source": sources or ["castillo"] * n,
            "prompt": pd.Series(prompts, dtype="string"),
        }
    )


def test_normalise_prompt_folds_case_width_and_whitespace() -> None:
    assert normalise_prompt("  Hello\n\tWORLD  ") == "hello world"
    assert normalise_prompt("ｆｕｌｌ width") == "full width"  # NFKC


def test_same_text_is_one_prompt_across_sources_and_ids() -> None:
    df = _rows(["Write a poem", "write  a POEM", "something else"], ["castillo", "sharegpt", "x"])
    k = prompt_keys(df)
    assert k.dtype == np.uint64 and k[0] == k[1] and k[0] != k[2]


def test_rows_without_text_are_keyed_by_source_and_prompt_id() -> None:
    df = _rows([None, None, ""], ["vidur", "vidur", "other"])
    df.loc[1, "prompt_id"] = "p0"  # the same id within one source: one prompt
    k = prompt_keys(df)
    assert k[0] == k[1] and k[0] != k[2]
    df2 = df.assign(source=["a", "b", "c"])  # the same id in another source: another prompt
    assert prompt_keys(df2)[0] != prompt_keys(df2)[1]


def test_seen_set_contains_and_overlap() -> None:
    seen = SeenPrompts(prompt_keys(_rows(["a", "b", "b"])))
    assert len(seen) == 2
    probe = _rows(["A", "c", "b ", "d"])
    assert seen.contains(prompt_keys(probe)).tolist() == [True, False, True, False]
    assert seen.overlap(probe) == pytest.approx(0.5)
    assert SeenPrompts(np.array([], dtype=np.uint64)).contains(prompt_keys(probe)).sum() == 0


def _artifact(tmp: Path, prompts: list[str]) -> Path:
    """A minimal verified artifact directory (meta.json with sha256 of every file)."""
    from predictor.artifacts import write_meta

    d = tmp / "art" / "length"
    d.mkdir(parents=True)
    (d / "model.txt").write_text("tree")
    write_meta(d, "lgbm_length", {"hyperparameters": {}})
    attach_to_artifact(d, SeenPrompts(prompt_keys(_rows(prompts)), {"split": {"kind": "x"}}))
    return tmp / "art"


def test_seen_set_roundtrips_through_a_verified_artifact(tmp_path: Path) -> None:
    from predictor.artifacts import ArtifactError, read_meta

    root = _artifact(tmp_path, ["alpha", "beta"])
    meta = read_meta(root / "length")  # sha256 of the new file is listed and checked
    assert SEEN_FILE in meta["files"] and meta["seen_prompts"]["n_prompts"] == 2
    seen = seen_in_artifact(root)
    assert seen.contains(prompt_keys(_rows(["ALPHA", "gamma"]))).tolist() == [True, False]
    assert seen.spec == {"split": {"kind": "x"}}
    (root / "length" / SEEN_FILE).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="sha256"):
        seen_in_artifact(root)


def test_an_artifact_without_a_seen_set_is_a_clear_error(tmp_path: Path) -> None:
    from predictor.artifacts import ArtifactError, write_meta

    d = tmp_path / "old" / "length"
    d.mkdir(parents=True)
    (d / "model.txt").write_text("tree")
    write_meta(d, "lgbm_length", {})
    with pytest.raises(ArtifactError, match="does not record which prompts"):
        seen_in_artifact(tmp_path / "old")
    meta = json.loads((d / "meta.json").read_text())
    assert "seen_prompts" not in meta


def test_train_overlaps_refuses_unless_allowed(tmp_path: Path) -> None:
    root = _artifact(tmp_path, ["alpha", "beta"])
    req = _rows(["alpha", "x", "y", "z"])
    with pytest.raises(TrainOverlapError, match=r"25\.0% of the 4 requests.*allow_train_overlap"):
        train_overlaps(req, {"fifo": None, "sjf": root}, workload="w")
    got = train_overlaps(req, {"fifo": None, "sjf": root}, allow=True)
    assert got == {"fifo": None, "sjf": pytest.approx(0.25)}
    clean = train_overlaps(_rows(["x", "y"]), {"sjf": root})
    assert clean == {"sjf": 0.0}


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_resolve_seen(tmp_path: Path) -> None:
    root = _artifact(tmp_path, ["alpha"])
    assert resolve_seen(None) is None and resolve_seen("none") is None
    assert len(resolve_seen(str(root))) == 1
    notes: list[str] = []
    fallback = resolve_seen(str(tmp_path / "not_trained"), notes)
    assert fallback is not None and len(fallback) > 10_000  # the default data split's prompts
    assert "no trained artifact" in notes[0]


def test_near_duplicates_share_a_prefix_key_and_count_as_seen(tmp_path: Path) -> None:
    from data.holdout import PREFIX_CHARS, seen_filter_reason, seen_from_split

    context = "Here is a long document. " * 60  # > PREFIX_CHARS normalised characters
    assert len(normalise_prompt(context)) > PREFIX_CHARS
    train = _rows([context + "Summarise it.", "short prompt"])
    variant = context + "Now list three open questions!"  # same first 1,000 characters
    probe = _rows([variant, "short prompt ", "Short prompt?", "unrelated"])
    assert (prompt_keys(probe) != prompt_keys(train)[0]).all()  # the exact key misses it
    seen = seen_from_split(train, train.iloc[:0], {"split": {}})
    assert seen.seen_mask(probe).tolist() == [True, True, False, False]
    assert seen.near_duplicates(probe).tolist() == [True, False, False, False]
    assert seen.overlap(probe) == pytest.approx(0.5)
    keep, why = seen_filter_reason(seen, probe, "pool")
    assert keep.tolist() == [False, False, True, True] and "1 of them near-duplicates" in why
    # short prompts: the prefix key is the prompt key (one key for both)
    short = _rows(["short prompt"])
    assert prompt_keys(short, prefix=True)[0] == prompt_keys(short)[0]
    # stored in the artifact and read back; train_overlaps counts the variant as seen
    d = tmp_path / "art" / "length"
    d.mkdir(parents=True)
    (d / "model.txt").write_text("tree")
    from predictor.artifacts import write_meta

    write_meta(d, "lgbm_length", {})
    attach_to_artifact(d, seen)
    back = seen_in_artifact(tmp_path / "art")
    assert back.prefix is not None and back.seen_mask(probe).tolist()[:2] == [True, True]
    got = train_overlaps(probe, {"sjf": tmp_path / "art"}, allow=True)
    assert got["sjf"] == pytest.approx(0.5)


def test_a_seen_set_without_prefix_keys_still_loads(tmp_path: Path) -> None:
    root = _artifact(tmp_path, ["alpha"])  # written with exact keys only (older artifacts)
    seen = seen_in_artifact(root)
    assert seen.prefix is None and seen.seen_mask(_rows(["Alpha", "b"])).tolist() == [True, False]
