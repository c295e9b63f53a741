"""LightGBMDrift reading the partial output text: learns from it, round-trips, serves without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.tokens import cl100k
from predictor.artifacts import ArtifactError
from predictor.drift_data import naive_remaining, output_token_ids, partial_texts
from predictor.lgbm import LightGBMDrift
from predictor.text_progress import TEXT_FEATURE_NAMES
from predictor.training_drift import drift_traces, score_drift

ITEM = "A short tip about sleeping better and feeling rested.\n"


def _replies(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Numbered lists announcing their own length: "Here are K tips" then K items."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        k = int(rng.integers(2, 12))
        body = "".join(f"{i}. {ITEM}" for i in range(1, k + 1))
        texts.append(f"Here are {k} tips:\n{body}I hope this helps!")
    lengths = np.array([len(x) for x in cl100k().encode_ordinary_batch(texts)], np.float64)
    return texts, lengths


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    texts, y = _replies(240, 0)
    F = np.random.default_rng(1).normal(size=(len(y), 3)).astype(np.float32)  # uninformative
    adm = np.column_stack([np.full(len(y), np.median(y)), np.full(len(y), np.quantile(y, 0.9))])
    return {"texts": texts, "y": y, "F": F, "adm": adm}


def _fit(d: dict, text: bool) -> LightGBMDrift:
    m = LightGBMDrift(
        n_estimators=60, num_threads=1, min_child_samples=5, n_random=2, n_random_text=3, text=text
    )
    return m.fit(d["F"], d["y"], d["adm"], texts=d["texts"] if text else None)


def test_text_model_beats_blind_model_and_naive(data: dict) -> None:
    texts, y = _replies(120, 7)  # fresh replies
    F = np.zeros((len(y), 3), np.float32)
    adm = data["adm"][: len(y)]
    t = 32
    run = y > t
    gen = np.full(int(run.sum()), float(t))
    ids, complete = output_token_ids(texts)
    partial = partial_texts(ids, complete, np.flatnonzero(run), gen)
    truth = y[run] - t
    with_text = _fit(data, True).predict_remaining(F[run], adm[run], gen, texts=partial)
    blind = _fit(data, False).predict_remaining(F[run], adm[run], gen)
    err_text = np.mean(np.abs(with_text[:, 0] - truth))
    err_blind = np.mean(np.abs(blind[:, 0] - truth))
    err_naive = np.mean(np.abs(naive_remaining(adm[run], gen)[:, 0] - truth))
    assert err_text < 0.6 * err_blind and err_text < 0.6 * err_naive


def test_round_trip_missing_text_and_errors(data: dict, tmp_path: Path) -> None:
    m = _fit(data, True)
    assert m.feature_names_[-len(m.text_feature_names_) :] == m.text_feature_names_
    assert m.text_feature_names_ == [*TEXT_FEATURE_NAMES, "tx_ngram_score"]
    F, adm = data["F"][:20], data["adm"][:20]
    gen = np.full(20, 16.0)
    partial = [t[:60] for t in data["texts"][:20]]
    partial[3] = None  # one request without text
    r_text = m.predict_remaining(F, adm, gen, texts=partial)
    r_none = m.predict_remaining(F, adm, gen)  # no text at all: the missing-value branch
    assert r_text.shape == r_none.shape == (20, 2) and np.isfinite(r_none).all()
    np.testing.assert_array_equal(r_text[3], r_none[3])
    m.save(tmp_path / "drift")
    m2 = LightGBMDrift.load(tmp_path / "drift")
    np.testing.assert_array_equal(m2.predict_remaining(F, adm, gen, texts=partial), r_text)
    with pytest.raises(ValueError, match="entries"):
        m.predict_remaining(F, adm, gen, texts=partial[:5])
    # a feature list this version does not compute is refused
    meta_path = tmp_path / "drift" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["text_feature_names"] = ["tx_from_the_future"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError):
        LightGBMDrift.load(tmp_path / "drift")
    # a damaged n-gram file names the artifact
    m.save(tmp_path / "drift2")
    (tmp_path / "drift2" / "text_ngram.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        LightGBMDrift.load(tmp_path / "drift2")


def test_score_drift_reads_at_most_t_tokens_and_subsets(data: dict) -> None:
    m = _fit(data, True)
    y = data["y"][:60]
    rows = score_drift(
        m, data["F"][:60], data["adm"][:60], y, (32, 64), pd.Series(data["texts"][:60])
    )
    df = pd.DataFrame(rows)
    assert set(df["model"]) == {"drift", "admission_minus_t"} and set(df["subset"]) == {"all"}
    assert (df.loc[df.model == "admission_minus_t", "mae_gain_vs_naive"] == 1.0).all()
    # texts cut right after token t give the same scores: nothing beyond t is read
    enc = cl100k()
    cut = [enc.decode(enc.encode_ordinary(s)[:33]) for s in data["texts"][:60]]
    rows32 = score_drift(
        m, data["F"][:60], data["adm"][:60], y, (32,), pd.Series(data["texts"][:60])
    )
    rows_cut = score_drift(
        m, data["F"][:60], data["adm"][:60], y, (32,), pd.Series(cut), pd.Series([True] * 60)
    )
    assert rows32[0]["mae"] == pytest.approx(rows_cut[0]["mae"])


def test_drift_traces_keep_every_text_row() -> None:
    train = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(10)],
            "output_text": pd.array(["x"] * 3 + [None] * 7, dtype="string"),
        }
    )
    extra = pd.DataFrame({"request_id": ["e0"], "output_text": pd.array(["y"], dtype="string")})
    out, rep = drift_traces(train, extra, 6, np.random.default_rng(0))
    assert len(out) == 6 and out["output_text"].notna().sum() == 4
    assert "e0" in set(out["request_id"]) and rep.rows_in == 11
    out2, _ = drift_traces(train, None, None, np.random.default_rng(0))
    assert len(out2) == 10
