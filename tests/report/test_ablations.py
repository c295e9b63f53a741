"""report.ablations: drift's mechanisms on/off beside the baselines, on a reduced plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import report.ablations as abl
import report.generalisation as gen
from tests.report.conftest import suite_args


def test_variants_switch_exactly_one_mechanism_relative_to_the_shipped_default() -> None:
    from report.jobs import compose

    ref = compose(["+policy=drift"]).policy
    for v in abl.VARIANTS:
        cfg = compose([f"+policy={v.policy}", *v.overrides]).policy
        changed = [k for k in cfg if k not in ref or cfg[k] != ref[k]]
        # one knob (or group) differs; the online learner also needs reclassify (overruns)
        assert len(changed) == 1 or changed == ["reclassify", "online"], (v.label, changed)
    labels = {v.label for v in abl.VARIANTS}
    assert "drift-victim" in labels  # the default-on victim rule is switched off once
    assert "drift-headroom" in labels  # and the default-on admission gate
    for v in abl.GATE_ARMS:  # the gate alone on a baseline: its own config otherwise
        base = compose([f"+policy={v.policy}"]).policy
        cfg = compose([f"+policy={v.policy}", *v.overrides]).policy
        assert [k for k in cfg if k not in base] == ["admission_headroom"]
        assert cfg.admission_headroom == ref.admission_headroom  # drift's default fraction
    for v in abl.VICTIM_ARMS:  # the victim rule alone: the baseline's own config otherwise
        base = compose([f"+policy={v.policy}"]).policy
        cfg = compose([f"+policy={v.policy}", *v.overrides]).policy
        assert [k for k in cfg if cfg[k] != base[k]] == ["victim"]
    assert [v.label for v in abl.TAIL_POINTS] == [f"drift@gamma{g:g}" for g in abl.TAIL_GAMMAS]
    for v, w in zip(abl.GUARD_POINTS, abl.GUARD_WAITS, strict=True):  # the guard alone
        cfg = compose([f"+policy={v.policy}", *v.overrides]).policy
        assert [k for k in cfg if cfg[k] != ref[k]] == ["urgency"]
        assert dict(cfg.urgency) == {"max_wait_s": w}  # no SLO tiers: the guard only


def test_a_baseline_is_dominated_only_by_a_point_at_least_as_good_in_both() -> None:
    def cell(mean: float, p99: float) -> dict:
        return {"mean E2E (s)": [mean], "P99 E2E (s)": [p99]}

    m = {"drift": cell(10, 100), "k1": cell(20, 50), "fifo": cell(30, 60), "tie": cell(15, 60)}
    assert abl.undominated(m, ["k1"], ["fifo", "tie"]) == ["tie"]  # fifo: k1 beats both
    assert abl.undominated(m, [], ["fifo", "tie"]) == ["fifo", "tie"]
    assert abl.undominated(m, ["k1"], ["oracle"]) == []  # oracles are not judged


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_quick_ablations_write_the_document(
    tiny_artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = replace(gen.PLANS["quick"], n_requests=60, entries=("memory_bound",))
    monkeypatch.setitem(gen.PLANS, "quick", plan)
    monkeypatch.setattr(abl, "LOW_LOADS", (0.5,))
    doc = tmp_path / "ABL.md"
    key = abl.main([*suite_args(tmp_path, tiny_artifacts), "--doc", str(doc)])
    text = doc.read_text()
    for part in (
        "## Arms",
        "## Targets",
        "Light load",
        "### memory_bound",
        "`drift-victim`",
        "`sjf+cost_aware` vs `sjf`",
        "## The tail knob",
        "recompute tax",
    ):
        assert part in text
    assert (doc.parent / "figures" / "abl_frontier.png").is_file()
    # every variant and victim arm has one paired delta per seed
    assert len(key["drift+recal|memory_bound|1.1"]) == 1
    d = key["sjf+cost_aware|memory_bound|1.1"][0]
    assert d > -1 and d == d  # a finite relative change
