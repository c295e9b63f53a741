"""Lexical cues of one prompt: pure functions of its text, no fitted state.

:func:`lexical_features` gives ``LEXICAL_NAMES`` (length, line and question counts, digit and
capital fractions, a requested length such as "500 words", the paper's keyword category and
counts of cue words chosen for output length) for :class:`predictor.features.Featurizer`.
The cue counts take exact fast paths (anchors, first-character lookaheads) that
tests/predictor/test_features_fast.py checks against the plain regex counts.
"""

from __future__ import annotations

import re

import numpy as np

from predictor.paper import classify_category

MAX_PROMPT_CHARS = 8000  # text features read at most this many characters of a prompt
PAPER_CATEGORIES = ("short_qa", "summary", "technical", "report")

# Lexical cue -> regex (case-insensitive). Chosen for output length: explicit length requests,
# task verbs that produce long outputs (write/explain/code) or short ones (classify/yes-no).
_CUES: dict[str, str] = {
    "cue_write": r"\b(write|compose|draft|generate|create)\b",
    "cue_explain": r"\b(explain|describe|discuss|elaborate|why|how)\b",
    "cue_list": r"\b(list|enumerate|steps?|bullet|points?|ideas|examples?)\b",
    "cue_short": r"\b(brief(ly)?|short|concise|one (word|sentence|line)|single|yes or no|"
    r"true or false|in a word)\b",
    "cue_classify": r"\b(classify|categori[sz]e|which of|choose|select|identify|extract|"
    r"is it|does it|rate)\b",
    "cue_rewrite": r"\b(rewrite|rephrase|paraphrase|translate|correct|edit|fix the grammar)\b",
    "cue_summary": r"\b(summar\w*|tl;?dr|overview)\b",
    "cue_long": r"\b(essay|article|story|report|blog|detailed|comprehensive|in[- ]depth|"
    r"thorough|outline|plan|guide|tutorial|script)\b",
    "cue_code": r"(```|\bdef |\bclass |\bfunction\b|\bpython\b|\bjava(script)?\b|\bsql\b|"
    r"\bc\+\+|\bcode\b|\bimplement\w*\b|\bprogram\b|#include|import )",
    "cue_math": r"(\d\s*[-+*/^=]\s*\d|\bsolve\b|\bcalculate\b|\bequation\b|\bprove\b)",
    "cue_poem": r"\b(poem|haiku|song|lyrics|rap|limerick)\b",
    "cue_question_word": r"^\s*(what|who|when|where|which|is|are|can|do|does)\b",
    "cue_dialog": r"\b(you are|act as|pretend|role ?play|i want you to)\b",
}
_CUE_RES = {k: re.compile(v, re.IGNORECASE | re.MULTILINE) for k, v in _CUES.items()}
_WORD_COUNT_RE = re.compile(
    r"\b(\d{1,5})\s*(?:-|\s)?\s*(words?|sentences?|paragraphs?|lines?|"
    r"bullet|points?|items?|examples?|tokens?|characters?)\b",
    re.IGNORECASE,
)
_UNIT_WORDS = {
    "word": 1.0,
    "token": 0.75,
    "character": 0.2,
    "sentence": 20.0,
    "line": 12.0,
    "paragraph": 90.0,
    "bullet": 15.0,
    "point": 15.0,
    "item": 15.0,
    "example": 30.0,
}

LEXICAL_NAMES: tuple[str, ...] = (
    "n_chars_log",
    "n_words_log",
    "n_lines_log",
    "n_questions",
    "frac_digits",
    "frac_upper",
    "has_code_block",
    "requested_words_log",
    "paper_category",
    *_CUES,
)


