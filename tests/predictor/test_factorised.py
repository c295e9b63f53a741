"""predictor.factorised.FactorisedLength: prompt effect + generator effect, kept apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

from predictor.artifacts import ArtifactError
from predictor.factorised import FactorisedLength, additive_effects
from predictor.metrics import kendall_tau
from predictor.serving import load_length_artifact, load_predictor
from tests.predictor.conftest import MODELS, make_trace


def _fit(tr: pd.DataFrame, te: pd.DataFrame) -> FactorisedLength:
    return FactorisedLength(n_estimators=60, text_dim=4, min_child_samples=5).fit(
        tr, tr["output_tokens"], eval_set=(te, te["output_tokens"])
    )


def test_additive_effects_recover_a_two_way_table() -> None:
    rng = np.random.default_rng(0)
    p_eff = rng.normal(0, 1, 50)
    g_eff = {"a": 0.5, "b": -0.5, "c": 0.0}
    prompts = np.repeat(np.arange(50), 3)
    gens = np.tile(["a", "b", "c"], 50)
    ly = p_eff[prompts] + np.array([g_eff[g] for g in gens])
    p, a = additive_effects(ly, prompts, gens)
    assert a.to_dict() == pytest.approx(g_eff, abs=1e-9)
    np.testing.assert_allclose(p.reindex(np.arange(50)).to_numpy(), p_eff, atol=1e-9)


def test_generator_levels_and_an_unseen_generator() -> None:
    tr, te = make_trace(n_prompts=300, seed=1), make_trace(n_prompts=100, seed=2)
    m = _fit(tr, te)
    lv = {g: a for g, (a, _) in m.generators_.items()}
    for g, eff in MODELS.items():  # the synthetic generator effects (mean 0 over them)
        assert lv[g] - np.mean(list(lv.values())) == pytest.approx(eff, abs=0.12)
    q = m.predict_quantiles(te)
    assert kendall_tau(te["output_tokens"], q[:, 0]) > 0.6
    assert np.mean(te["output_tokens"] <= q[:, 1]) == pytest.approx(0.9, abs=0.05)
    # an unseen generator: the mean over generators (no family with two trained members)
    new = te.assign(model="brand-new-model")
    assert np.allclose(m.featurize(new)[:, -2], m.default_[0])
    # a Llama name when two Llamas were trained: the family's mean
    m.families_ = {"1": (0.3, 0.5)}  # family code 1 = llama (two trained Llamas' mean)
    assert m.featurize(te.assign(model="llama-c-1b"))[0, -2] == pytest.approx(0.3)


def test_save_load_roundtrip_and_tampering(tmp_path: Path) -> None:
    tr, te = make_trace(n_prompts=120, seed=3), make_trace(n_prompts=40, seed=4)
    m = _fit(tr, te)
    with pytest.raises(NotFittedError):
        FactorisedLength().predict_quantiles(te)
    d = m.save(tmp_path / "art" / "length")
    back = load_length_artifact(d)
    np.testing.assert_allclose(back.predict_quantiles(te), m.predict_quantiles(te))
    pred = load_predictor(tmp_path / "art", require_drift=False)  # servable by sjf
    np.testing.assert_allclose(pred.predict_admission(pred.featurize(te)), m.predict_quantiles(te))
    (d / "generators.json").write_text("{}")
    with pytest.raises(ArtifactError, match="sha256"):
        load_length_artifact(d)
