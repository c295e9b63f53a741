"""One loader per shipped source: raw file -> trace table in the schema of data/schema.py.

Every loader returns ``(table, reports)``: the table is not yet validated (``load_source`` does
that once, naming the raw file in errors) and ``reports`` lists each explicit filter applied.
Ids are prefixed with the source name so that tables from several sources can be concatenated
without collisions (``request_id`` unique, ``prompt_id`` never shared by two sources).
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd

from data.loaders._common import drop_nonpositive, raw_path, with_defaults
from data.schema import UNKNOWN, FilterReport, filter_rows

Loaded = tuple[pd.DataFrame, list[FilterReport]]

# CASTILLO datasets -> task category when the row has no Dolly category. The four code datasets
# share one label so that a "code" category means the same thing across sources.
CASTILLO_CATEGORY = {
    "Alpaca": "instruction",
    "Apps": "code",
    "BigCodeBench": "code",
    "DS1000": "code",
    "Mbpp": "code",
    "ShareGPT": "chat",
}

# AlpacaEval "generators" that are not models answering the prompt: an adversarial gaming
# submission and a placeholder. They are removed explicitly, with a FilterReport.
ALPACA_EVAL_EXCLUDED = ("gpt4_gamed", "NullModel")


def _read_jsonl(rel: str) -> pd.DataFrame:
    return pd.read_json(raw_path(rel), lines=True, dtype=False)


def load_castillo() -> Loaded:
    """CASTILLO: one row per (prompt, model); 10 sampled output lengths per row.

    ``output_tokens`` is the first of the 10 samples (a single realised generation, as a
    serving trace would log), ``output_samples`` keeps all 10. Lengths are in each model's own
    tokenizer. The same prompt occasionally appears in two upstream splits; both rows are kept
    (request ids carry the split) and share a ``prompt_id``, so grouped splits keep them together.
    """
    lengths = pd.read_csv(raw_path("castillo/castillo_lengths.csv.gz"))
    prompts = pd.read_json(raw_path("castillo/castillo_prompts.jsonl.gz"), lines=True, dtype=False)
    text = dict(zip(prompts["prompt_id"].astype(str), prompts["prompt_text"]))
    pid = lengths["prompt_id"].astype(str)
    # (n, 10) int matrix of sampled lengths; the raw column is 10 space-separated ints.
    samples = lengths["output_sizes"].str.split(" ", expand=True).astype(np.int64).to_numpy()
    dolly = lengths["category"].astype(str)
    category = np.where(dolly != "undefined", dolly, lengths["dataset"].map(CASTILLO_CATEGORY))
    df = pd.DataFrame(
        {
            "request_id": "castillo:" + lengths["split"] + ":" + pid + ":" + lengths["model"],
            "prompt_id": "castillo:" + pid,
            "category": category,
            "model": lengths["model"],
            "prompt": pid.map(text),
            "prompt_tokens": lengths["input_size"],
            "output_tokens": samples[:, 0],
            "output_samples": pd.Series([tuple(r) for r in samples.tolist()], dtype=object),
            "dataset": lengths["dataset"],
            "castillo_split": lengths["split"],
            "output_mean": lengths["output_mean"],
            "output_std": lengths["output_std"],
            "temperature": lengths["temp"],
            "top_p": lengths["top_p"],
            "top_k": lengths["top_k"],
            "tokenizer": "model",
        }
    )
    missing = df["prompt"].isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"{raw_path('castillo/castillo_prompts.jsonl.gz')}: no prompt text for CASTILLO "
            f"prompt_id {pid.iloc[first]!r} (row {first} of castillo_lengths.csv.gz)"
        )
    return with_defaults(df, "castillo"), []


def load_alpaca_eval() -> Loaded:
    """AlpacaEval: one row per (prompt, generator model), lengths in cl100k tokens."""
    prompts = _read_jsonl("alpaca_eval/alpaca_eval_prompts.jsonl")
    lengths = pd.read_csv(raw_path("alpaca_eval/alpaca_eval_output_lengths.csv.gz"))
    reports: list[FilterReport] = []
    lengths, rep = filter_rows(
        lengths,
        ~lengths["model"].isin(ALPACA_EVAL_EXCLUDED).to_numpy(),
        f"alpaca_eval: exclude non-model generators {list(ALPACA_EVAL_EXCLUDED)}",
    )
    reports.append(rep)
    df = lengths.merge(prompts, on="prompt_id", how="left", validate="many_to_one")
    if df["instruction"].isna().any():
        bad = int(np.flatnonzero(df["instruction"].isna().to_numpy())[0])
        raise ValueError(
            f"{raw_path('alpaca_eval/alpaca_eval_output_lengths.csv.gz')}: prompt_id "
            f"{df['prompt_id'].iloc[bad]} has no row in alpaca_eval_prompts.jsonl"
        )
    pid = df["prompt_id"].astype(str)
    out = pd.DataFrame(
        {
            "request_id": "alpaca_eval:" + pid + ":" + df["model"],
            "prompt_id": "alpaca_eval:" + pid,
            "category": df["dataset"],
            "model": df["model"],
            "prompt": df["instruction"],
            "prompt_tokens": df["prompt_tokens_cl100k"],
            "output_tokens": df["output_tokens_cl100k"],
            "output_chars": df["output_chars"],
            "tokenizer": "cl100k",
        }
    )
    out = drop_nonpositive(out, ["output_tokens"], "alpaca_eval", reports)
    return with_defaults(out, "alpaca_eval"), reports


def load_sharegpt() -> Loaded:
    """ShareGPT V3: the first human->gpt turn of each conversation, with prompt and reply text.

    ``prompt`` is cut to 8,000 characters upstream (``prompt_truncated``); ``prompt_tokens``
    counts the full prompt. Outputs are ChatGPT replies (``model`` = ``chatgpt``);
    ``output_text`` is the reply, capped at 2,048 cl100k tokens (``output_text_truncated``; see
    ``data/build_sharegpt_responses.py``).
    """
    s = _read_jsonl("sharegpt_v3/sharegpt_v3_first_turn.jsonl.gz")
    cid = s["id"].astype(str)
    rpath = "sharegpt_v3/sharegpt_v3_first_turn_responses.jsonl.gz"
    r = _read_jsonl(rpath)
    reply = dict(zip(r["id"].astype(str), r["response"]))
    cut = dict(zip(r["id"].astype(str), r["response_truncated"].astype(bool)))
    missing = ~cid.isin(reply.keys()).to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"{raw_path(rpath)}: no reply for ShareGPT id {cid.iloc[first]!r} (row {first} of "
            "sharegpt_v3_first_turn.jsonl.gz); rebuild it with "
            "`python -m data.build_sharegpt_responses`"
        )
    df = pd.DataFrame(
        {
            "request_id": "sharegpt:" + cid + ":t0",
            "prompt_id": "sharegpt:" + cid + ":t0",
            "prompt": s["prompt"],
            "prompt_tokens": s["prompt_tokens_cl100k"],
            "output_tokens": s["output_tokens_cl100k"],
            "output_text": pd.array(cid.map(reply).tolist(), dtype="string"),
            "conversation_id": cid,
            "prompt_truncated": s["prompt_truncated"].astype(bool),
            "output_text_truncated": cid.map(cut).astype(bool).to_numpy(),
            "n_messages": s["n_messages"],
            "tokenizer": "cl100k",
        }
    )
    reports: list[FilterReport] = []
    df = drop_nonpositive(df, ["prompt_tokens", "output_tokens"], "sharegpt", reports)
    return with_defaults(df, "sharegpt", category="chat", model="chatgpt"), reports


def load_sharegpt_pairs() -> Loaded:
    """ShareGPT V3: every adjacent human->gpt pair (any turn), lengths only (no text).

    ``prompt_tokens`` is the single human message without the conversation history.
    """
    p = pd.read_csv(raw_path("sharegpt_v3/sharegpt_v3_pairs_lengths.csv.gz"))
    cid = p["id"].astype(str)
    key = "sharegpt:" + cid + ":t" + p["turn"].astype(str)
    df = pd.DataFrame(
        {
            "request_id": key,
            "prompt_id": key,
            "prompt_tokens": p["prompt_tokens"],
            "output_tokens": p["output_tokens"],
            "conversation_id": cid,
            "turn": p["turn"],
            "tokenizer": "cl100k",
        }
    )
    reports: list[FilterReport] = []
    df = drop_nonpositive(df, ["prompt_tokens", "output_tokens"], "sharegpt_pairs", reports)
    return with_defaults(df, "sharegpt_pairs", category="chat", model="chatgpt"), reports


def _load_azure(kind: str) -> Loaded:
    name = f"azure_{kind}"
    a = pd.read_csv(raw_path(f"azure_llm_2023/AzureLLMInferenceTrace_{kind}.csv"))
    ts = pd.to_datetime(a["TIMESTAMP"], format="%Y-%m-%d %H:%M:%S.%f")
    # seconds since the trace's first request; the trace is sorted upstream (checked by the
    # schema's require_arrivals in the tests)
    arrival = (ts - ts.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    df = pd.DataFrame(
        {
            "request_id": [f"{name}:{i}" for i in range(len(a))],
            "arrival_s": arrival,
            "prompt_tokens": a["ContextTokens"],
            "output_tokens": a["GeneratedTokens"],
            "timestamp": a["TIMESTAMP"],
            "tokenizer": "unknown",
        }
    )
    reports: list[FilterReport] = []
    df = drop_nonpositive(df, ["prompt_tokens", "output_tokens"], name, reports)
    return with_defaults(df, name, category="code" if kind == "code" else "chat"), reports


def load_azure_code() -> Loaded:
    """Azure LLM inference trace 2023, code service: ~1 h of arrivals, lengths, no text."""
    return _load_azure("code")


def load_azure_conv() -> Loaded:
    """Azure LLM inference trace 2023, conversation service: ~1 h of arrivals, no text."""
    return _load_azure("conv")


def _load_mooncake(kind: str) -> Loaded:
    name = f"mooncake_{kind}"
    path = raw_path(f"mooncake_fast25/{kind}_trace.jsonl.gz")
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    m = pd.DataFrame(rows)
    df = pd.DataFrame(
        {
            "request_id": [f"{name}:{i}" for i in range(len(m))],
            # ms -> s. The conversation trace is quantised to 3 s buckets: arrival_s is the
            # bucket time as published; data.workload spreads requests within a bucket.
            "arrival_s": m["timestamp"].to_numpy(dtype=np.float64) / 1000.0,
            "prompt_tokens": m["input_length"],
            "output_tokens": m["output_length"],
            # 512-token prefix-block ids: equal ids = shared KV prefix (prefix caching studies)
            "hash_ids": pd.Series([tuple(h) for h in m["hash_ids"]], dtype=object),
            "tokenizer": "unknown",
        }
    )
    reports: list[FilterReport] = []
    df = drop_nonpositive(df, ["prompt_tokens", "output_tokens"], name, reports)
    category = "chat" if kind == "conversation" else UNKNOWN
    return with_defaults(df, name, category=category), reports


def load_mooncake_conversation() -> Loaded:
    """Mooncake FAST'25 conversation trace (Kimi service), arrivals in 3 s buckets."""
    return _load_mooncake("conversation")


