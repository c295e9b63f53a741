import gzip
import json

import numpy as np

from data.loaders._common import RAW_DIR
from data.tokens import cl100k, count_one, count_tokens


def test_known_counts():
    # hand-checked against tiktoken's cl100k_base: "hello world" -> [15339, 1917]
    assert cl100k().encode_ordinary("hello world") == [15339, 1917]
    np.testing.assert_array_equal(count_tokens(["hello world", "", None]), [2, 0, 0])
    assert count_tokens("hello world").tolist() == [2]
    assert count_one("hello world") == 2
    assert count_tokens([]).dtype == np.int64


def test_special_token_text_is_ordinary_text():
    # user text may contain "<|endoftext|>": it is counted as text, never raises
    assert count_tokens(["<|endoftext|>"])[0] > 1


def test_encoding_is_cached():
    assert cl100k() is cl100k()


def test_matches_published_cl100k_counts():
    # the shipped ShareGPT file has prompt counts computed with cl100k: we reproduce them
    rows = []
    with gzip.open(RAW_DIR / "sharegpt_v3/sharegpt_v3_first_turn.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if not r["prompt_truncated"]:
                rows.append(r)
            if len(rows) == 200:
                break
    got = count_tokens([r["prompt"] for r in rows])
    np.testing.assert_array_equal(got, [r["prompt_tokens_cl100k"] for r in rows])
