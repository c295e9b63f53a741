"""LearnedLengths' online learner (``online=``), censored running updates and recent_error:
off by default with results unchanged; on, it learns a generator's scale while serving."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from scheduler.engine import requests_from_frame
from scheduler.faults import GuardedLengths
from scheduler.policies.estimates import LearnedLengths, level_values, make_online
from scheduler.sim.synthetic import synthetic_frame
from tests.tiny_predictor import with_prompts


def _requests(n: int = 60, seed: int = 3, model: str = "unknown") -> list:
    df = with_prompts(synthetic_frame(n, seed=seed), seed=seed)
    df["model"] = model
    return requests_from_frame(df)


def _finish(reqs: list, factor: float, lengths: LearnedLengths) -> None:
    """Complete ``reqs`` with true lengths ``factor`` x their raw admission p50."""
    for r in reqs:
        r.num_output_tokens = max(1, round(factor * float(lengths._raw[r.index][0])))
    lengths.observe(reqs)


def test_online_off_changes_nothing(tiny_artifacts: Path) -> None:
    for recal in (False, True):
        plain = LearnedLengths(tiny_artifacts, recalibrate=recal)
        off = LearnedLengths(tiny_artifacts, recalibrate=recal, online=None)
        assert off.online is None and (off.recal is None) == (not recal)
        a, b = _requests(), _requests()
        np.testing.assert_array_equal(plain.admission(a[:30]), off.admission(b[:30]))
        for r in b[30:]:
            r.num_output_tokens = 500
        off.observe_running(b[30:])  # a no-op without the learner
        _finish(a[:30], 3.0, plain)
        _finish(b[:30], 3.0, off)
        np.testing.assert_array_equal(plain.admission(a[30:]), off.admission(b[30:]))


def test_online_learns_a_generators_scale_from_completions(tiny_artifacts: Path) -> None:
    lengths = LearnedLengths(tiny_artifacts, online=True)
    assert lengths.recal is None  # the learner replaces the recalibration
    reqs = _requests(120, model="gen-long")
    lengths.featurize(reqs)
    first = lengths.admission(reqs[:60])
    np.testing.assert_allclose(first, np.stack([lengths._raw[r.index] for r in reqs[:60]]))
    _finish(reqs[:60], 3.0, lengths)  # this generator runs 3x longer than predicted
    raw = np.stack([lengths._raw[r.index] for r in reqs[60:]])
    later = lengths.admission(reqs[60:])
    ratio = np.median(later[:, 0] / raw[:, 0])
    assert 2.0 < ratio < 3.5
    # another generator moves far less (only the shared levels learned)
    other = _requests(20, seed=9, model="gen-other")
    o = lengths.admission(other)
    o_raw = np.stack([lengths._raw[r.index] for r in other])
    assert np.median(o[:, 0] / o_raw[:, 0]) < ratio


def test_running_requests_raise_the_estimate_before_any_completes(tiny_artifacts: Path) -> None:
    lengths = LearnedLengths(tiny_artifacts, online={"levels": ["model"], "prior_count": 2})
    reqs = _requests(80, model="gen-new")
    base = lengths.admission(reqs[40:])[:, 0].copy()
    for r in reqs[:40]:
        lengths.featurize([r])
        r.num_output_tokens = round(5 * float(lengths._raw[r.index][0]))
    lengths.observe_running(reqs[:40])
    assert (lengths.admission(reqs[40:])[:, 0] > 1.5 * base).all()
    lengths.forget(reqs[:40])  # aborted: their censored evidence is withdrawn
    np.testing.assert_allclose(lengths.admission(reqs[40:])[:, 0], base)
    assert not lengths.online.running


def test_recent_error_is_the_median_log_error_of_served_p50(tiny_artifacts: Path) -> None:
    lengths = LearnedLengths(tiny_artifacts, recalibrate=False, error_min_count=20)
    reqs = _requests(60)
    served = lengths.admission(reqs)[:, 0]
    assert math.isnan(lengths.recent_error())
    rng = np.random.default_rng(0)
    factors = np.exp(rng.normal(0, 0.7, 30))
    for r, p, f in zip(reqs[:30], served[:30], factors):
        r.num_output_tokens = max(1, round(p * f))
    lengths.observe(reqs[:30])
    want = np.median(
        [abs(math.log(r.num_output_tokens / p)) for r, p in zip(reqs[:30], served[:30])]
    )
    assert lengths.recent_error() == pytest.approx(want)
    # a second admission of the same request does not change what was served first
    lengths.admission(reqs[30:])
    assert not any(r.index in lengths._served for r in reqs[:30])


def test_make_online_options(tiny_artifacts: Path) -> None:
    assert make_online(None) is None and make_online(False) is None
    lv = make_online({"levels": ["model", "prompt"], "prior_count": 8})
    assert lv.levels == ("model", "prompt") and lv.prior_count == 8
    with pytest.raises(ValueError, match="unknown option"):
        make_online({"level": ["model"]})
    with pytest.raises(TypeError, match="OnlineLevels"):
        make_online(object())
    r = _requests(2)[0]
    v = level_values(r, ("model", "tenant", "category", "prompt"))
    assert v[:3] == (r.model, r.tenant, r.category) and isinstance(v[3], int)


def test_guarded_lengths_forward_the_online_surface(tiny_artifacts: Path) -> None:
    inner = LearnedLengths(tiny_artifacts, online=True, error_min_count=5)
    g = GuardedLengths(inner)
    reqs = _requests(30, model="gen-g")
    g.featurize(reqs)
    g.admission(reqs)
    for r in reqs[:20]:
        r.num_output_tokens = 50
    g.observe_running(reqs[:10])
    g.observe(reqs[10:20])
    g._pool.submit(lambda: None).result()  # background bookkeeping done
    assert len(inner.online.running) == 10
    assert math.isfinite(g.recent_error())
