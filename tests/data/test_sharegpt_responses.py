"""ShareGPT reply texts: shipped file, loader column, schema checks, build script parsing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data.build_sharegpt_responses import MAX_RESPONSE_TOKENS, first_responses, iter_complete
from data.loaders import load_source
from data.schema import TraceValidationError, validate_trace
from data.tokens import cl100k


def test_loader_carries_reply_text_matching_lengths() -> None:
    df = load_source("sharegpt")
    assert df["output_text"].dtype == "string"
    assert df["output_text"].notna().all()
    cut = df["output_text_truncated"].to_numpy(bool)
    assert cut.sum() <= 5  # the cap is rare (2 replies when built)
    sample = df[~cut].sample(300, random_state=0)
    counts = np.array(
        [len(x) for x in cl100k().encode_ordinary_batch(sample["output_text"].tolist())]
    )
    np.testing.assert_array_equal(counts, sample["output_tokens"].to_numpy())
    capped = df[cut]
    if len(capped):
        n = [len(cl100k().encode_ordinary(t)) for t in capped["output_text"]]
        assert max(n) <= MAX_RESPONSE_TOKENS + 2
        assert (capped["output_tokens"].to_numpy() > MAX_RESPONSE_TOKENS).all()


def _row(**kw: object) -> dict[str, object]:
    base = {
        "request_id": "a",
        "tenant": "t",
        "tier": "standard",
        "category": "chat",
        "source": "s",
        "model": "m",
        "prompt_tokens": 3,
        "output_tokens": 4,
    }
    return {**base, **kw}


def test_schema_output_text_optional_and_checked() -> None:
    ok = validate_trace(pd.DataFrame([_row(output_text="hi"), _row(request_id="b")]), "x")
    assert ok["output_text"].dtype == "string" and ok["output_text"].isna().tolist() == [
        False,
        True,
    ]
    assert "output_text" not in validate_trace(pd.DataFrame([_row()]), "x").columns
    with pytest.raises(TraceValidationError, match=r"output_text.*expected text"):
        validate_trace(
            pd.DataFrame([_row(output_text=5), _row(request_id="b", output_text="x")]), "f"
        )


def test_build_parses_cut_off_json_and_first_gpt_turns() -> None:
    convs = [
        {
            "id": "a",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r1"}],
        },
        {
            "id": "b",
            "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}],
        },
        {
            "id": "c",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r3"}],
        },
    ]
    text = json.dumps(convs)
    cut = text[: text.rindex('{"id": "c"') + 20]  # the wheel's JSON stops mid-element
    assert [c["id"] for c in iter_complete(text)] == ["a", "b", "c"]
    assert [c["id"] for c in iter_complete(cut)] == ["a", "b"]
    assert first_responses(text, {"a", "b", "c"}) == {"a": "r1", "c": "r3"}
    assert first_responses(cut, {"a", "c"}) == {"a": "r1"}
