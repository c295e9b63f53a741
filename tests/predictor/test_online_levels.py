"""predictor.online.OnlineLevels: per-level log corrections from completions and censored
running requests (the learner behind ``LearnedLengths(online=...)``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.online import OnlineLevels, _mills

THREE = ("model", "tenant", "category")  # the mechanics on three levels (the default adds prompt)


def _lv(**kw) -> OnlineLevels:
    return OnlineLevels(levels=THREE, **kw)


def _stream(rng: np.random.Generator, n: int, shift: dict[str, float], sigma: float = 0.4):
    """n requests over generators ``shift`` (true log length = log p50_raw + shift + noise)."""
    gens = list(shift)
    g = rng.choice(gens, size=n)
    p50 = np.exp(rng.uniform(4.0, 6.0, n))
    raw = np.c_[p50, p50 * 2.0]
    y = np.maximum(1.0, np.round(p50 * np.exp([shift[x] for x in g] + rng.normal(0, sigma, n))))
    values = [(x, "tenant-a", "chat") for x in g]
    return values, y, raw


def test_mills_ratio_is_the_truncated_normal_mean() -> None:
    z = np.random.default_rng(0).standard_normal(400_000)
    for a in (-2.0, 0.0, 1.0, 2.5):
        assert _mills(a) == pytest.approx(z[z > a].mean(), abs=0.02)
    assert _mills(40.0) == pytest.approx(40.0 + 1 / 40.0)  # asymptote, no overflow


def test_completions_learn_each_generators_level() -> None:
    rng = np.random.default_rng(1)
    values, y, raw = _stream(rng, 3000, {"long": 0.7, "short": -0.4})
    lv = _lv()
    lv.update(values, y, raw)
    assert lv.correction(("long", "tenant-a", "chat")) == pytest.approx(0.7, abs=0.1)
    assert lv.correction(("short", "tenant-a", "chat")) == pytest.approx(-0.4, abs=0.1)
    # a generator never seen gets the shared levels only (global + tenant + category)
    shared = lv.correction(("new", "tenant-a", "chat"))
    assert -0.4 < shared < 0.7
    # p90 coverage of the corrected quantiles tends to the target
    v2, y2, raw2 = _stream(rng, 3000, {"long": 0.7, "short": -0.4})
    hits = 0
    for i in range(len(y2)):
        hits += y2[i] <= lv.adjust([v2[i]], raw2[i : i + 1])[0, 1]
        lv.update_one(v2[i], y2[i], raw2[i])
    assert hits / len(y2) == pytest.approx(0.9, abs=0.03)


def test_batched_updates_equal_one_at_a_time() -> None:
    values, y, raw = _stream(np.random.default_rng(2), 300, {"a": 0.3, "b": -0.2})
    one, many = _lv(), _lv()
    for i in range(len(y)):
        one.update_one(values[i], y[i], raw[i], key=i)
    many.update(values, y, raw, keys=list(range(len(y))))
    probe = [("a", "tenant-a", "chat"), ("b", "x", "y")]
    np.testing.assert_allclose(one.adjust(probe, raw[:2]), many.adjust(probe, raw[:2]))


def test_running_requests_raise_a_new_generators_level_before_any_completes() -> None:
    lv = _lv()
    warm_values, warm_y, warm_raw = _stream(np.random.default_rng(3), 500, {"old": 0.0})
    lv.update(warm_values, warm_y, warm_raw)
    base = lv.correction(("new", "tenant-a", "chat"))
    raw = np.array([[100.0, 200.0]] * 20)
    vals = [("new", "tenant-a", "chat")] * 20
    # 20 requests of the new generator, each already 4x past its predicted median
    lv.observe_running(list(range(20)), vals, [400.0] * 20, raw)
    up = lv.correction(("new", "tenant-a", "chat"))
    assert up > base + 0.5
    assert lv.correction(("old", "tenant-a", "chat")) < up  # mostly its own level moved
    # a later call replaces (not adds to) each request's provisional state
    lv.observe_running(list(range(20)), vals, [400.0] * 20, raw)
    assert lv.correction(("new", "tenant-a", "chat")) == pytest.approx(up)
    # withdrawn when they leave: back to the completions-only state
    lv.forget_running(list(range(20)))
    assert lv.correction(("new", "tenant-a", "chat")) == pytest.approx(base, abs=1e-9)
    assert not lv.running


def test_a_completion_replaces_its_running_state() -> None:
    a, b = _lv(), _lv()
    raw = np.array([[100.0, 200.0]])
    v = [("g", "t", "c")]
    a.observe_running([7], v, [50.0], raw)
    a.update(v, [300.0], raw, keys=[7])
    b.update(v, [300.0], raw)
    assert a.correction(v[0]) == pytest.approx(b.correction(v[0]), abs=1e-12)
    assert not a.running


def test_uncensored_learner_ignores_running_requests_and_zero_tokens_are_no_news() -> None:
    lv = _lv(censored=False)
    lv.observe_running([1], [("g", "t", "c")], [500.0], np.array([[10.0, 20.0]]))
    assert lv.correction(("g", "t", "c")) == 0.0 and not lv.running
    lv = _lv()
    lv.observe_running([1], [("g", "t", "c")], [0.0], np.array([[10.0, 20.0]]))
    assert not lv.running


def test_running_states_are_bounded() -> None:
    lv = _lv(max_running=5)
    raw = np.full((20, 2), 10.0)
    lv.observe_running(list(range(20)), [("g", "t", "c")] * 20, [30.0] * 20, raw)
    assert len(lv.running) == 5 and list(lv.running) == list(range(15, 20))


def test_bad_inputs_raise_clear_errors() -> None:
    lv = _lv()
    raw = np.ones((2, 2))
    with pytest.raises(ValueError, match="level tuples"):
        lv.adjust([("g", "t", "c")], raw)
    with pytest.raises(ValueError, match="expected 3"):
        lv.adjust([("g",), ("h",)], raw)
    with pytest.raises(ValueError, match="> 0 tokens"):
        lv.update_one(("g", "t", "c"), 0.0, raw[0])
    with pytest.raises(ValueError, match="must match"):
        lv.observe_running([1], [("g", "t", "c")] * 2, [3.0, 4.0], raw)
    with pytest.raises(ValueError, match="target"):
        _lv(target=1.5)
    assert math.isfinite(lv.sigma)
