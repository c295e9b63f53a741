"""report.ablations: drift's mechanisms on/off beside the baselines, on a reduced plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import report.ablations as abl
import report.generalisation as gen
from tests.report.conftest import suite_args


def test_variants_switch_exactly_one_mechanism_on() -> None:
    core = set(abl.CORE)
    by = {v.label: v for v in abl.VARIANTS}
    for mech in ("recal", "repredict", "preempt", "guard"):
        v = by[f"drift+{mech}"]
        # CORE with exactly that mechanism's settings switched on
        assert set(v.overrides) - core == set(abl.ON[mech])
        assert {o.split("=")[0] for o in core - set(v.overrides)} == {
            o.split("=")[0] for o in abl.ON[mech]
        }
    assert set(by["drift-all"].overrides) == {o for on in abl.ON.values() for o in on}
    assert by["drift-core"].overrides == abl.CORE
    assert set(by["drift+boost"].overrides) - core == {"policy.boost_gamma=0.001"}


def test_quick_ablations_write_the_document(
    suite_artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = replace(gen.PLANS["quick"], n_requests=60, entries=("memory_bound",))
    monkeypatch.setitem(gen.PLANS, "quick", plan)
    monkeypatch.setattr(abl, "LOW_LOADS", (0.5,))
    doc = tmp_path / "ABL.md"
    key = abl.main([*suite_args(tmp_path, suite_artifacts), "--doc", str(doc)])
    text = doc.read_text()
    for part in ("## Arms", "## Targets", "Light load", "### memory_bound", "`drift-core`"):
        assert part in text
    # the core variant is its own reference; every other variant has one paired delta per seed
    assert len(key["drift+recal|memory_bound|1.1"]) == 1
    d = key["drift|memory_bound|1.1"][0]
    assert d > -1 and d == d  # a finite relative change
