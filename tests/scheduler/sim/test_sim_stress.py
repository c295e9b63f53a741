"""Issue 9 part 4: simulator invariants under stress, for every policy in ``conf/policy``.

Seeded random workloads (random sizes, Poisson traffic with bursts of simultaneous arrivals, all
tiers, heavy-tailed lengths, prompts too long for the context window, generation caps) run on a
tiny KV cache so memory preemption is frequent, in continuous and micro-batch mode. Checked:

* per step: every invariant of :class:`tests.scheduler.sim.invariants.StepInvariants` (the
  one checker the engine tests use too: KV accounting, batch limits, request states);
* per run: the steps table's ``kv_tokens`` never exceeds capacity; every request appears exactly
  once, finished or (prompt >= context window) aborted; tokens conserved (output_tokens == the
  trace's true length, capped by max_tokens / context); per-request timestamps monotonic;
* starvation bounds the policies promise: ``aging`` and the other static-key policies never let
  a later-keyed request overtake a waiting one (aging: a request is passed by nothing that
  arrived more than ``(base_x - base_y) / rate`` after it); ``drift`` admits no non-urgent
  request while an urgent one (waited ``guard_fraction * max_wait_s`` or its tier's SLO share)
  still waits, and urgent ones earliest deadline first.

Default: ``RUNS_PER_POLICY`` seeded workloads per policy (< 60 s on one core).
``RELIABILITY_STRESS_RUNS=N`` runs N per policy (e.g. 200 overnight). Counts are printed and,
with ``RELIABILITY_STRESS_JSON=path``, written as JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from data.schema import TIERS
from report.jobs import build_policy
from scheduler.engine import requests_from_frame
from scheduler.sim.engine import SimEngine
from tests.predictor.test_artifacts_safety import WORDS
from tests.scheduler.sim.invariants import StepInvariants

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

REPO = Path(__file__).resolve().parents[3]
CONF = REPO / "conf"
POLICIES = sorted(p.stem for p in (CONF / "policy").glob("*.yaml"))
RUNS_PER_POLICY = int(os.environ.get("RELIABILITY_STRESS_RUNS", "6"))
COUNTS: Counter[str] = Counter()
STATIC_KEY = ("fifo", "priority", "aging")  # key depends on tier and arrival only: a heap order


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts: Path) -> Path:
    """The session's shared tiny predictor (tests/conftest.py)."""
    return tiny_artifacts


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> None:
    yield
    print(f"\nsim stress counts: {dict(sorted(COUNTS.items()))}")
    out = os.environ.get("RELIABILITY_STRESS_JSON")
    if out:
        Path(out).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=2) + "\n")


def random_workload(rng: np.random.Generator, capacity: int) -> pd.DataFrame:
    """Poisson traffic with bursts, all tiers, heavy tails, too-long prompts and caps."""
    n = int(rng.integers(15, 90))
    gaps = rng.exponential(1.0 / rng.uniform(0.5, 20.0), size=n)
    gaps[rng.random(n) < 0.3] = 0.0  # bursts: simultaneous arrivals
    arrival = np.cumsum(gaps)
    arrival -= arrival[0] * rng.integers(0, 2)  # sometimes the first arrives at t=0
    prompt = np.clip(np.round(rng.lognormal(np.log(capacity / 8), 1.0, n)), 1, None)
    too_long = rng.random(n) < 0.05
    prompt[too_long] = capacity + rng.integers(0, 50, size=int(too_long.sum()))
    output = np.clip(np.round(rng.lognormal(np.log(40), 1.2, n)), 1, 4 * capacity)
    max_tokens = np.where(rng.random(n) < 0.2, rng.integers(1, 64, size=n), 100_000)
    tier = rng.choice(len(TIERS), size=n, p=rng.dirichlet(np.ones(3)))
    lg = output > np.median(output)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": [f"t{k}" for k in rng.integers(0, 4, size=n)],
            "tier": [TIERS[k] for k in tier],
            "category": rng.choice(["short_qa", "summary", "technical", "report"], size=n),
            "source": "stress",
            "model": "unknown",
            "prompt": [
                " ".join(rng.choice(WORDS, size=3)) + (" report detail" if x else " brief")
                for x in lg
            ],
            "arrival_s": arrival,
            "prompt_tokens": prompt.astype(np.int64),
            "output_tokens": output.astype(np.int64),
            "max_tokens": max_tokens.astype(np.int64),
        }
    )


