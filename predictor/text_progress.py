"""Pure features of a request's *partial output text*: what it has written after t tokens.

The drift model (``predictor.lgbm.LightGBMDrift``) asks "how much is still to come?" while a
request decodes. Besides the admission features and the progress ``t`` it can read the text
generated so far, which says a lot about the rest: a numbered list at item 3 of the 10 the reply
announced, an open code fence, a closing phrase ("I hope this helps"), a reply that has just
ended a paragraph. Everything here looks at the first ``t`` tokens only (never beyond): the
output text is encoded once with cl100k (``data.tokens``) and its first ``t`` token ids are
decoded back to text (:func:`prefix_text`, :class:`PartialText`).

``text_features(texts, generated)`` returns float32 (n, len(TEXT_FEATURE_NAMES)); a row whose
text is ``None`` (the source has no output text, or the text is capped before ``t``) is all NaN,
which LightGBM routes down its missing-value branch, so one model serves every request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data.tokens import cl100k

# Line-level structure (multiline regexes over the partial text).
_BULLET = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)]|[a-zA-Z][.)])[ \t]+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^[ \t]*(\d{1,3})[.)][ \t]+\S", re.MULTILINE)
_HEADING = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]+\S.*|\*\*[^*\n]{1,80}\*\*:?[ \t]*|[^\n]{1,60}:)$", re.M
)
_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)(?:\s|$)")
_WORD = re.compile(r"\w+")
# "Here are 10 ways ...", "the following 5 steps": a count the reply announces for itself.
_NUM_WORDS = {
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
}
_ANNOUNCED = re.compile(
    r"\b(\d{1,2}|" + "|".join(_NUM_WORDS) + r")\s+(?:[a-z-]+\s+){0,3}?"
    r"(ways?|tips?|steps?|ideas?|points?|reasons?|examples?|things?|strategies|questions?|"
    r"options?|benefits?|names?|titles?|items?|suggestions?|methods?|factors?|key|main|"
    r"sections?|paragraphs?|sentences?|slides?|days?|chapters?|parts?|stages?|rules?|facts?)\b",
    re.IGNORECASE,
)
# Phrases that usually start the last paragraph of a chat reply.
_CLOSING = re.compile(
    r"\b(in conclusion|in summary|to summarize|to sum up|overall,|in short,|ultimately,|"
    r"i hope (?:this|that|these)|hope (?:this|that) helps|let me know|feel free|good luck|"
    r"don't hesitate|if you have any (?:other |further |more )?questions|by following these|"
    r"remember,|keep in mind)",
    re.IGNORECASE,
)
_FINAL_ITEM = re.compile(r"\b(finally|lastly|last but not least)\b", re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i apologi[sz]e|as an ai|as a language model|i (?:cannot|can't|am unable))",
    re.IGNORECASE,
)
_OPENING = re.compile(
    r"^\s*(sure|certainly|of course|absolutely|here (?:is|are)|here's|great|yes|no)\b",
    re.IGNORECASE,
)

TEXT_FEATURE_NAMES: tuple[str, ...] = (
    "tx_chars_per_token",  # characters / t: prose ~4, code and tables lower
    "tx_words_per_token",
    "tx_lines",
    "tx_paragraphs",  # blank-line separated blocks
    "tx_list_items",
    "tx_numbered_items",
    "tx_last_number",  # number of the last numbered item ("3." -> 3)
    "tx_announced",  # count the reply announced ("Here are 10 tips"), else NaN
    "tx_items_left",  # announced - last number (NaN unless both known)
    "tx_tokens_per_item",  # t / list items
    "tx_headings",
    "tx_code_fences",
    "tx_code_open",  # an odd number of ``` fences: inside a code block
    "tx_sentences",
    "tx_tokens_per_sentence",
    "tx_closing",  # closing phrases so far
    "tx_closing_tail",  # closing phrases in the last 300 characters
    "tx_closing_pos",  # position (0..1 of chars) of the last closing phrase, NaN if none
    "tx_final_item",  # "finally" / "lastly"
    "tx_refusal",
    "tx_opening",  # the reply starts with "Sure", "Here are", ...
    "tx_ends_sentence",  # the text so far ends at . ! ? (possibly + newline)
    "tx_ends_newline",
    "tx_ends_paragraph",  # ends with a blank line
    "tx_last_line_chars",  # characters since the last newline
    "tx_last_line_is_item",
    "tx_list_frac",  # fraction of non-empty lines that are list items
    "tx_questions",
    "tx_colon_end_lines",  # lines ending in ':' (a list or a block follows)
    "tx_code_lines",  # lines inside code blocks so far
    "tx_code_closed",  # a code block was opened and closed (an explanation usually follows)
    "tx_table_rows",  # markdown table rows ("| a | b |")
    "tx_chars_in_paragraph",  # characters since the last blank line (the current block)
    "tx_tokens_per_paragraph",  # t / paragraphs
    "tx_first_item_pos",  # where the first list item starts (0..1 of chars): intro length
    "tx_chars_since_item",  # characters since the last list item started
    "tx_item_chars",  # mean characters per list item (first item start -> now / items)
)


def encode(texts: Sequence[str | None]) -> list[list[int] | None]:
    """cl100k token ids of each text (``None`` stays ``None``); special strings are plain text."""
    idx = [i for i, t in enumerate(texts) if isinstance(t, str)]
    out: list[list[int] | None] = [None] * len(texts)
    if idx:
        ids = cl100k().encode_ordinary_batch([texts[i] for i in idx], num_threads=1)
        for i, tok in zip(idx, ids):
            out[i] = tok
    return out


def prefix_text(ids: Sequence[int] | None, t: int, complete: bool = True) -> str | None:
    """Text of the first ``t`` tokens, or ``None`` if unknown.

    ``complete``: ``ids`` are the whole output. A capped text (``complete=False``) with fewer
    than ``t`` tokens cannot say what the t-th token was: ``None``. A complete text shorter than
    ``t`` means the request already finished, which a running request cannot be: ``None`` too.
    """
    if ids is None or t < 0 or t > len(ids) or (not complete and t >= len(ids)):
        return None
    return cl100k().decode(list(ids[:t]))


@dataclass
class PartialText:
    """Incremental partial text of one request whose full output text is known (a replayed
    trace): ``at(t)`` decodes only the tokens added since the last call (cached)."""

    text: str | None
    complete: bool = True
    _ids: list[int] | None = field(default=None, repr=False)
    _t: int = field(default=0, repr=False)
    _prefix: bytes = field(default=b"", repr=False)

    def at(self, t: int) -> str | None:
        if self.text is None:
            return None
        if self._ids is None:
            self._ids = cl100k().encode_ordinary(self.text)
        t = int(t)
        if t < 0 or t > len(self._ids) or (not self.complete and t >= len(self._ids)):
            return None
        enc = cl100k()
        if t < self._t:  # rewound (preempted and recomputed): start again
            self._t, self._prefix = 0, b""
        if t > self._t:
            self._prefix += enc.decode_bytes(self._ids[self._t : t])
            self._t = t
        return self._prefix.decode("utf-8", errors="replace")


def _announced(head: str) -> float:
    m = _ANNOUNCED.search(head)
    if not m:
        return np.nan
    n = m.group(1).lower()
    v = float(_NUM_WORDS[n]) if n in _NUM_WORDS else float(n)
    return v if 2 <= v <= 50 else np.nan


def text_row(text: str, t: float) -> list[float]:
    """Features of one partial text after ``t`` tokens (``len(TEXT_FEATURE_NAMES)`` floats)."""
    t = max(float(t), 1.0)
    n = len(text)
    lines = text.split("\n")
    nonempty = [ln for ln in lines if ln.strip()]
    items_at = [m.start() for m in _BULLET.finditer(text)]
    items = items_at
    nums = [int(x) for x in _NUMBERED.findall(text)]
    last_num = float(nums[-1]) if nums else 0.0
    announced = _announced(text[:400])
    sentences = len(_SENTENCE_END.findall(text))
    fences = text.count("```")
    closings = [m.start() for m in _CLOSING.finditer(text)]
    tail = text[-300:]
    stripped = text.rstrip(" \t")
    last_line = lines[-1] if lines else ""
    return [
        n / t,
        len(_WORD.findall(text)) / t,
        float(len(lines)),
        float(len([b for b in re.split(r"\n\s*\n", text) if b.strip()])),
        float(len(items)),
        float(len(nums)),
        last_num,
        announced,
        announced - last_num if nums and not np.isnan(announced) else np.nan,
        t / len(items) if items else np.nan,
        float(len(_HEADING.findall(text))),
        float(fences),
        float(fences % 2),
        float(sentences),
        t / sentences if sentences else np.nan,
        float(len(closings)),
        float(len(_CLOSING.findall(tail))),
        closings[-1] / max(n, 1) if closings else np.nan,
        float(len(_FINAL_ITEM.findall(text))),
        float(bool(_REFUSAL.search(text[:300]))),
        float(bool(_OPENING.match(text))),
        float(bool(re.search(r"[.!?][\"')\]]*\s*$", stripped))),
        float(stripped.endswith("\n")),
        float(bool(re.search(r"\n[ \t]*\n[ \t]*$", text))),
        float(len(last_line)),
        float(bool(_BULLET.match(last_line))),
        len([ln for ln in nonempty if _BULLET.match(ln)]) / max(len(nonempty), 1),
        float(text.count("?")),
        float(sum(1 for ln in nonempty if ln.rstrip().endswith(":"))),
        *_block_features(text, lines, items_at, t),
    ]


def _block_features(text: str, lines: list[str], items_at: list[int], t: float) -> list[float]:
    """Code, table, paragraph and list-position cues (see TEXT_FEATURE_NAMES)."""
    n = max(len(text), 1)
    in_code, code_lines = False, 0
    for ln in lines:
        if ln.lstrip().startswith("```"):
            in_code = not in_code
        elif in_code:
            code_lines += 1
    pars = max(len(re.split(r"\n\s*\n", text.strip())), 1)
    last_break = max(text.rfind("\n\n"), -1)
    first = items_at[0] / n if items_at else np.nan
    since = float(len(text) - items_at[-1]) if items_at else np.nan
    per_item = (len(text) - items_at[0]) / len(items_at) if items_at else np.nan
    return [
        float(code_lines),
        float(text.count("```") >= 2),
        float(sum(1 for ln in lines if ln.lstrip().startswith("|"))),
        float(len(text) - last_break - 1 if last_break >= 0 else len(text)),
        t / pars,
        first,
        since,
        per_item,
    ]


def text_features(texts: Sequence[str | None], generated: np.ndarray) -> np.ndarray:
    """float32 (n, len(TEXT_FEATURE_NAMES)); rows whose text is ``None`` are NaN."""
    g = np.asarray(generated, dtype=np.float64).reshape(-1)
    if len(texts) != g.size:
        raise ValueError(f"texts ({len(texts)}) and generated ({g.size}) must have the same length")
    out = np.full((g.size, len(TEXT_FEATURE_NAMES)), np.nan, dtype=np.float32)
    for i, (s, t) in enumerate(zip(texts, g)):
        if isinstance(s, str):
            out[i] = text_row(s, t)
    return out


# Word and punctuation-run tokens: "1." "```" "-" "**" carry structure, words carry topic.
_NGRAM_TOKEN = r"(?u)\b\w+\b|[^\w\s]+"
TAIL_CHARS = 200  # the "what is happening now" window of the partial text


def _hashed(texts: Sequence[str], n_features: int) -> Any:
    """Hashed 1-2 grams of the whole partial text and of its tail, each l2-normalised:
    sparse (n, 2 * n_features). Stateless (no vocabulary to save)."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import HashingVectorizer

    hv = HashingVectorizer(
        n_features=n_features,
        ngram_range=(1, 2),
        token_pattern=_NGRAM_TOKEN,
        alternate_sign=False,
        norm="l2",
        dtype=np.float32,
    )
    whole = hv.transform(texts)
    tail = hv.transform([s[-TAIL_CHARS:] for s in texts])
    return sp.hstack([whole, tail], format="csr")