# Two exact speed-ups of the cue counts (each cue is still ``len(regex.findall(text))``):
# 1. Anchors: literal lowercase pieces such that every match of the cue contains one of them
#    (cue_math's digit-operator-digit branch is checked apart). A text whose lowercase holds
#    none has a count of 0 without running the regex (a substring test is ~50x cheaper).
#    Sound unless the text holds one of ``_CASE_TWINS``, the only non-ASCII characters that
#    IGNORECASE-match an ASCII letter (then every regex runs).
# 2. First characters: prefixing a cue with the lookahead (?=[...]) of the characters its
#    matches can start with (\\d: any decimal digit) never changes what it matches but lets
#    the engine skip the other positions without trying all alternatives (5x on code
#    prompts). ASCII prompts are matched lowercased with case-sensitive patterns (the same
#    matches as IGNORECASE on ASCII text, and faster); others keep IGNORECASE.
# tests/predictor/test_features_fast.py checks both against the plain ``_CUE_RES`` counts.
_CUE_ANCHORS: dict[str, tuple[str, ...]] = {
    "cue_write": ("write", "compose", "draft", "generate", "create"),
    "cue_explain": ("explain", "describe", "discuss", "elaborate", "why", "how"),
    "cue_list": ("list", "enumerate", "step", "bullet", "point", "ideas", "example"),
    "cue_short": (
        "brief",
        "short",
        "concise",
        "one ",
        "single",
        "yes or no",
        "true or false",
        "in a word",
    ),
    "cue_classify": (
        "classify",
        "categori",
        "which of",
        "choose",
        "select",
        "identify",
        "extract",
        "is it",
        "does it",
        "rate",
    ),
    "cue_rewrite": (
        "rewrite",
        "rephrase",
        "paraphrase",
        "translate",
        "correct",
        "edit",
        "fix the grammar",
    ),
    "cue_summary": ("summar", "tl;dr", "tldr", "overview"),
    "cue_long": (
        "essay",
        "article",
        "story",
        "report",
        "blog",
        "detailed",
        "comprehensive",
        "in-depth",
        "in depth",
        "thorough",
        "outline",
        "plan",
        "guide",
        "tutorial",
        "script",
    ),
    "cue_code": (
        "```",
        "def ",
        "class ",
        "function",
        "python",
        "java",
        "sql",
        "c++",
        "code",
        "implement",
        "program",
        "#include",
        "import ",
    ),
    "cue_math": ("solve", "calculate", "equation", "prove"),
    "cue_poem": ("poem", "haiku", "song", "lyrics", "rap", "limerick"),
    "cue_question_word": (),  # empty: always run (anchored at line starts, already cheap)
    "cue_dialog": ("you are", "act as", "pretend", "role", "i want you to"),
}
_CUE_FIRST: dict[str, str] = {
    "cue_write": "wcdg",
    "cue_explain": "edwh",
    "cue_list": "lesbpi",
    "cue_short": "bscoyti",
    "cue_classify": "cwsiedr",
    "cue_rewrite": "rptcef",
    "cue_summary": "sto",
    "cue_long": "easrbdcitopg",
    "cue_code": "`dcfpjsi#",
    "cue_math": "\\dscep",
    "cue_poem": "phslr",
    "cue_question_word": "",  # starts with ^\\s*: no lookahead
    "cue_dialog": "yapri",
}
_CASE_TWINS = "\u0130\u0131\u017f\u212a"  # İ ı ſ K: IGNORECASE-match i, i, s, k
_MATH_OPERATORS = "-+*/^="


def _fast_cue(name: str, flags: int) -> re.Pattern[str]:
    first = _CUE_FIRST[name]
    return re.compile((f"(?=[{first}])" if first else "") + _CUES[name], flags)


# (name, anchors, lowercase-ASCII pattern, IGNORECASE pattern) in _CUES order
_CUE_PLAN = [
    (k, _CUE_ANCHORS[k], _fast_cue(k, re.MULTILINE), _fast_cue(k, re.IGNORECASE | re.MULTILINE))
    for k in _CUES
]
_ASCII_DIGITS = b"0123456789"
_ASCII_UPPER = bytes(range(ord("A"), ord("Z") + 1))


def _cue_counts(text: str, has_digit: bool = True) -> list[float]:
    """``len(findall)`` of every cue regex in ``text``, in ``_CUES`` order.

    ``has_digit``: False only if ``text`` has no ``str.isdigit`` character (skips cue_math's
    digit branch)."""
    is_ascii = text.isascii()
    low = text.lower()
    use_anchors = is_ascii or not any(c in text for c in _CASE_TWINS)
    math_ops = has_digit and any(o in text for o in _MATH_OPERATORS)
    out = []
    for name, anchors, r_low, r_any in _CUE_PLAN:
        if (
            use_anchors
            and anchors
            and not any(a in low for a in anchors)
            and not (math_ops and name == "cue_math")
        ):
            out.append(0.0)
        elif is_ascii:
            out.append(float(len(r_low.findall(low))))
        else:
            out.append(float(len(r_any.findall(text))))
    return out


def _digit_upper_counts(text: str) -> tuple[int, int]:
    """(# chars with ``str.isdigit``, # with ``str.isupper``); bytes.translate for ASCII."""
    if text.isascii():
        b = text.encode("ascii")
        return len(b) - len(b.translate(None, _ASCII_DIGITS)), len(b) - len(
            b.translate(None, _ASCII_UPPER)
        )
    return sum(map(str.isdigit, text)), sum(map(str.isupper, text))


def lexical_features(prompt: str | None) -> np.ndarray:
    """Pure lexical cues of one prompt: float64 (len(LEXICAL_NAMES),); NaNs when no prompt."""
    if prompt is None or not isinstance(prompt, str):
        return np.full(len(LEXICAL_NAMES), np.nan)
    text = prompt[:MAX_PROMPT_CHARS]
    n = max(len(text), 1)
    n_digit, n_upper = _digit_upper_counts(text)
    requested = np.nan
    # \d (Unicode decimal) implies str.isdigit: no digit, no requested length
    m = _WORD_COUNT_RE.search(text) if n_digit else None
    if m:
        unit = m.group(2).lower().rstrip("s")
        requested = np.log1p(float(m.group(1)) * _UNIT_WORDS.get(unit, 1.0))
    out = [
        np.log1p(len(prompt)),
        np.log1p(len(text.split())),
        np.log1p(text.count("\n")),
        float(text.count("?")),
        n_digit / n,
        n_upper / n,
        float("```" in text),
        requested,
        float(PAPER_CATEGORIES.index(classify_category(text))),
    ]
    out.extend(_cue_counts(text, n_digit > 0))
    return np.asarray(out, dtype=np.float64)
