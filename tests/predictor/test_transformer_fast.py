"""The transformer's fast inference path: length buckets and the bfloat16 encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.transformer import TransformerLength
from predictor.transformer_model import Encoder, resolve_inference_dtype

PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Write a detailed essay about the history of the printing press and its effects on "
    "literacy, religion and science in early modern Europe, with examples.",
    "Translate 'good morning' to German.",
    "Explain how a transformer language model works, step by step, for a beginner who "
    "knows some linear algebra but no deep learning at all.",
    "List three fruits.",
    "def f(x):\n    return x * 2\n# what does this do?",
    "Résumé en français, s'il vous plaît : " + "la réunion " * 30,
    "?",
    "Summarize: " + "the quick brown fox jumps over the lazy dog " * 10,
    "Give me one word.",
    "写一首关于秋天的诗",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.set_num_threads(1)
    return Encoder(max_length=48, batch_size=8, device=torch.device("cpu"))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 64), max_size=150), st.integers(1, 40))
def test_buckets_partition_the_batch(lengths: list[int], batch_size: int) -> None:
    enc = Encoder.__new__(Encoder)  # buckets() only reads these attributes
    enc.batch_size = batch_size
    L = np.array(lengths, dtype=np.int64)
    got = enc.buckets(L)
    flat = np.concatenate(got) if got else np.zeros(0, np.int64)
    assert sorted(flat.tolist()) == list(range(len(L)))  # every text exactly once
    for b in got:
        assert 1 <= len(b) <= batch_size
        top = L[b].max()
        assert L[b[0]] == top  # longest first
        # past MIN_BUCKET, a bucket only holds texts within BUCKET_RATIO of its longest
        tail = L[b[Encoder.MIN_BUCKET :]]
        assert (tail >= Encoder.BUCKET_RATIO * top).all()


def test_buckets_give_the_padded_batch_embeddings(encoder: Encoder) -> None:
    """Padding is masked out: bucketed and one-padded-batch encodings agree (float32)."""
    bucketed = encoder.encode(PROMPTS)
    assert len(encoder.buckets(np.array([len(p) for p in PROMPTS]))) > 1
    one = Encoder.__new__(Encoder)
    one.__dict__.update(encoder.__dict__)
    one.MIN_BUCKET = 10**6  # never split: one batch per batch_size texts, padded
    padded = one.encode(PROMPTS)
    np.testing.assert_allclose(bucketed, padded, atol=2e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_bfloat16_encoder_is_close_to_float32(encoder: Encoder) -> None:
    ref = encoder.encode(PROMPTS)
    enc16 = Encoder(max_length=48, batch_size=8, device=torch.device("cpu"), dtype="bfloat16")
    assert enc16.dtype == "bfloat16" and next(enc16.model.parameters()).dtype == torch.bfloat16
    got = enc16.encode(PROMPTS)
    assert got.dtype == np.float32
    assert _cos(got, ref).min() > 0.999
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        enc16.set_dtype("float16")


def test_resolve_inference_dtype() -> None:
    cpu = torch.device("cpu")
    assert resolve_inference_dtype("float32", cpu) == "float32"
    assert resolve_inference_dtype("bfloat16", cpu) == "bfloat16"
    assert resolve_inference_dtype("auto", cpu) in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="inference_dtype"):
        resolve_inference_dtype("int8", cpu)


def test_inference_dtype_round_trip_and_override(trace: pd.DataFrame, tmp_path: Path) -> None:
    y = trace["output_tokens"].to_numpy(np.float64)
    m = TransformerLength(
        mode="frozen", epochs=3, min_count=1, num_threads=1, max_length=32,
        inference_dtype="bfloat16",
    ).fit(trace, y)  # fmt: skip
    assert m.featurizer_.encoder.dtype == "bfloat16"  # training embeddings in serving dtype
    q = m.predict_quantiles(trace)
    m.save(tmp_path / "t")
    again = TransformerLength.load(tmp_path / "t")
    assert again.featurizer_.encoder.dtype == "bfloat16"
    np.testing.assert_allclose(again.predict_quantiles(trace), q, rtol=1e-6)
    f32 = TransformerLength.load(tmp_path / "t", inference_dtype="float32")
    assert f32.featurizer_.encoder.dtype == "float32"
    q32 = f32.predict_quantiles(trace)
    assert np.abs(np.log(q32) - np.log(q)).max() < 0.1  # same model, another precision
