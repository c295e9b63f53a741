"""Fitted step-time profiles in the simulator, the step-profile fit and the fidelity table.

No vLLM here (fast): profiles are written by ``scheduler.sim.calibrate`` (which imports no
vLLM) and read by the simulator; the live side is in ``tests/scheduler/live``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from report.fidelity import METRICS, SHIPPED_PROFILE, FidelityReport, fidelity_table
from scheduler.policies.fifo import FIFOPolicy
from scheduler.sim.calibrate import fit_step_profile, load_profile, save_profile
from scheduler.sim.cost import LinearCostModel, load_cost_model
from scheduler.sim.engine import SimEngine
from scheduler.sim.profiles import build_profile
from scheduler.sim.synthetic import synthetic_frame

CONF = Path(__file__).resolve().parents[2] / "conf"
LIMITS = dict(max_num_seqs=8, max_num_batched_tokens=512, block_size=128, max_model_len=2048)


def write(tmp_path: Path, model: LinearCostModel, **kw) -> Path:
    return save_profile(model, tmp_path / "fitted.json", {"r2": 0.5}, **kw)


# ----------------------------------------------------------------------------- the sim uses it
def test_fitted_profile_drives_the_simulator_step_times(tmp_path):
    # c_kv = c_pair = 0: every step must last exactly c0 + c_token*(pf+dec) + c_decode*dec
    model = LinearCostModel(c0=0.004, c_token=2e-5, c_kv=0.0, c_pair=0.0, c_decode=3e-4)
    path = write(tmp_path, model, kv_capacity_tokens=128 * 400)
    eng = SimEngine(profile=str(path), **LIMITS)
    assert eng.cost == load_cost_model(path)
    assert eng.num_gpu_blocks == 400  # the profile's KV capacity / block size
    assert eng.describe()["c_decode_s"] == pytest.approx(3e-4)
    res = eng.run(synthetic_frame(40, seed=3, prompt_median=100, output_median=40), FIFOPolicy())
    st = res.steps
    want = 0.004 + 2e-5 * (st["prefill_tokens"] + st["decode_seqs"]) + 3e-4 * st["decode_seqs"]
    np.testing.assert_allclose(st["duration_s"], want, rtol=1e-12)
    assert (st["decode_seqs"] > 1).any()  # c_decode really entered


def test_prefill_sequences_are_charged_and_old_cost_objects_still_work():
    # sparse arrivals, short requests: every request runs alone and prefills in one chunk, so
    # the schedule is the same under both models and c_prefill_seq adds exactly n x c
    wl = synthetic_frame(20, seed=4, rate_rps=0.05, prompt_median=50, output_median=5)
    base = LinearCostModel(c0=0.002, c_token=1e-5, c_kv=0.0)
    plus = LinearCostModel(c0=0.002, c_token=1e-5, c_kv=0.0, c_prefill_seq=0.01)
    kw = dict(LIMITS, max_num_batched_tokens=8192, num_gpu_blocks=1000)
    d0 = SimEngine(cost=base, **kw).run(wl, FIFOPolicy()).steps["duration_s"].sum()
    d1 = SimEngine(cost=plus, **kw).run(wl, FIFOPolicy()).steps["duration_s"].sum()
    assert d1 - d0 == pytest.approx(20 * 0.01)

    class FourArgs:  # the original cost-model signature (ARCHITECTURE.md): still plugs in
        def step_time(self, prefill_tokens, decode_seqs, kv_tokens, prefill_pairs=0.0):
            return base.step_time(prefill_tokens, decode_seqs, kv_tokens, prefill_pairs)

    d2 = SimEngine(cost=FourArgs(), **kw).run(wl, FIFOPolicy()).steps["duration_s"].sum()
    assert d2 == pytest.approx(d0)


def test_calibrate_cli_fits_a_run_directory(tmp_path):
    from report.calibrate import main

    truth = LinearCostModel(c0=0.003, c_token=2e-5, c_kv=0.0, c_decode=3e-4)
    run = tmp_path / "run"
    run.mkdir()
    synthetic_steps(500, truth, noise=0.02).to_parquet(run / "steps.parquet")
    limits = dict(LIMITS, num_gpu_blocks=300)
    (run / "summary.json").write_text(json.dumps({"engine_meta": {**limits, "vllm": "0.32.0"}}))
    out = tmp_path / "fit.json"
    assert main([str(run), "--out", str(out), "--note", "unit test"]) == 0
    doc = json.loads(out.read_text())
    assert doc["kv_capacity_tokens"] == 300 * 128 and doc["limits"] == limits
    assert doc["meta"]["note"] == "unit test" and doc["meta"]["vllm"] == "0.32.0"
    eng = SimEngine(profile=str(out), **LIMITS)
    assert eng.num_gpu_blocks == 300
    assert eng.cost.c_decode == pytest.approx(3e-4, rel=0.1)
    with pytest.raises(FileNotFoundError, match=r"steps\.parquet"):
        main([str(tmp_path), "--out", str(out)])


def test_a_slower_profile_gives_longer_latencies(tmp_path):
    wl = synthetic_frame(40, seed=1, rate_rps=2.0, prompt_median=100, output_median=40)
    fast = write(
        tmp_path, LinearCostModel(c0=0.002, c_token=1e-5, c_kv=0.0), kv_capacity_tokens=10**5
    )
    slow = save_profile(
        LinearCostModel(c0=0.004, c_token=1e-5, c_kv=0.0, c_decode=1e-3),
        tmp_path / "slow.json",
        kv_capacity_tokens=10**5,
    )
    e = {}
    for name, p in (("fast", fast), ("slow", slow)):
        r = SimEngine(profile=str(p), **LIMITS).run(wl, FIFOPolicy()).records
        e[name] = float((r["finish_s"] - r["arrival_s"]).mean())
    assert e["slow"] > 1.5 * e["fast"]


def test_shipped_cpu_profile_loads_with_provenance():
    assert SHIPPED_PROFILE.is_file(), "python -m report.fidelity --save-profile ..."
    doc = json.loads(SHIPPED_PROFILE.read_text())
    for k in ("measured_utc", "device", "vllm", "torch", "model", "how", "note", "runs"):
        assert doc["meta"][k], k
    for run in doc["meta"]["runs"]:  # every run it was fitted on, with its own provenance
        for k in ("policy", "n_requests", "seed", "rate_rps", "load_avg_1m", "measured_utc"):
            assert k in run, k
    assert doc["fit"]["sum_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert doc["kv_capacity_tokens"] >= 2048
    assert doc["limits"]["block_size"] >= 1 and doc["limits"]["max_num_seqs"] >= 1
    p = build_profile(str(SHIPPED_PROFILE))
    assert p.cost.c0 > 0 and p.kv_capacity_tokens == doc["kv_capacity_tokens"]
    # a decode step of 8 sequences on CPU: milliseconds, not GPU microseconds nor seconds
    assert 1e-3 < p.cost.step_time(0, 8, 4000) < 0.1
    # relative paths resolve from the repo root as well as the cwd
    rel = "scheduler/sim/fitted/cpu_tiny_llama.json"
    assert build_profile(rel).cost == p.cost


@pytest.mark.parametrize(
    "overrides",
    [
        ["engine=sim_cpu_tiny"],
        ["engine=sim", f"engine.profile={SHIPPED_PROFILE}", "engine.block_size=128"],
    ],
)
def test_evaluate_config_selects_the_fitted_profile(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    eng = instantiate(cfg.engine)
    assert eng.cost == load_cost_model(SHIPPED_PROFILE)
    assert eng.profile.name == str(cfg.engine.profile)


def test_bad_profile_files_are_rejected_with_the_field(tmp_path):
    good = json.loads(write(tmp_path, LinearCostModel(0.001, 1e-5, 0.0)).read_text())
    bad_kind = tmp_path / "kind.json"
    bad_kind.write_text(json.dumps({**good, "kind": "vidur"}))
    with pytest.raises(ValueError, match="'kind'"):
        SimEngine(profile=str(bad_kind))
    neg = tmp_path / "neg.json"
    neg.write_text(json.dumps({**good, "c_token": -1.0}))
    with pytest.raises(ValueError, match="c_token"):
        load_profile(neg)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        build_profile(str(broken))
    with pytest.raises(FileNotFoundError, match=r"report\.fidelity"):
        build_profile(str(tmp_path / "missing.json"))
    # no KV capacity recorded: the engine asks for num_gpu_blocks
    nokv = write(tmp_path, LinearCostModel(0.001, 1e-5, 0.0))
    with pytest.raises(ValueError, match="num_gpu_blocks"):
        SimEngine(profile=str(nokv))
    assert SimEngine(profile=str(nokv), num_gpu_blocks=64, block_size=32).num_gpu_blocks == 64
    with pytest.raises(ValueError, match="unknown simulator profile"):
        build_profile("l4-llama9")


def test_version_1_profiles_still_load(tmp_path):
    v1 = {
        "kind": "driftsched.linear_step_time",
        "version": 1,
        **{"c0": 0.001, "c_token": 1e-5, "c_kv": 1e-8, "c_pair": 0.0},
    }
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(v1))
    m = load_profile(p)
    assert m.c_decode == 0.0 and m.step_time(10, 2, 100) == pytest.approx(0.001 + 12e-5 + 1e-6)


# ----------------------------------------------------------------------------- the fit
def synthetic_steps(n: int, truth: LinearCostModel, noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dec = rng.integers(0, 17, n)
    pf = np.where(rng.random(n) < 0.1, rng.integers(16, 2048, n), 0)
    dec[(dec == 0) & (pf == 0)] = 1
    kv = dec * rng.integers(50, 1500, n) + pf
    pairs = pf * (pf / 2.0)
    nps = (pf > 0).astype(np.int64)
    t = np.array([truth.step_time(a, b, c, d, e) for a, b, c, d, e in zip(pf, dec, kv, pairs, nps)])
    t = t * (1 + noise * rng.standard_normal(n))
    return pd.DataFrame(
        {
            "prefill_tokens": pf,
            "decode_seqs": dec,
            "kv_read_tokens": kv,
            "prefill_pairs": pairs,
            "prefill_seqs": nps,
            "duration_s": t,
            "exec_s": 0.9 * t,
            "sched_s": 0.02 * t,
            "busy": True,
        }
    )


def test_fit_recovers_known_coefficients_and_is_unbiased():
    truth = LinearCostModel(
        c0=0.003, c_token=2e-5, c_kv=1e-7, c_pair=1e-9, c_decode=3e-4, c_prefill_seq=2e-3
    )
    steps = synthetic_steps(4000, truth, noise=0.05)
    steps.loc[5, ["duration_s", "exec_s", "sched_s"]] = [5.0, 4.5, 0.1]  # one OS hiccup
    steps.loc[6, "busy"] = False  # idle gap: never used for the wall-time fit
    steps.loc[6, "duration_s"] = 100.0
    model, stats = fit_step_profile(steps, trim_quantile=0.999)
    assert stats["target"] == "wall" and stats["n_steps"] < 4000
    assert stats["r2"] > 0.9
    assert stats["overhead_share"] == pytest.approx(0.08, abs=1e-6)
    for k in ("c0", "c_token", "c_decode", "c_prefill_seq"):
        assert getattr(model, k) == pytest.approx(getattr(truth, k), rel=0.1), k
    _, st2 = fit_step_profile(steps)
    assert st2["sum_ratio"] == pytest.approx(1.0, abs=1e-6)  # least squares: the total is kept
    ex, st3 = fit_step_profile(steps, target="exec", trim_quantile=0.999)
    assert st3["target"] == "exec"  # model time only: 90% of the wall time here
    assert ex.step_time(0, 8, 4000) == pytest.approx(0.9 * model.step_time(0, 8, 4000), rel=0.05)
    with pytest.raises(ValueError, match="usable steps"):
        fit_step_profile(steps.head(5))
    with pytest.raises(ValueError, match="target"):
        fit_step_profile(steps, target="gpu")
    with pytest.raises(ValueError, match="busy"):
        fit_step_profile(steps.drop(columns="busy"))


# ----------------------------------------------------------------------------- the table
def test_fidelity_table_structure_and_errors(tmp_path):
    wl = synthetic_frame(60, seed=2, rate_rps=3.0, prompt_median=100, output_median=40)
    kw = dict(kv_capacity_tokens=10**5)
    a = SimEngine(
        profile=str(write(tmp_path, LinearCostModel(0.004, 1e-5, 0.0), **kw)), **LIMITS
    ).run(wl, FIFOPolicy())
    b_path = save_profile(LinearCostModel(0.0044, 1e-5, 0.0), tmp_path / "b.json", **kw)
    b = SimEngine(profile=str(b_path), **LIMITS).run(wl, FIFOPolicy())
    t = fidelity_table(a.records, {"b": b.records, "same": a.records})
    assert list(t.index) == [m for m, _ in METRICS]
    assert list(t.columns) == ["live", "sim[b]", "err[b]", "sim[same]", "err[same]"]
    assert np.isfinite(t.to_numpy()).all()
    assert (t["err[same]"] == 0).all()
    assert t.loc["tpot_mean_s", "err[b]"] == pytest.approx(0.1, abs=0.03)  # 10% slower steps
    rep = FidelityReport(table=t, meta={"x": math.nan, "n": np.int64(3)})
    md = rep.to_markdown()
    assert md.splitlines()[0].startswith("| metric | live | sim[b] | err[b]")
    assert len(md.splitlines()) == 2 + len(METRICS)
    js = json.loads(json.dumps(rep.to_json(), allow_nan=False))
    assert js["meta"] == {"x": None, "n": 3}
    assert set(js["metrics"]) == {m for m, _ in METRICS}