def random_engine(rng: np.random.Generator) -> SimEngine:
    block = int(rng.choice([1, 4, 16]))
    blocks = int(rng.integers(max(4, 64 // block), max(8, 1024 // block)))
    cap = blocks * block
    return SimEngine(
        max_num_seqs=int(rng.integers(1, 24)),
        max_num_batched_tokens=int(min(cap, rng.integers(16, 512))),
        block_size=block,
        num_gpu_blocks=blocks,
        mode="microbatch" if rng.random() < 0.2 else "continuous",
        microbatch_size=int(rng.integers(1, 8)),
    )


def record_checks(df: pd.DataFrame, eng: SimEngine, res, name: str) -> None:
    rec = res.records
    assert len(rec) == len(df) and rec["request_id"].is_unique
    assert rec["request_id"].tolist() == df["request_id"].tolist()  # each exactly once
    too_long = df["prompt_tokens"].to_numpy() >= eng.max_model_len
    status = rec["status"].to_numpy()
    assert (status[too_long] == "aborted").all() and (status[~too_long] == "finished").all()
    assert int(res.meta["aborted"]) == int(too_long.sum())
    fin = rec[~too_long]
    target = np.minimum(
        np.minimum(fin["true_output_tokens"], fin["max_tokens"]),
        eng.max_model_len - fin["prompt_tokens"],
    )
    assert (fin["output_tokens"] == np.maximum(target, 1)).all(), name  # tokens conserved
    uncapped = fin["max_tokens"] >= fin["true_output_tokens"]
    uncapped &= eng.max_model_len - fin["prompt_tokens"] >= fin["true_output_tokens"]
    assert (fin.loc[uncapped, "output_tokens"] == fin.loc[uncapped, "true_output_tokens"]).all()
    t = fin[["arrival_s", "admitted_s", "first_token_s", "finish_s"]].to_numpy()
    assert np.isfinite(t).all(), name
    assert (np.diff(t, axis=1) >= 0).all(), f"{name}: timestamps not monotonic"
    ab = rec[too_long]
    assert (ab["output_tokens"] == 0).all() and ab["admitted_s"].isna().all()
    assert (ab["finish_s"] >= ab["arrival_s"]).all()
    steps = res.steps
    cap = eng.num_gpu_blocks * eng.block_size
    assert (steps["kv_tokens"] <= cap).all() and (steps["kv_tokens"] >= 0).all()
    assert (steps["duration_s"] > 0).all() and (np.diff(steps["time_s"]) >= 0).all()
    COUNTS["requests"] += len(rec)
    COUNTS["aborted"] += int(too_long.sum())
    COUNTS["preemptions"] += int(res.meta["preemptions"])
    COUNTS["steps_table_rows"] += len(steps)
    COUNTS["invariant_checks"] += 8 * len(rec) + 3 * len(steps)


def no_overtaking(df: pd.DataFrame, rec: pd.DataFrame, key: np.ndarray, name: str) -> None:
    """A request first admitted at t has a key <= every never-admitted request waiting at t."""
    adm = rec["admitted_s"].to_numpy()
    arr = rec["arrival_s"].to_numpy()
    ok = ~np.isnan(adm)
    for y in np.flatnonzero(ok):
        t = adm[y]
        waiting = ok & (arr <= t) & (adm > t)
        if waiting.any():
            COUNTS["admissions_while_others_waited"] += 1
            worst = np.flatnonzero(waiting & (key < key[y] - 1e-9))
            assert worst.size == 0, (
                f"{name}: request {y} (key {key[y]}) admitted at {t} ahead of waiting "
                f"{worst[:3].tolist()} (keys {key[worst[:3]].tolist()})"
            )
        COUNTS["starvation_checks"] += 1


def drift_urgency(df: pd.DataFrame, rec: pd.DataFrame, policy, name: str) -> None:
    """No non-urgent first admission while an urgent request waits; urgent ones EDF."""
    # per request (its own TTFT SLO for an SLO tier); records are in workload (index) order
    slo = df["slo_ttft_s"] if "slo_ttft_s" in df else [math.nan] * len(df)
    ua = np.array(
        [
            policy._urgent_after(SimpleNamespace(tier=t, slo_ttft_s=v))
            for t, v in zip(df["tier"], slo)
        ]
    )
    adm = rec["admitted_s"].to_numpy()
    arr = rec["arrival_s"].to_numpy()
    ok = ~np.isnan(adm)
    urgent_at = arr + ua  # the same sum the policy compares with `now`
    for y in np.flatnonzero(ok):
        t = adm[y]
        late = ok & (urgent_at <= t) & (adm > t)
        if late.any():
            COUNTS["drift_admissions_while_urgent_waited"] += 1
            assert urgent_at[y] <= t, f"{name}: non-urgent {y} admitted at {t} over {late}"
            assert (urgent_at[y] <= urgent_at[late]).all(), f"{name}: urgent {y} not EDF"
        COUNTS["starvation_checks"] += 1


def make_policy(name: str, artifacts: Path, rng: np.random.Generator):
    overrides = [f"+policy={name}", f"predictor_dir={artifacts}"]
    if name.startswith("drift") and name != "driftsched":
        # small bounds so the guard fires inside short runs; re-predict often
        overrides += [f"+policy.urgency.max_wait_s={float(rng.uniform(0.5, 20.0))}"]
        overrides += [f"policy.reclassify={{min_delta_tokens:{int(rng.integers(1, 8))}}}"]
    if name == "aging":
        overrides += [f"policy.rate_per_s={float(rng.choice([0.01, 0.5, 5.0]))}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    return build_policy(cfg.policy)


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize("name", POLICIES)
def test_invariants_under_random_stress(name: str, artifacts: Path) -> None:
    for run in range(RUNS_PER_POLICY):
        seed = 1000 * POLICIES.index(name) + run
        rng = np.random.default_rng(seed)
        eng = random_engine(rng)
        eng.observer = StepInvariants(eng, COUNTS)
        df = random_workload(rng, eng.num_gpu_blocks * eng.block_size)
        policy = make_policy(name, artifacts, np.random.default_rng([seed, 1]))
        where = f"{name} seed={seed} mode={eng.mode}"
        res = eng.run(df, policy)
        record_checks(df, eng, res, where)
        if name in STATIC_KEY:
            reqs = requests_from_frame(df)
            key = np.array([policy.key(r, 0.0) for r in reqs], dtype=np.float64)
            if eng.mode == "continuous":  # micro-batches admit a whole batch at once
                no_overtaking(df, res.records, key, where)
        if name in ("drift", "drift_slo") and eng.mode == "continuous":
            drift_urgency(df, res.records, policy, where)
        # determinism: the same workload and a fresh policy give identical records
        if run == 0:
            eng.observer = StepInvariants(eng, COUNTS)  # a new run: time starts again
            again = eng.run(df, make_policy(name, artifacts, np.random.default_rng([seed, 1])))
            pd.testing.assert_frame_equal(res.records, again.records)
        COUNTS["workloads"] += 1
        COUNTS[f"workloads_{eng.mode}"] += 1
        COUNTS["steps_simulated"] += int(res.meta["steps"])


def test_aging_bound_is_the_documented_one(artifacts: Path) -> None:
    # the promise behind the key: a batch request (base 3) that waited > (3 - 1) / rate seconds
    # is served before a fresh premium request (base 1)
    from scheduler.policies.aging import AgingPolicy

    pol = AgingPolicy(rate_per_s=0.01)
    df = random_workload(np.random.default_rng(0), 4096).head(2).copy()
    df["tier"] = ["batch", "premium"]
    df["arrival_s"] = [0.0, 200.5]
    old, fresh = requests_from_frame(df)
    assert pol.key(old, 0.0) < pol.key(fresh, 0.0)
    assert pol.score(old, 200.5) < pol.score(fresh, 200.5)
    assert math.isclose(pol.key(fresh, 0.0) - pol.key(old, 0.0), -2.0 + 0.01 * 200.5)


def test_starvation_checkers_can_fail() -> None:
    # request 1 (arrived later, larger key) admitted while request 0 still waits: a violation
    rec = pd.DataFrame(
        {
            "tier": ["batch", "batch"],
            "arrival_s": [0.0, 1.0],
            "admitted_s": [9.0, 5.0],
        }
    )
    with pytest.raises(AssertionError, match="ahead of waiting"):
        no_overtaking(rec, rec, np.array([0.0, 1.0]), "mutant")
    no_overtaking(rec, rec, np.array([1.0, 0.0]), "ok")  # its key says 1 goes first

    pol = SimpleNamespace(_urgent_after=lambda r: 2.0)

    with pytest.raises(AssertionError, match="non-urgent"):
        drift_urgency(rec.assign(arrival_s=[0.0, 4.0]), rec.assign(arrival_s=[0.0, 4.0]), pol, "m")
    with pytest.raises(AssertionError, match="not EDF"):
        drift_urgency(rec, rec, pol, "mutant")  # both urgent at 5 s, but 1's deadline is later