def load_mooncake_synthetic() -> Loaded:
    """Mooncake FAST'25 synthetic trace: Poisson arrivals, long prompts, short outputs."""
    return _load_mooncake("synthetic")


def load_vidur_arxiv() -> Loaded:
    """Vidur's arXiv summarisation lengths (Llama-2 tokenizer): long prompt -> abstract.

    The decode lengths are reference abstracts, not LLM generations (``model`` =
    ``human_reference``), and the file is capped at 4,096 total tokens upstream.
    """
    v = pd.read_csv(
        raw_path("vidur_arxiv/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv.gz")
    )
    df = pd.DataFrame(
        {
            "request_id": [f"vidur_arxiv:{i}" for i in range(len(v))],
            "prompt_tokens": v["num_prefill_tokens"],
            "output_tokens": v["num_decode_tokens"],
            "tokenizer": "llama2",
        }
    )
    reports: list[FilterReport] = []
    df = drop_nonpositive(df, ["prompt_tokens", "output_tokens"], "vidur_arxiv", reports)
    return with_defaults(df, "vidur_arxiv", category="summary", model="human_reference"), reports


def load_burstgpt() -> Loaded:
    """BurstGPT: the first 54 rows of BurstGPT_1.csv, a schema fixture (not a workload).

    Rows with 0 response tokens are failed requests in BurstGPT and are removed with a report.
    """
    b = pd.read_csv(raw_path("burstgpt/burstgpt_1_first54_rows.csv"))
    log_type = b["Log Type"].astype(str)
    df = pd.DataFrame(
        {
            "request_id": [f"burstgpt:{i}" for i in range(len(b))],
            "arrival_s": b["Timestamp"].to_numpy(dtype=np.float64) - float(b["Timestamp"].iloc[0]),
            "model": b["Model"],
            "category": np.where(log_type.str.startswith("Conversation"), "chat", "api"),
            "prompt_tokens": b["Request tokens"],
            "output_tokens": b["Response tokens"],
            "log_type": log_type,
            "tokenizer": "unknown",
        }
    )
    reports: list[FilterReport] = []
    df = drop_nonpositive(df, ["prompt_tokens", "output_tokens"], "burstgpt", reports)
    return with_defaults(df, "burstgpt"), reports
