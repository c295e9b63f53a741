"""Loaders: every shipped source and user trace files, validated against data/schema.py.

``load_source(name)`` returns a fresh copy of a cached, validated table (parsing happens once per
process, so tests and training can call it freely). ``load_source_with_reports(name)`` also
returns the explicit filters the loader applied (e.g. AlpacaEval's excluded generators).
ServeGen's client rate windows and length summaries are not request tables: see
:mod:`data.loaders.servegen`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pandas as pd

from data.loaders import sources as _s
from data.loaders._common import (
    DEFAULT_CATEGORY,
    DEFAULT_MODEL,
    DEFAULT_TENANT,
    DEFAULT_TIER,
    RAW_DIR,
)
from data.loaders.files import load_trace_file
from data.loaders.servegen import load_servegen_lengths, load_servegen_windows
from data.schema import FilterReport, validate_trace


@dataclass(frozen=True)
class Source:
    """A shipped source: ``Source()`` loads it (validated, cached)."""

    name: str
    raw: str  # raw file(s) under data/raw/ (the name errors refer to)
    arrivals: bool  # True if arrival_s is real time (a replayable workload)
    tokenizer: str  # tokenizer of the published lengths
    doc: str
    _fn: Callable[[], _s.Loaded]

    def __call__(self) -> pd.DataFrame:
        return load_source(self.name)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "castillo",
            "castillo/castillo_lengths.csv.gz",
            False,
            "each model's own",
            "13 open models x 7 datasets, 10 sampled lengths per (prompt, model)",
            _s.load_castillo,
        ),
        Source(
            "alpaca_eval",
            "alpaca_eval/alpaca_eval_output_lengths.csv.gz",
            False,
            "cl100k",
            "805 prompts x ~225 generator models (gpt4_gamed, NullModel excluded)",
            _s.load_alpaca_eval,
        ),
        Source(
            "sharegpt",
            "sharegpt_v3/sharegpt_v3_first_turn.jsonl.gz",
            False,
            "cl100k",
            "first human->ChatGPT turn of each ShareGPT V3 conversation, with text",
            _s.load_sharegpt,
        ),
        Source(
            "sharegpt_pairs",
            "sharegpt_v3/sharegpt_v3_pairs_lengths.csv.gz",
            False,
            "cl100k",
            "every human->ChatGPT pair of ShareGPT V3 (lengths only)",
            _s.load_sharegpt_pairs,
        ),
        Source(
            "azure_code",
            "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
            True,
            "unknown",
            "Azure LLM inference 2023, code service, ~1 h of arrivals",
            _s.load_azure_code,
        ),
        Source(
            "azure_conv",
            "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
            True,
            "unknown",
            "Azure LLM inference 2023, conversation service, ~1 h of arrivals",
            _s.load_azure_conv,
        ),
        Source(
            "mooncake_conversation",
            "mooncake_fast25/conversation_trace.jsonl.gz",
            True,
            "unknown",
            "Mooncake FAST'25 conversation trace (3 s arrival buckets)",
            _s.load_mooncake_conversation,
        ),
        Source(
            "mooncake_synthetic",
            "mooncake_fast25/synthetic_trace.jsonl.gz",
            True,
            "unknown",
            "Mooncake FAST'25 synthetic trace (Poisson arrivals)",
            _s.load_mooncake_synthetic,
        ),
        Source(
            "vidur_arxiv",
            "vidur_arxiv/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv.gz",
            False,
            "llama2",
            "arXiv summarisation prompt/abstract lengths (Vidur)",
            _s.load_vidur_arxiv,
        ),
        Source(
            "burstgpt",
            "burstgpt/burstgpt_1_first54_rows.csv",
            True,
            "unknown",
            "first 54 rows of BurstGPT_1.csv: a schema fixture only",
            _s.load_burstgpt,
        ),
    )
}


def _source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; expected one of {sorted(SOURCES)}") from None


@cache
def _cached(name: str) -> tuple[pd.DataFrame, tuple[FilterReport, ...]]:
    src = _source(name)
    df, reports = src._fn()
    df = validate_trace(df, where=str(RAW_DIR / src.raw), require_arrivals=src.arrivals)
    return df, tuple(reports)


def load_source_with_reports(name: str) -> tuple[pd.DataFrame, list[FilterReport]]:
    """The validated table of a shipped source and the explicit filters applied while loading."""
    df, reports = _cached(name)
    return df.copy(), list(reports)


def load_source(name: str) -> pd.DataFrame:
    """The validated trace table of shipped source ``name`` (a copy: safe to modify)."""
    return load_source_with_reports(name)[0]


def load_sources(names: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Several sources concatenated (ids are source-prefixed, so they stay unique)."""
    frames = [load_source(n) for n in names]
    if not frames:
        raise ValueError("load_sources: expected at least one source name")
    df = pd.concat(frames, ignore_index=True)
    if "prompt_id" in df.columns:
        # sources without prompt ids (traces) group by request: each row its own prompt
        df["prompt_id"] = df["prompt_id"].fillna(df["request_id"])
    return validate_trace(df, where=f"sources {list(names)}")


__all__ = [
    "DEFAULT_CATEGORY",
    "DEFAULT_MODEL",
    "DEFAULT_TENANT",
    "DEFAULT_TIER",
    "SOURCES",
    "Source",
    "load_servegen_lengths",
    "load_servegen_windows",
    "load_source",
    "load_source_with_reports",
    "load_sources",
    "load_trace_file",
]
