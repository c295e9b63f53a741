"""Partial text end to end: train on ShareGPT replies, save, serve, and the sim's request path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.loaders import load_source
from data.tokens import cl100k
from predictor.lgbm import LightGBMDrift, LightGBMLength
from predictor.serving import frame_from_requests, load_predictor
from predictor.training import TrainConfig, run_training
from scheduler.engine import requests_from_frame
from scheduler.policies.estimates import LearnedLengths


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, object]:
    table = load_source("sharegpt").sample(900, random_state=0).reset_index(drop=True)
    out = tmp_path_factory.mktemp("art")
    res = run_training(
        length_est=LightGBMLength(
            n_estimators=20, text_dim=4, min_count=5, num_threads=1, min_child_samples=10
        ),
        drift_est=LightGBMDrift(
            n_estimators=20, num_threads=1, min_child_samples=10, n_random_text=2
        ),
        baselines={},
        tc=TrainConfig(max_train_rows=None, max_val_rows=None, max_drift_traces=None),
        out_dir=out,
        table=table,
        log=lambda s: None,
    )
    return out, table, res


def test_drift_table_reports_both_subsets(trained: tuple) -> None:
    _, _, res = trained
    d = res.drift_table
    assert set(d["subset"]) == {"all", "with_text"}
    for _, g in d.groupby(["subset", "t"]):
        assert set(g["model"]) == {"drift", "admission_minus_t"}
        assert (g["mae"] > 0).all() and g["n"].nunique() == 1
    # ShareGPT only: every test row has text, so both subsets score the same requests
    a = d[d.subset == "all"].set_index(["model", "t"])["mae"]
    w = d[d.subset == "with_text"].set_index(["model", "t"])["mae"]
    pd.testing.assert_series_equal(a, w)


def test_serving_and_sim_path_read_only_the_first_tokens(trained: tuple) -> None:
    out, table, _ = trained
    pred = load_predictor(out)
    assert pred.reads_text
    rows = table.iloc[:40].copy()
    rows["arrival_s"] = np.arange(len(rows), dtype=np.float64)
    reqs = requests_from_frame(rows)
    assert all(r.output_text == t for r, t in zip(reqs, rows["output_text"]))
    X = pred.featurize(frame_from_requests(reqs))
    adm = pred.predict_admission(X)
    for r in reqs:
        r.num_output_tokens = max(1, min(64, r.true_output_tokens - 1))
    gen = np.array([r.num_output_tokens for r in reqs], dtype=np.float64)
    enc = cl100k()
    partial = [enc.decode(enc.encode_ordinary(r.output_text)[: r.num_output_tokens]) for r in reqs]
    want = pred.predict_remaining(X, adm, gen, partial)
    blind = pred.predict_remaining(X, adm, gen)
    assert not np.allclose(want, blind)  # the text changes the estimate
    lengths = LearnedLengths(out, require_drift=True, recalibrate=False)
    lengths.featurize(reqs)
    got = lengths.remaining(reqs, adm)
    np.testing.assert_allclose(got, np.maximum(want, 1.0))
    # progress moves on: the cached partial text grows with num_output_tokens
    for r in reqs:
        r.num_output_tokens = max(1, min(100, r.true_output_tokens - 1))
    gen2 = np.array([r.num_output_tokens for r in reqs], dtype=np.float64)
    partial2 = [enc.decode(enc.encode_ordinary(r.output_text)[: r.num_output_tokens]) for r in reqs]
    np.testing.assert_allclose(
        lengths.remaining(reqs, adm),
        np.maximum(pred.predict_remaining(X, adm, gen2, partial2), 1.0),
    )
