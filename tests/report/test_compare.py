"""compare.py on a real sweep: the table's numbers against metrics computed directly from the
record tables, the confidence intervals, ratios, figures and the refusal of incomplete runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import compare
from report.runs import discover_runs, job_finished
from report.tables import t_interval
from tests.report.conftest import POLICIES, SEEDS

T975 = {1: 12.706204736174707, 2: 4.302652729749464}  # Student-t 97.5% quantiles, df = 1, 2


def direct_metrics(run_dir: Path) -> dict[str, float]:
    """E2E mean / P99 and premium TTFT P99 straight from records.parquet (no scheduler.metrics)."""
    r = pd.read_parquet(run_dir / "records.parquet")
    fin = r[r["status"] == "finished"]
    e2e = (fin["finish_s"] - fin["arrival_s"]).to_numpy()
    prem = fin[fin["tier"] == "premium"]
    ttft_prem = (prem["first_token_s"] - prem["arrival_s"]).to_numpy()
    return {
        "e2e_mean_s": float(e2e.mean()),
        "e2e_p99_s": float(np.quantile(e2e, 0.99)),
        "premium_ttft_p99_s": float(np.quantile(ttft_prem, 0.99)),
        "preemptions": float(r["num_preemptions"].sum()),
    }


def job_dirs(sweep: Path) -> dict[tuple[str, int], Path]:
    out = {}
    for s in sweep.rglob("summary.json"):
        if "comparison" in s.parts:
            continue
        summary = json.loads(s.read_text())
        out[(summary["policy"], int(summary["seed"]))] = s.parent
    return out


@pytest.fixture(scope="module")
def report(sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cmp")
    rc = compare.main([str(sweep_dir), "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_sweep_wrote_every_job(sweep_dir: Path) -> None:
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == {(p, s) for p in POLICIES for s in SEEDS}
    # job directories are named by their overrides (deterministic: a re-run finds them)
    assert all("seed=" in d.name and "+policy=" in d.name for d in jobs.values())
    assert all(job_finished(d) for d in jobs.values())


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_table_matches_records(sweep_dir: Path, report: Path) -> None:
    jobs = job_dirs(sweep_dir)
    runs = pd.read_csv(report / "runs.csv")
    table = pd.read_csv(report / "table.csv")
    assert len(runs) == len(jobs)
    for (policy, seed), d in jobs.items():
        row = runs[(runs["policy"] == policy) & (runs["seed"] == seed)].iloc[0]
        for k, v in direct_metrics(d).items():
            assert row[k] == pytest.approx(v, rel=1e-9), (policy, seed, k)
    for policy in POLICIES:
        for k in ("e2e_mean_s", "e2e_p99_s", "premium_ttft_p99_s"):
            vals = np.array([direct_metrics(jobs[(policy, s)])[k] for s in SEEDS])
            got = table[(table["policy"] == policy) & (table["metric"] == k)].iloc[0]
            mean = vals.mean()
            half = T975[len(vals) - 1] * vals.std(ddof=1) / math.sqrt(len(vals))
            assert got["n"] == len(SEEDS)
            assert got["mean"] == pytest.approx(mean, rel=1e-9)
            assert got["ci_low"] == pytest.approx(mean - half, rel=1e-9, abs=1e-12)
            assert got["ci_high"] == pytest.approx(mean + half, rel=1e-9, abs=1e-12)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_ratios_pair_runs_by_seed(sweep_dir: Path, report: Path) -> None:
    jobs = job_dirs(sweep_dir)
    table = pd.read_csv(report / "table.csv")
    for anchor in ("fifo", "oracle"):
        ratios = [
            direct_metrics(jobs[("driftsched", s)])["e2e_mean_s"]
            / direct_metrics(jobs[(anchor, s)])["e2e_mean_s"]
            for s in SEEDS
        ]
        got = table[
            (table["policy"] == "driftsched") & (table["metric"] == f"e2e_mean_vs_{anchor}")
        ].iloc[0]
        assert got["mean"] == pytest.approx(np.mean(ratios), rel=1e-9)
        self_ratio = table[
            (table["policy"] == anchor) & (table["metric"] == f"e2e_mean_vs_{anchor}")
        ].iloc[0]
        assert self_ratio["mean"] == pytest.approx(1.0)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_report_and_figures(report: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = (report / "report.md").read_text()
    for p in POLICIES:
        assert f"| {p} |" in md
    assert "E2E mean / fifo" in md and "E2E mean / oracle" in md
    for name in ("e2e_cdf", "tier_p99", "queue_depth", "estimates", "events"):
        png = report / "figures" / f"{name}.png"
        assert png.stat().st_size > 10_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in md
    # a single load: no latency-vs-utilisation curve, and the report says why
    assert not (report / "figures" / "load_curves.png").exists()
    assert "single load" in md


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_printed_table(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main([str(sweep_dir), "--out", str(tmp_path), "--no-figures"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "E2E mean (s)" in lines[0] and "E2E mean / oracle" in lines[0]
    for p in POLICIES:
        assert any(line.strip().startswith(p) for line in lines)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_incomplete_runs_are_refused_then_flagged(
    sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("comparison"))
    victim = next(d for (p, s), d in job_dirs(copy).items() if p == "oracle" and s == 1)
    (victim / "summary.json").unlink()  # as if the job was killed before finishing
    assert not job_finished(victim)
    assert compare.main([str(copy), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "1 incomplete run" in err and victim.name in err and "summary.json" in err
    assert (
        compare.main(
            [str(copy), "--out", str(tmp_path / "b"), "--allow-incomplete", "--no-figures"]
        )
        == 0
    )
    md = (tmp_path / "b" / "report.md").read_text()
    assert "1 incomplete run(s) excluded" in md and victim.name in md
    runs = pd.read_csv(tmp_path / "b" / "runs.csv")
    assert len(runs) == len(POLICIES) * len(SEEDS) - 1


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_summary_disagreeing_with_records_is_reported(sweep_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("comparison"))
    d = job_dirs(copy)[("fifo", 0)]
    s = json.loads((d / "summary.json").read_text())
    truth = s["latency"]["e2e_s"]["mean"]
    s["latency"]["e2e_s"]["mean"] = truth * 0.5
    (d / "summary.json").write_text(json.dumps(s))
    assert compare.main([str(copy), "--out", str(tmp_path / "o"), "--no-figures"]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "e2e_mean_s: summary.json" in md
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    row = runs[(runs["policy"] == "fifo") & (runs["seed"] == 0)].iloc[0]
    assert row["e2e_mean_s"] == pytest.approx(truth)  # the records win


def test_missing_or_empty_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main([str(tmp_path / "nope")]) == 2
    assert "no such run" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    assert "no evaluation runs found" in capsys.readouterr().err


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_discovery_skips_non_run_dirs(sweep_dir: Path) -> None:
    runs = discover_runs([sweep_dir])
    assert len(runs) == len(POLICIES) * len(SEEDS)
    assert all(r.complete for r in runs)
    assert {r.policy for r in runs} == set(POLICIES)


def test_t_interval_by_hand() -> None:
    mean, lo, hi, n = t_interval([1.0, 2.0, 3.0])
    half = T975[2] * 1.0 / math.sqrt(3)
    assert (mean, n) == (2.0, 3)
    assert lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    mean, lo, hi, n = t_interval([5.0, float("nan")])  # one finite value: no interval
    assert (mean, n) == (5.0, 1) and math.isnan(lo) and math.isnan(hi)
    assert t_interval([4.0, 4.0])[1:3] == (4.0, 4.0)


def test_load_curves_only_when_load_varies(tmp_path: Path) -> None:
    from report.figures import fig_load_curves

    rows = [
        {
            "label": p,
            "utilisation": u,
            "seed": s,
            "e2e_mean_s": 10 * u + s + i,
            "premium_ttft_p99_s": u + 0.1 * s,
            "slo_attainment": 1 - u / 2,
        }
        for i, p in enumerate(("fifo", "oracle"))
        for u in (0.7, 0.9, 1.1)
        for s in (0, 1)
    ]
    df = pd.DataFrame(rows)
    png = fig_load_curves(df, ["fifo", "oracle"], tmp_path / "load.png")
    assert png is not None and png.stat().st_size > 10_000
    single = df[df["utilisation"] == 0.9]
    assert fig_load_curves(single, ["fifo", "oracle"], tmp_path / "one.png") is None
