"""The paper's classifier and EMA estimator, checked against a hand-worked sequence."""

from __future__ import annotations

import numpy as np
import pytest

from data.paper_templates import CATEGORIES, TEMPLATES
from predictor.online import OnlineRecalibrator
from predictor.paper import PaperEMA, classify_categories, classify_category, count_input_tokens


def test_classifier_recovers_every_paper_template() -> None:
    for cat in CATEGORIES:
        for tpl in TEMPLATES[cat]:
            assert classify_category(tpl.format(topic="Redis")) == cat, tpl


def test_classifier_default_and_missing_prompt() -> None:
    assert classify_category("Tell me a joke about cats") == "summary"
    assert classify_category(None) == "summary"
    assert classify_categories(["Write a thorough report", None]) == ["report", "summary"]


def test_ema_hand_worked_sequence() -> None:
    ema = PaperEMA()
    assert ema.biases == {"short_qa": 1.0, "summary": 1.0, "technical": 1.0, "report": 1.0}
    # short_qa base 64. actual 128: ratio 2.0 -> 0.9*1 + 0.1*2 = 1.1
    assert ema.update_one("short_qa", 128) == pytest.approx(1.1)
    # actual 8: ratio 0.125 clamps to 0.25 -> 0.99 + 0.025 = 1.015
    assert ema.update_one("short_qa", 8) == pytest.approx(1.015)
    # actual 640: ratio 10 clamps to 3.0 -> 0.9135 + 0.3 = 1.2135
    assert ema.update_one("short_qa", 640) == pytest.approx(1.2135)
    assert ema.biases["summary"] == 1.0  # other categories untouched
    # premium, 600 input tokens: 64 * 1.2135 * 1.2 * min(1.5, 1.6)
    assert ema.estimate_one("short_qa", "premium", 600) == pytest.approx(139.7952)
    # batch, 200 tokens: 64 * 1.2135 * 0.8 * 1.2
    assert ema.estimate_one("short_qa", "batch", 200) == pytest.approx(74.55744)
    # standard summary, 50 tokens: 256 * 1 * 1 * 1.05
    assert ema.estimate_one("summary", "standard", 50) == pytest.approx(268.8)


def test_batched_equals_online() -> None:
    rng = np.random.default_rng(0)
    cats = list(rng.choice(list(CATEGORIES), 200))
    acts = rng.integers(1, 3000, 200)
    a, b = PaperEMA(), PaperEMA()
    a.update(cats, acts)
    for c, x in zip(cats, acts):
        b.update_one(c, int(x))
    assert a.biases == b.biases and a.n_updates == b.n_updates == 200
    tiers = list(rng.choice(["premium", "standard", "batch"], 200))
    n_in = rng.integers(0, 2000, 200)
    batch = a.estimate(cats, tiers, n_in)
    one = [a.estimate_one(c, t, n) for c, t, n in zip(cats, tiers, n_in)]
    np.testing.assert_allclose(batch, one)


def test_no_correction_keeps_biases_at_one() -> None:
    ema = PaperEMA(correction=False)
    ema.update(["report", "report"], [5000, 1])
    assert ema.biases["report"] == 1.0 and ema.n_updates == 2
    assert ema.estimate_one("report", "standard", 0) == pytest.approx(512.0)


def test_counting_variants() -> None:
    assert list(count_input_tokens(["a b  c\nd", None], "whitespace")) == [4, 0]
    toks = count_input_tokens(["Hello world, tokenizers!"], "tokenizer")
    assert toks[0] > 0
    ema = PaperEMA(counting="tokenizer")
    est = ema.estimate_prompts(["Briefly define DNS."], ["standard"])
    assert est.shape == (1,) and est[0] == pytest.approx(
        64 * (1 + toks_of("Briefly define DNS.") / 1000)
    )
    with pytest.raises(ValueError, match="counting"):
        PaperEMA(counting="chars")


def toks_of(s: str) -> int:
    return int(count_input_tokens([s], "tokenizer")[0])


def test_bad_category_and_tier_are_named() -> None:
    ema = PaperEMA()
    with pytest.raises(ValueError, match="unknown paper category 'chat'"):
        ema.update_one("chat", 10)
    with pytest.raises(ValueError, match="unknown tier 'gold'"):
        ema.estimate_one("summary", "gold", 10)


def test_recalibrator_learns_a_drifting_workload() -> None:
    rng = np.random.default_rng(1)
    rc = OnlineRecalibrator(alpha=0.1, lr=0.05)
    pred = np.array([[100.0, 200.0]])
    # the workload runs 2x longer than predicted (lognormal noise)
    for _ in range(400):
        actual = float(np.exp(np.log(200) + rng.normal(0, 0.3)))
        rc.update_one("tenantA", actual, pred[0])
    adj = rc.adjust(["tenantA", "unseen"], np.repeat(pred, 2, axis=0))
    assert adj[0, 0] == pytest.approx(200, rel=0.2)
    assert adj[1, 0] == pytest.approx(200, rel=0.2)  # unseen group uses the global state
    # conformal upper quantile covers about 90%
    hits = [float(np.exp(np.log(200) + rng.normal(0, 0.3))) <= adj[0, 1] for _ in range(2000)]
    assert 0.8 <= np.mean(hits) <= 0.97


def test_recalibrator_batched_equals_online_and_validates() -> None:
    a, b = OnlineRecalibrator(), OnlineRecalibrator()
    groups = ["x", "y", "x", "z"] * 5
    acts = np.arange(1, 21) * 10.0
    preds = np.tile([50.0, 90.0], (20, 1))
    a.update(groups, acts, preds)
    for g, x, p in zip(groups, acts, preds):
        b.update_one(g, x, p)
    assert a.mu == b.mu and a.q == b.q
    with pytest.raises(ValueError, match="> 0"):
        a.update_one("x", 0.0, [1, 2])
    with pytest.raises(ValueError, match="shape"):
        a.adjust(["x"], np.ones((2, 2)))
