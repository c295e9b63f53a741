"""Every benchmark at a tiny size, so none of them rots (``python -m benchmarks.run`` is the
real thing). Each test drives the same functions and worker processes the suite uses.

The live-vLLM benchmark starts real vLLM engines (~30 s each on CPU): its smoke test is marked
``vllm`` and ``slow``; the adapter's own per-step timing it reads is also covered by
``tests/scheduler/live``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import bench_policy, bench_predictor, bench_sim, bench_train
from benchmarks.common import BenchError, peers_python, python_cmd, run_measured
from benchmarks.report import write_report
from benchmarks.traces import peer_csv, sim_trace, trace_meta


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts: Path) -> Path:
    """The session's shared tiny predictor (tests/conftest.py)."""
    return tiny_artifacts


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sim_trace(400, cache=tmp_path_factory.mktemp("traces"))


@pytest.fixture(autouse=True)
def _bench_env(artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTSCHED_BENCH_ARTIFACTS", str(artifacts))


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_trace_is_cached_at_the_target_utilisation(trace: Path) -> None:
    meta = trace_meta(trace)
    df = pd.read_parquet(trace)
    assert len(df) == meta["n"] == 400 and meta["utilisation"] == 0.95
    assert meta["rate_rps"] == pytest.approx(0.95 * meta["capacity_rps"])
    assert df["arrival_s"].is_monotonic_increasing
    # a second call reads the cache instead of rebuilding
    assert sim_trace(400, cache=trace.parent) == trace


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_large_traces_tile_the_built_one(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import traces

    monkeypatch.setattr(traces, "MAX_BUILT", 400)
    big = sim_trace(1000, cache=trace.parent)
    df, base = pd.read_parquet(big), pd.read_parquet(trace)
    assert len(df) == 1000 and trace_meta(big)["tiled_from"] == 400
    assert df["arrival_s"].is_monotonic_increasing and df["request_id"].is_unique
    assert (df["prompt_tokens"].iloc[400:800].to_numpy() == base["prompt_tokens"]).all()


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_sim_worker_process_measures_the_run(trace: Path) -> None:
    r = bench_sim.run_ours(trace, "fifo", repeats=1)
    assert r["requests"] == 400 and r["steps"] > 400
    assert r["sim_cpu_s"] > 0 and 0 < r["sim_s"] < r["wall_s"]
    assert r["peak_rss_mb"] > 50 and r["req_per_s"] == pytest.approx(400 / r["sim_s"])
    drift = bench_sim.run_ours(trace, "drift", repeats=1)
    assert drift["requests"] == 400 and drift["prepare_s"] > 0


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.skipif(peers_python() is None, reason="peers venv: bash benchmarks/install_peers.sh")
def test_peers_run_the_same_trace(trace: Path) -> None:
    small = trace.parent / "small.parquet"
    pd.read_parquet(trace).iloc[:60].to_parquet(small)
    small.with_suffix(".json").write_text(trace.with_suffix(".json").read_text())
    csv = pd.read_csv(peer_csv(small))
    assert list(csv.columns) == ["arrival_s", "prompt_tokens", "output_tokens"] and len(csv) == 60
    for peer in bench_sim.PEERS:
        r = bench_sim.run_peer(peer, small, repeats=1, timeout_s=120)
        assert "error" not in r, r.get("error")
        assert r["requests"] == 60 and r["sim_cpu_s"] > 0


def test_failed_worker_names_its_command() -> None:
    with pytest.raises(BenchError, match="bench_sim worker"):
        run_measured(python_cmd("benchmarks.bench_sim", "worker", "/nonexistent.parquet"))


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_policy_overhead_every_policy(trace: Path, artifacts: Path) -> None:
    frame = pd.read_parquet(trace)
    names = bench_policy.all_policies()
    assert {"fifo", "drift", "weighted_fair", "oracle"} <= set(names)
    for name in names:
        pol = bench_sim.make_policy(name, str(artifacts))
        wall, cpu = bench_policy.step_times(pol, frame, n_wait=50, n_run=16, steps=12)
        assert wall.shape == cpu.shape == (12,) and (wall >= 0).all() and (cpu >= 0).all(), name
    with pytest.raises(ValueError, match="needs"):
        bench_policy.step_times(bench_sim.make_policy("fifo", str(artifacts)), frame, 1000)


def test_predictor_latency_and_memory(artifacts: Path) -> None:
    res = bench_predictor.lgbm_worker(str(artifacts), [1, 8])
    assert [r["batch"] for r in res["rows"]] == [1, 8]
    for r in res["rows"]:
        assert r["featurize_us"] > 0 and r["admission_us"] > 0 and r["remaining_us"] > 0
        assert r["per_step_us"] == pytest.approx(r["admission_us"] + r["remaining_us"])
    assert res["load_s"] > 0


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_train_benchmark_runs_train_py() -> None:
    small = [
        "data.sources=[sharegpt]",
        "train.max_val_rows=200",
        "train.max_test_rows=200",
        "train.max_drift_traces=300",
        "predictor.length.n_estimators=10",
        "predictor.length.text_dim=4",
        "predictor.length.min_count=5",
        "predictor.drift.n_estimators=10",
        "baselines.tfidf_ridge.max_vocab=2000",
    ]
    rows = bench_train.measure([800], threads=1, extra=small)
    assert "error" not in rows[0], rows[0].get("error")
    assert rows[0]["rows"] == 800 and rows[0]["wall_s"] > 0 and rows[0]["peak_rss_mb"] > 100


def test_report_renders_results_and_failures(tmp_path: Path) -> None:
    scaling = [
        {
            "policy": p,
            "n": n,
            "runs": 1,
            "sim_s": n / 900,
            "sim_cpu_s": n / 1000,
            "req_per_cpu_s": 1000.0,
            "steps": 10 * n,
            "prepare_s": 0.0,
            "wall_s": 2.0,
            "peak_rss_mb": 200.0,
        }
        for p in ("fifo", "drift")
        for n in (1_000, 10_000)
    ]
    ours = {**scaling[1], "makespan_s": 100.0}
    peer = {
        **ours,
        "sim_s": 50.0,
        "sim_cpu_s": 40.0,
        "cpu_slowdown_vs_ours": 4.0,
        "slowdown_vs_ours": 5.0,
    }
    res = {
        "machine": {"cpu": "test cpu", "cores": 2},
        "sections": {
            "sim": {
                "scaling": scaling,
                "peers": {
                    "n": 10_000,
                    "kv_blocks": 33_000,
                    "ours": ours,
                    "peers": {"vidur": peer, "sched-sim": {"error": "boom"}},
                },
                "traces": {"1000": {"capacity_rps": 1.0, "rate_rps": 0.95}},
            },
            "policy": {
                "rows": [
                    {
                        "policy": "fifo",
                        "waiting": 1_000,
                        "us_per_step": 1.0,
                        "us_block_min": 1.0,
                        "us_block_max": 2.0,
                        "target_us": 100.0,
                        "ok": True,
                    }
                ]
            },
            "predictor": {"error": "RuntimeError('no artifacts')"},
        },
    }
    doc = tmp_path / "BENCHMARKS.md"
    write_report(res, doc, tmp_path / "figures")
    text = doc.read_text()
    assert "test cpu" in text and "## Targets" in text
    assert "10x faster than vidur" in text and "**missed**" in text  # 4x < 10x
    assert "sched-sim could not run" in text and "boom" in text
    assert "This section failed" in text and "no artifacts" in text
    assert "Not run yet" in text  # live and train
    assert (tmp_path / "figures" / "sim_scaling.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "policy_overhead.png").is_file()
    json.dumps(res)  # the results stay JSON


@pytest.mark.vllm
@pytest.mark.slow
def test_live_benchmark_tiny() -> None:
    from benchmarks import bench_live

    share = bench_live.policy_share(waiting=8, max_num_seqs=2, policies=["fifo"])
    assert share["fifo"]["steps"] > 0 and 0 < share["fifo"]["share_pct"] < 100
    rows = bench_live.throughput(n=6, repeats=1, max_num_seqs=2)
    arms = {r["arm"] for r in rows}
    assert {"ours:fifo", "vllm:fcfs", "vllm:priority"} <= arms
    assert all(r["output_tokens"] == 6 * 32 for r in rows if r["arm"] != "ours:drift")
