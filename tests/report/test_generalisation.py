"""report.generalisation: the suite pipeline on a reduced plan, and its presets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import report.generalisation as gen
from tests.report.conftest import suite_args


def test_every_suite_entry_is_a_documented_preset() -> None:
    assert len(gen.SUITE) >= 7
    for e in gen.SUITE:
        assert (gen.REPO / "conf" / "workload" / f"{e.workload}.yaml").is_file()
        assert (gen.REPO / "conf" / "engine" / f"{e.engine}.yaml").is_file()
        assert "Tests:" in gen.workload_header(e.workload)
    own = {e.name: gen.preset_predictor(e) for e in gen.SUITE}
    assert own["unseen_source"][0] == "artifacts/loso_sharegpt"
    assert "data.split.held_out=sharegpt" in own["unseen_source"][1]
    assert own["unseen_prompts"] is None
    # the harder presets: each judged with its own predictor, trained without what it serves
    assert {"cross_shift", "long_generators", "mixed_generators"} <= set(own)
    assert "data.split.kind=leave_out" in own["cross_shift"][1]
    assert own["mixed_generators"][0] == "artifacts/mixed_generators"


@pytest.mark.parametrize("entry", gen.SUITE, ids=lambda e: e.name)
def test_every_suite_preset_runs_alone_on_its_engine(entry: gen.Entry) -> None:
    """`workload=<name>` alone composes the engine the suite runs it on (a preset that needs
    its own engine selects it), and an explicit `engine=...` still wins."""
    from report.jobs import compose

    alone = compose([f"workload={entry.workload}"])
    suite = compose([f"workload={entry.workload}", f"engine={entry.engine}"])
    assert alone.engine == suite.engine
    assert alone.predictor_dir == suite.predictor_dir
    if entry.engine != "sim":
        assert compose([f"workload={entry.workload}", "engine=sim"]).engine == compose([]).engine


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_quick_suite_writes_the_document(
    tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = replace(gen.PLANS["quick"], n_requests=60, entries=("unseen_prompts", "memory_bound"))
    monkeypatch.setitem(gen.PLANS, "quick", plan)
    doc = tmp_path / "GEN.md"
    key = gen.main([*suite_args(tmp_path, tiny_artifacts), "--doc", str(doc)])
    text = doc.read_text()
    for part in ("## Reading", "## Headroom capture", "### unseen_prompts", "### memory_bound"):
        assert part in text
    assert (tmp_path / "figures" / "generalisation_quick.png").is_file()
    assert set(key) == {"unseen_prompts", "memory_bound"}
    # the predictor's own numbers on each workload, cold and online, in the document too
    pn = json.loads((tmp_path / "runs" / "quick" / "predictor_numbers.json").read_text())
    assert set(pn) == {"unseen_prompts", "memory_bound"}
    for sc in pn.values():
        assert {"kendall_tau", "tau_within_generator", "mae"} <= set(sc["cold"])
        assert sc["online"]["mae"] > 0
    assert "## The predictor on each workload" in text and "Kendall tau" in text
    drift = key["unseen_prompts"]["1.1"]["drift"]
    assert drift["train_overlap"] == 0.0
    # memory-bound: a real FIFO-oracle gap even at 60 requests
    assert key["memory_bound"]["1.1"]["fifo"]["capture"] == 0.0
    assert key["memory_bound"]["1.1"]["oracle"]["capture"] == pytest.approx(1.0)
    s = json.loads(
        (
            tmp_path / "runs" / "quick" / "memory_bound" / "u1.1" / "seed0" / "sjf" / "summary.json"
        ).read_text()
    )
    assert s["engine_meta"]["num_gpu_blocks"] == 532
