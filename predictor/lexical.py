"""Lexical cues of one prompt: pure functions of its text, no fitted state.

:func:`lexical_features` gives ``LEXICAL_NAMES`` (length, line and question counts, digit and
capital fractions, a requested length such as "500 words", the paper's keyword category and
counts of cue words chosen for output length) for :class:`predictor.features.Featurizer`.
The cue counts take exact fast paths (anchors, first-character lookaheads) that
tests/predictor/test_features_fast.py checks against the plain regex counts.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

import numpy as np

from predictor.paper import classify_lowered

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

# sklearn's CountVectorizer default ``token_pattern``: on a str it matches exactly the maximal
# runs of \w (Unicode word characters) of length >= 2, so the same tokens serve the TF-IDF
# counts (:mod:`predictor.text_counts`) and the whole-word cue counts below.
TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")


class PromptScan(NamedTuple):
    """What every text feature of one prompt reads, computed once per prompt."""

    text: str  # prompt[:MAX_PROMPT_CHARS]
    low: str  # text.lower() (sklearn's preprocessing; the cue anchors)
    tokens: list[str]  # TOKEN_RE.findall(low): CountVectorizer's tokens, in order
    words: Counter[str]  # token -> count


def scan_prompt(prompt: str) -> PromptScan:
    text = prompt[:MAX_PROMPT_CHARS]
    low = text.lower()
    tokens = TOKEN_RE.findall(low)
    return PromptScan(text, low, tokens, Counter(tokens))


# Cue counts from the tokens (exact; tests/predictor/test_features_scan.py checks them against
# the plain regex counts). On a text without ``_CASE_TWINS`` an IGNORECASE match of these
# ASCII patterns is a case-sensitive match in its lowercase (lowercasing keeps every other
# character's length, \w, \s and \d class, and maps no other character to ASCII: checked for
# every code point by the test). A match of \b(w1|w2|...)\b whose alternatives are words of
# \w characters is then one whole token (a maximal \w run) equal to one of them, and matches
# never overlap: the count of such alternatives is the sum of those tokens' counts
# (``summar\w*``, ``implement\w*``: tokens starting with the prefix). The other alternatives
# (phrases, punctuation) form ``rest``, counted by its own regex: no ``rest`` match starts at
# or covers the start of a token that is a word match (the phrases' tokens are not the cue's
# words), so the two kinds never compete for characters and the counts add up. One
# exception, checked at run time: cue_code's "import " has no \b and could end inside an
# ``implement\w*`` token; a text with such a token takes the whole regex. ``rest`` runs only
# if the text holds every token of one of ``keys`` (the whole tokens each match of that
# alternative holds: "one (word|line)" is the two keys "one word" and "one line") or holds
# one of ``anchors``. cue_math's digit-operator-digit branch holds no letters and runs only
# when the text has a digit and an operator.
class _TokenCue(NamedTuple):
    words: frozenset[str]  # whole-token alternatives
    prefixes: tuple[str, ...]  # alternatives prefix\w*: tokens starting with one
    rest: re.Pattern[str] | None  # the other alternatives, on the lowercase text
    keys: tuple[frozenset[str], ...]  # per alternative: the tokens every match of it holds
    anchors: tuple[str, ...]  # or: substrings one of which each ``rest`` match holds


def _token_cue(words: str, rest: str | None = None, keys: str = "", anchors=(), prefixes=()):
    """``keys``: alternatives separated by ";", each the tokens its matches all hold."""
    alts = tuple(frozenset(alt.split()) for alt in keys.split(";") if alt)
    pattern = None if rest is None else re.compile(rest, re.MULTILINE)
    return _TokenCue(frozenset(words.split()), prefixes, pattern, alts, anchors)


_TOKEN_CUES: dict[str, _TokenCue] = {
    "cue_write": _token_cue("write compose draft generate create"),
    "cue_explain": _token_cue("explain describe discuss elaborate why how"),
    "cue_list": _token_cue("list enumerate step steps bullet point points ideas example examples"),
    "cue_short": _token_cue(
        "brief briefly short concise single",
        r"(?=[oyti])\b(one (word|sentence|line)|yes or no|true or false|in a word)\b",
        "one word; one sentence; one line; yes or no; true or false; in word",
    ),
    "cue_classify": _token_cue(
        "classify categorise categorize choose select identify extract rate",
        r"(?=[wid])\b(which of|is it|does it)\b",
        "which of; is it; does it",
    ),
    "cue_rewrite": _token_cue(
        "rewrite rephrase paraphrase translate correct edit",
        r"(?=f)\b(fix the grammar)\b",
        "fix the grammar",
    ),
    "cue_summary": _token_cue("tldr overview", r"(?=t)\b(tl;dr)\b", "tl dr", (), ("summar",)),
    "cue_long": _token_cue(
        "essay article story report blog detailed comprehensive thorough outline plan guide "
        "tutorial script",
        r"(?=i)\b(in[- ]depth)\b",
        "in depth",
    ),
    "cue_code": _token_cue(
        "function python java javascript sql code program",
        r"(?=[`dci#])(```|\bdef |\bclass |\bc\+\+|#include|import )",
        anchors=("```", "def ", "class ", "c++", "#include", "import "),
        prefixes=("implement",),
    ),
    "cue_math": _token_cue(
        "solve calculate equation prove", r"\d\s*[-+*/^=]\s*\d", anchors=tuple(_MATH_OPERATORS)
    ),
    "cue_poem": _token_cue("poem haiku song lyrics rap limerick"),
    "cue_question_word": _token_cue(
        "", _CUES["cue_question_word"], "what; who; when; where; which; is; are; can; do; does"
    ),
    "cue_dialog": _token_cue(
        "pretend roleplay",
        r"(?=[yari])\b(you are|act as|role play|i want you to)\b",
        "you are; act as; role play; want you to",
    ),
}
_CUE_OF_WORD: dict[str, int] = {
    w: i for i, cue in enumerate(_TOKEN_CUES.values()) for w in cue.words
}
_CODE = list(_TOKEN_CUES).index("cue_code")
_UNIT_STEMS = tuple(sorted(_UNIT_WORDS))  # every _WORD_COUNT_RE match holds one


def _rest_runs(cue: _TokenCue, low: str, words: Counter[str], has_digit: bool) -> bool:
    """Whether ``cue.rest`` can match ``low`` (False only if it provably cannot)."""
    if cue.anchors:
        if not any(a in low for a in cue.anchors):
            return False
        return has_digit or cue.anchors[0] not in _MATH_OPERATORS
    have = words.keys()
    return any(have >= alt for alt in cue.keys)


def _token_cue_counts(low: str, words: Counter[str], has_digit: bool) -> list[float] | None:
    r"""``_cue_counts`` from ``low`` and its token counts; None where cue_code needs its regex
    (an ``implement\w*`` token ending in "import")."""
    out = [0] * len(_TOKEN_CUES)
    for w in words.keys() & _CUE_OF_WORD.keys():
        out[_CUE_OF_WORD[w]] += words[w]
    for i, cue in enumerate(_TOKEN_CUES.values()):
        for pre in cue.prefixes:
            if pre in low:
                hits = [(w, c) for w, c in words.items() if w.startswith(pre)]
                if i == _CODE and any(w.endswith("import") for w, _ in hits):
                    return None
                out[i] += sum(c for _, c in hits)
        if cue.rest is not None and _rest_runs(cue, low, words, has_digit):
            out[i] += len(cue.rest.findall(low))
    return [float(c) for c in out]


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


def lexical_features(prompt: str | None, scan: PromptScan | None = None) -> np.ndarray:
    """Pure lexical cues of one prompt: float64 (len(LEXICAL_NAMES),); NaNs when no prompt.

    ``scan``: ``scan_prompt(prompt)`` when the caller has it already (the featurizer shares
    it with the TF-IDF counts); computed here otherwise."""
    if prompt is None or not isinstance(prompt, str):
        return np.full(len(LEXICAL_NAMES), np.nan)
    text, low, _, words = scan if scan is not None else scan_prompt(prompt)
    n = max(len(text), 1)
    n_digit, n_upper = _digit_upper_counts(text)
    sound = text.isascii() or not any(c in text for c in _CASE_TWINS)  # see _TokenCue
    requested = np.nan
    # \d (Unicode decimal) implies str.isdigit: no digit, no requested length; every match
    # holds a unit word (the IGNORECASE regex runs only when the lowercase text has one)
    unit = n_digit and (not sound or any(u in low for u in _UNIT_STEMS))
    m = _WORD_COUNT_RE.search(text) if unit else None
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
        float(PAPER_CATEGORIES.index(classify_lowered(low))),
    ]
    cues = _token_cue_counts(low, words, n_digit > 0) if sound else None
    out.extend(cues if cues is not None else _cue_counts(text, n_digit > 0))
    return np.asarray(out, dtype=np.float64)
