"""The DriftSched paper's keyword classifier and EMA token-budget estimator, reproduced exactly.

The paper classifies each prompt with keywords into one of four categories, each with a base
token budget (``data.paper_templates.BASE_BUDGET``), and estimates a request's output length as

    estimate = base[c] x bias[c] x tier_factor[tier] x min(1.5, 1 + input_tokens / 1000)

with one bias per category starting at 1.0 and, after each completion of category c,

    bias[c] <- 0.9 * bias[c] + 0.1 * clamp(actual / base[c], 0.25, 3.0).

``input_tokens`` is counted by whitespace ``str.split()`` (the paper's code) or by the cl100k
tokenizer (the ``counting="tokenizer"`` variant). ``correction=False`` keeps every bias at 1.0
for the paper's with/without comparison. The estimator is usable one completion at a time
(``estimate_one``/``update_one``) and batched (``estimate``/``update``; a batch of completions is
applied in the given order, so the batched and online paths give identical biases).

The learned models' online recalibrator lives in :mod:`predictor.online` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from data.paper_templates import BASE_BUDGET, DEFAULT_CATEGORY, KEYWORDS
from predictor.online import OnlineRecalibrator

__all__ = [
    "BIAS_CLAMP",
    "EMA_DECAY",
    "TIER_FACTOR",
    "OnlineRecalibrator",
    "PaperEMA",
    "classify_categories",
    "classify_category",
    "classify_lowered",
    "count_input_tokens",
    "length_factor",
]

TIER_FACTOR: dict[str, float] = {"premium": 1.2, "standard": 1.0, "batch": 0.8}
EMA_DECAY = 0.9  # weight of the old bias; the new observation gets 1 - EMA_DECAY = 0.1
BIAS_CLAMP: tuple[float, float] = (0.25, 3.0)  # bounds of actual / base before it enters the EMA
COUNTINGS = ("whitespace", "tokenizer")


def classify_category(prompt: str | None) -> str:
    """The paper's keyword classifier: first category (most specific first) with a keyword hit."""
    if prompt is None or not isinstance(prompt, str):
        return DEFAULT_CATEGORY
    return classify_lowered(prompt.lower())


def classify_lowered(low: str) -> str:
    """:func:`classify_category` of a prompt given as ``prompt.lower()``."""
    for category, words in KEYWORDS:
        if any(w in low for w in words):
            return category
    return DEFAULT_CATEGORY


def classify_categories(prompts: Iterable[str | None]) -> list[str]:
    """:func:`classify_category` for many prompts (missing prompts -> the default category)."""
    return [classify_category(p if isinstance(p, str) else None) for p in prompts]


def count_input_tokens(prompts: Iterable[str | None], counting: str = "whitespace") -> np.ndarray:
    """Input length per prompt, int64 (n,): whitespace words (paper) or cl100k tokens."""
    items = ["" if not isinstance(p, str) else p for p in prompts]
    if counting == "whitespace":
        return np.fromiter((len(p.split()) for p in items), dtype=np.int64, count=len(items))
    if counting == "tokenizer":
        from data.tokens import count_tokens

        return count_tokens(items)
    raise ValueError(f"unknown counting {counting!r}; expected one of {list(COUNTINGS)}")


def length_factor(input_tokens: np.ndarray | float) -> np.ndarray:
    """The paper's prompt-length factor min(1.5, 1 + input_tokens / 1000)."""
    return np.minimum(1.5, 1.0 + np.asarray(input_tokens, dtype=np.float64) / 1000.0)


def _check_category(c: str) -> None:
    if c not in BASE_BUDGET:
        raise ValueError(
            f"unknown paper category {c!r}; expected one of {list(BASE_BUDGET)} "
            "(classify free text with predictor.paper.classify_category)"
        )


def _tier_factor(t: str) -> float:
    try:
        return TIER_FACTOR[t]
    except KeyError:
        raise ValueError(f"unknown tier {t!r}; expected one of {list(TIER_FACTOR)}") from None


@dataclass
class PaperEMA:
    """The paper's online estimator: per-category EMA bias on base budgets (see module doc)."""

    correction: bool = True  # False: biases stay at 1.0 (the paper's "without correction" arm)
    counting: str = "whitespace"  # how input_tokens is counted from prompt text
    biases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BASE_BUDGET, 1.0))
    n_updates: int = 0  # completions seen (also counted when correction is off)

    def __post_init__(self) -> None:
        if self.counting not in COUNTINGS:
            raise ValueError(
                f"unknown counting {self.counting!r}; expected one of {list(COUNTINGS)}"
            )

    # --- estimates -----------------------------------------------------------------------
    def estimate_one(self, category: str, tier: str, input_tokens: float) -> float:
        """Token budget for one request (tokens, float)."""
        _check_category(category)
        return float(
            BASE_BUDGET[category]
            * self.biases[category]
            * _tier_factor(tier)
            * length_factor(input_tokens)
        )

    def estimate(
        self, categories: Sequence[str], tiers: Sequence[str], input_tokens: Sequence[float]
    ) -> np.ndarray:
        """Token budgets for a batch: float64 (n,). Uses the biases as they are now."""
        cats = list(categories)
        tiers = list(tiers)
        n_in = np.asarray(input_tokens, dtype=np.float64).reshape(-1)
        if not (len(cats) == len(tiers) == n_in.size):
            raise ValueError(
                f"categories ({len(cats)}), tiers ({len(tiers)}) and input_tokens "
                f"({n_in.size}) must have the same length"
            )
        for c in set(cats):
            _check_category(c)
        base = np.array([BASE_BUDGET[c] for c in cats], dtype=np.float64)
        bias = np.array([self.biases[c] for c in cats], dtype=np.float64)
        tf = np.array([_tier_factor(t) for t in tiers], dtype=np.float64)
        return base * bias * tf * length_factor(n_in)

    def estimate_prompts(
        self,
        prompts: Sequence[str | None],
        tiers: Sequence[str],
        categories: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Classify (unless ``categories`` given), count input tokens, and estimate."""
        cats = classify_categories(prompts) if categories is None else list(categories)
        return self.estimate(cats, tiers, count_input_tokens(prompts, self.counting))

    # --- corrections ---------------------------------------------------------------------
    def update_one(self, category: str, actual_tokens: float) -> float:
        """Apply one completion; returns the category's new bias."""
        _check_category(category)
        self.n_updates += 1
        if self.correction:
            lo, hi = BIAS_CLAMP
            ratio = min(hi, max(lo, float(actual_tokens) / BASE_BUDGET[category]))
            self.biases[category] = EMA_DECAY * self.biases[category] + (1 - EMA_DECAY) * ratio
        return self.biases[category]

    def update(self, categories: Sequence[str], actual_tokens: Sequence[float]) -> None:
        """Apply a batch of completions in order (identical to calling ``update_one`` each)."""
        acts = np.asarray(actual_tokens, dtype=np.float64).reshape(-1)
        cats = list(categories)
        if len(cats) != acts.size:
            raise ValueError(f"{len(cats)} categories but {acts.size} actual lengths")
        for c, a in zip(cats, acts):
            self.update_one(c, float(a))

    def reset(self) -> None:
        self.biases = dict.fromkeys(BASE_BUDGET, 1.0)
        self.n_updates = 0
