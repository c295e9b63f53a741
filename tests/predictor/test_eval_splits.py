"""The off-distribution evaluation splits: unseen-prompt rows and held-out source/model."""

from __future__ import annotations

import pandas as pd
import pytest

from predictor.eval_splits import (
    held_out_split,
    normalise_prompt,
    unseen_prompt_rows,
    workload_mask,
    workload_mix,
)


def _rows(specs: list[tuple[str, str, str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(specs))],
            "source": [s[0] for s in specs],
            "model": [s[1] for s in specs],
            "category": [s[2] for s in specs],
            "prompt": [s[3] for s in specs],
            "output_tokens": 10,
        }
    )


MIX = [
    {"source": "sharegpt", "models": None, "categories": None},
    {"source": "castillo", "models": ["llama"], "categories": ["code"]},
]


def test_normalise_collapses_whitespace_and_case() -> None:
    assert normalise_prompt("  Hello\n\tWORLD  ") == "hello world"
    assert normalise_prompt(None) is None and normalise_prompt(float("nan")) is None


def test_workload_mask_reads_sources_models_and_categories() -> None:
    df = _rows(
        [
            ("sharegpt", "chatgpt", "chat", "a"),
            ("castillo", "llama", "code", "b"),
            ("castillo", "llama", "chat", "c"),  # category not drawn
            ("castillo", "qwen", "code", "d"),  # model not drawn
            ("alpaca_eval", "x", "y", "e"),  # source not drawn
        ]
    )
    assert workload_mask(df, MIX).tolist() == [True, True, False, False, False]


def test_unseen_prompt_rows_drop_seen_text_and_keep_textless_extra() -> None:
    test = _rows(
        [
            ("sharegpt", "chatgpt", "chat", "What is  LOVE?"),  # seen (normalised)
            ("sharegpt", "chatgpt", "chat", "a new prompt"),
            ("castillo", "qwen", "code", "unseen but not drawn"),
        ]
    )
    seen = _rows([("castillo", "llama", "code", "what is love?")])
    extra = _rows([("vidur_arxiv", "human_reference", "summary", None)])
    mix = [*MIX, {"source": "vidur_arxiv", "models": None, "categories": None}]
    out = unseen_prompt_rows(test, seen, extra, mix)
    assert out["prompt"].tolist()[0] == "a new prompt"
    assert out["source"].tolist() == ["sharegpt", "vidur_arxiv"]


def test_default_workload_mix_is_read() -> None:
    mix = workload_mix()
    sources = {m["source"] for m in mix}
    assert {"sharegpt", "alpaca_eval", "castillo", "vidur_arxiv"} <= sources


def test_held_out_split_removes_the_value_from_train_and_val() -> None:
    tr = _rows([("a", "m1", "c", "p1"), ("b", "m2", "c", "p2")])
    te = _rows([("a", "m1", "c", "p3"), ("b", "m2", "c", "p4")])
    sp = held_out_split(tr, tr, te, "model", "m2")
    assert sp.name == "lomo:m2" and sp.train["model"].tolist() == ["m1"]
    assert sp.test["prompt"].tolist() == ["p4"]
    with pytest.raises(ValueError, match="no rows in the grouped test"):
        held_out_split(tr, tr, te, "source", "zzz")
