"""Hand-checkable Kaplan-Meier quantiles and the censored online calibrator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.censored import GLOBAL, CensoredCalibrator, km_quantile


def test_km_without_censoring_is_the_inverted_cdf_quantile() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=101)
    for q in (0.1, 0.5, 0.9):
        got = km_quantile(z, np.ones(z.size, bool), np.ones(z.size), q)
        assert got == pytest.approx(np.quantile(z, q, method="inverted_cdf"))


def test_km_hand_computed_censored_median() -> None:
    # 10 requests: 5 finished at 0..4, 5 still running at 4.5 (their lengths exceed 4.5).
    # At risk 10, 9, 8, 7, 6 at the events: S(4) = 9/10 * 8/9 * 7/8 * 6/7 * 5/6 = 0.5
    z = np.r_[np.arange(5.0), np.full(5, 4.5)]
    ev = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    w = np.ones(10)
    assert km_quantile(z, ev, w, 0.5) == 4.0
    assert km_quantile(z, ev, w, 0.3) == 2.0  # S(2) = 0.7
    # 0.9 lies beyond every censored value: unknown
    assert km_quantile(z, ev, w, 0.9) == math.inf
    # the naive median of the finished ones only is 2: biased short
    assert np.quantile(z[ev], 0.5, method="inverted_cdf") == 2.0


def test_km_ties_count_censored_as_at_risk() -> None:
    # event at 1 and a censoring at 1: the censored one was at risk at 1 -> S(1) = 1/2
    assert km_quantile(np.array([1.0, 1.0]), np.array([True, False]), np.ones(2), 0.5) == 1.0


def test_km_weights_act_like_repeats() -> None:
    z = np.array([0.0, 1.0, 2.0])
    ev = np.ones(3, bool)
    assert km_quantile(z, ev, np.array([1.0, 1.0, 3.0]), 0.5) == km_quantile(
        np.array([0.0, 1.0, 2.0, 2.0, 2.0]), np.ones(5, bool), np.ones(5), 0.5
    )


def test_km_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one shape"):
        km_quantile(np.zeros(2), np.ones(3, bool), np.ones(2), 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        km_quantile(np.zeros(2), np.ones(2, bool), np.ones(2), 1.0)


def _cal(**kw: object) -> CensoredCalibrator:
    return CensoredCalibrator(prior_weight=1e-9, min_count=1, **kw)


def test_uncensored_level_equals_the_empirical_median_of_log_ratios() -> None:
    cal = _cal()
    actual = np.array([50.0, 100.0, 200.0, 400.0, 800.0])
    pred = np.tile([100.0, 200.0], (5, 1))
    cal.update(["g"] * 5, actual, pred)
    mu, s = cal.corrections("g")
    assert mu == pytest.approx(math.log(2.0))  # median ratio 200/100
    # 0.9 quantile of log(actual/200) over 5 values (inverted cdf): the 5th, log 4
    assert s == pytest.approx(math.log(4.0))
    out = cal.adjust(["g"], np.array([[10.0, 20.0]]))
    assert out[0] == pytest.approx([20.0, 80.0])


def test_censoring_corrects_the_short_biased_completions() -> None:
    # a generator whose lengths are 100..1000 (median 550) while the model says 100. Only the
    # shortest half has finished; the long half is running at 500 tokens each.
    true = np.arange(100.0, 1001.0, 100.0)
    pred = np.tile([100.0, 300.0], (10, 1))
    short, long_ = true[:5], true[5:]
    naive = _cal()
    naive.update(["g"] * 5, short, pred[:5])
    cens = _cal()
    cens.update(["g"] * 5, short, pred[:5])
    cens.observe_running(list(range(5)), ["g"] * 5, np.full(5, 500.0), pred[5:])
    mu_naive = naive.corrections("g")[0]
    mu_cens = cens.corrections("g")[0]
    assert math.exp(mu_naive) == pytest.approx(3.0)  # median of 100..500 / 100
    assert math.exp(mu_cens) == pytest.approx(5.0)  # KM median = the 5th completion: 500
    # the true median ratio is 5.5: the censored estimate is far closer than the naive one
    assert abs(math.exp(mu_cens) - 5.5) < abs(math.exp(mu_naive) - 5.5)
    # finishing the running requests removes their censored states
    cens.update(["g"] * 5, long_, pred[5:], keys=list(range(5)))
    assert not cens.running and cens.count("g") == 10


def test_running_state_is_overwritten_and_bounded() -> None:
    cal = _cal(max_running=3)
    p = np.tile([10.0, 20.0], (4, 1))
    cal.observe_running([1, 2, 3, 4], ["g"] * 4, [5.0, 5.0, 5.0, 5.0], p)
    assert list(cal.running) == [2, 3, 4]  # oldest dropped
    cal.observe_running([2], ["g"], [0.0], p[:1])  # 0 tokens: no news, state kept
    cal.observe_running([3], ["g"], [9.0], p[:1])
    assert cal.running[3][1] == pytest.approx(math.log(9.0 / 10.0))
    cal.forget_running([2, 99])
    assert list(cal.running) == [4, 3]


def test_window_bounds_memory_and_tracks_recent_traffic() -> None:
    cal = _cal(window=10)
    pred = np.tile([100.0, 200.0], (30, 1))
    cal.update(["g"] * 20, np.full(20, 100.0), pred[:20])
    cal.update(["g"] * 10, np.full(10, 300.0), pred[:10])
    assert len(cal.done["g"]) == 10
    assert math.exp(cal.corrections("g")[0]) == pytest.approx(3.0)


def test_groups_fall_back_along_the_chain_until_min_count() -> None:
    cal = CensoredCalibrator(prior_weight=1e-9, min_count=3)
    pred = np.tile([100.0, 200.0], (3, 1))
    cal.update([("m", "a")] * 2, [200.0, 200.0], pred[:2])
    cal.update([("m", "b")], [200.0], pred[:1])
    # (m, a) has 2 < 3 observations -> the model level (m,) with 3 serves it
    assert cal.corrections(("m", "a")) == cal.corrections(("m",))
    assert math.exp(cal.corrections(("m", "a"))[0]) == pytest.approx(2.0)
    # an unknown group gets the global estimate
    assert cal.corrections(("x", "y")) == cal.corrections(GLOBAL)


def test_warm_start_holds_until_data_outweighs_it() -> None:
    cal = CensoredCalibrator.from_residuals(
        np.full(50, 100.0), np.tile([100.0, 150.0], (50, 1)), prior_weight=20.0, min_count=1
    )
    assert cal.corrections("g") == pytest.approx((0.0, math.log(100 / 150)))
    cal.update(["g"] * 5, np.full(5, 400.0), np.tile([100.0, 150.0], (5, 1)))
    assert cal.corrections("g")[0] == pytest.approx(0.0)  # 5 vs 20 pseudo-observations
    cal.update(["g"] * 30, np.full(30, 400.0), np.tile([100.0, 150.0], (30, 1)))
    assert math.exp(cal.corrections("g")[0]) == pytest.approx(4.0)


def test_default_prior_is_a_calibrated_model() -> None:
    cal = CensoredCalibrator()
    mu, s = cal.corrections("g")
    assert mu == pytest.approx(0.0, abs=1e-9) and s == pytest.approx(0.0, abs=1e-9)
    out = cal.adjust(["g", "h"], np.array([[100.0, 300.0], [5.0, 1.0]]))
    assert out[1, 1] >= out[1, 0]  # p90 never below p50


def test_bad_shapes_are_named() -> None:
    cal = CensoredCalibrator()
    with pytest.raises(ValueError, match="lengths must match"):
        cal.update(["g"], [1.0, 2.0], np.ones((2, 2)))
    with pytest.raises(ValueError, match="> 0 tokens"):
        cal.update_one("g", 0.0, (1.0, 2.0))
    with pytest.raises(ValueError, match="shape"):
        cal.adjust(["g"], np.ones((2, 2)))


def _km_reference(z: np.ndarray, ev: np.ndarray, w: np.ndarray, q: float) -> float:
    """Textbook product-limit estimator, one distinct event time at a time."""
    s = 1.0
    for t in np.unique(z[ev]):
        d = w[(z == t) & ev].sum()
        n = w[z >= t].sum()
        s *= 1.0 - d / n
        if 1.0 - s >= q - 1e-12:
            return float(t)
    return math.inf


def test_km_matches_the_textbook_estimator_on_random_censored_data() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        z = rng.integers(0, 8, n).astype(float)  # many ties
        ev = rng.random(n) < 0.6
        w = rng.choice([0.5, 1.0, 2.0], n)
        for q in (0.1, 0.5, 0.9):
            assert km_quantile(z, ev, w, q) == _km_reference(z, ev, w, q)