@dataclass
class NgramScore:
    """Ridge regressions of log remaining tokens on hashed n-grams of the partial text.

    One supervised column for the drift model (``tx_ngram_score``), the way the admission
    featurizer's ``text_score`` summarises the prompt. One ridge per progress bucket
    (``t_edges``): what a phrase says about the rest depends on how far the reply is (out-of-fold
    correlation with log remaining on ShareGPT, one model vs per bucket: 0.43 vs 0.48 for
    64 <= t < 256, 0.31 vs 0.37 above). Training rows get *out-of-fold* scores (folds by trace,
    so a trace's other progress rows never score it); state: ``coef_`` (buckets, 2 *
    n_features) float32 and ``intercept_`` (buckets,).
    """

    n_features: int = 2**15
    alpha: float = 10.0  # OOF corr with log remaining 0.64 at 3 and 10; 10 fits faster
    folds: int = 3
    t_edges: tuple[int, ...] = (64, 256)
    coef_: np.ndarray | None = field(default=None, repr=False)
    intercept_: np.ndarray | None = field(default=None, repr=False)

    def _fit_one(self, X: Any, y: np.ndarray) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import Ridge

        if len(y) == 0:
            return np.zeros(X.shape[1], np.float32), 0.0
        m = Ridge(alpha=self.alpha, solver="sparse_cg", max_iter=200, tol=1e-4).fit(X, y)
        return np.asarray(m.coef_, dtype=np.float32), float(m.intercept_)

    def bucket(self, generated: np.ndarray) -> np.ndarray:
        return np.digitize(np.asarray(generated, dtype=np.float64), self.t_edges)

    def fit_oof(
        self, texts: Sequence[str], y: np.ndarray, groups: np.ndarray, generated: np.ndarray
    ) -> np.ndarray:
        """Fit on all rows; return out-of-fold scores of the same rows (n,)."""
        y = np.asarray(y, dtype=np.float64)
        X = _hashed(texts, self.n_features)
        b = self.bucket(generated)
        fold = (np.asarray(groups, dtype=np.int64) * 2654435761 % 2**32) % self.folds
        nb = len(self.t_edges) + 1
        self.coef_ = np.zeros((nb, X.shape[1]), np.float32)
        self.intercept_ = np.zeros(nb, np.float64)
        oof = np.zeros(len(y))
        for k in range(nb):
            rows = np.flatnonzero(b == k)
            if not rows.size:
                continue
            Xk, yk, fk = X[rows], y[rows], fold[rows]
            for f in range(self.folds):
                hold = fk == f
                if hold.all() or not hold.any():
                    continue
                c, i = self._fit_one(Xk[~hold], yk[~hold])
                oof[rows[hold]] = Xk[hold] @ c + i
            self.coef_[k], self.intercept_[k] = self._fit_one(Xk, yk)
            if np.unique(fk).size < 2:  # a single fold: no held-out rows, score in-sample
                oof[rows] = Xk @ self.coef_[k] + self.intercept_[k]
        return oof

    def score(self, texts: Sequence[str], generated: np.ndarray) -> np.ndarray:
        if self.coef_ is None or self.intercept_ is None:
            raise ValueError("NgramScore is not fitted")
        if not len(texts):
            return np.zeros(0)
        X = _hashed(texts, self.n_features)
        b = self.bucket(generated)
        out = np.zeros(len(texts))
        for k in np.unique(b):
            rows = np.flatnonzero(b == k)
            out[rows] = X[rows] @ self.coef_[k] + self.intercept_[k]
        return out
