"""Golden hashes of the simulator's output: records, step tables and run stats stay bit-identical.

``golden.json`` was written by the engine *before* the event loop was split into phases (issue
17); every refactor of ``scheduler/sim/`` must reproduce it exactly. Cases cover the policies
(the learned ones on the tiny predictor of ``tests/tiny_predictor.py``), both modes, both
stepping paths (``fast_forward`` on and off), KV pressure that forces preemptions, a
``max_model_len`` that aborts long prompts, chunked prefill and three cost models.

The hashes are of floating-point results, and numpy's AVX-512 kernels and OpenBLAS's per-CPU
kernels round some of them differently in the last bit (a fitted cost model, the tiny
predictor), so the cases run in a child process with those kernels pinned (:func:`pinned_env`:
numpy without its AVX-512 paths, OpenBLAS on its Haswell kernels unless ``OPENBLAS_CORETYPE`` is
already set): the same hashes on any x86-64 machine with AVX2, whatever else it has.

Regenerate (only when a behaviour change is intended, and say so in the commit)::

    PYTHONPATH=. OMP_NUM_THREADS=1 python -m tests.scheduler.sim.test_golden --write

Regenerated on purpose in issue 21: the ``drift*`` cases (drift's mechanisms became config
groups, with re-prediction on events instead of a clock) and the new victim-rule cases; every
other case is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from scheduler.policies.aging import AgingPolicy
from scheduler.policies.drift import DriftPolicy
from scheduler.policies.driftsched import DriftSchedPolicy
from scheduler.policies.fifo import FIFOPolicy
from scheduler.policies.oracle import OraclePolicy
from scheduler.policies.priority import PriorityPolicy
from scheduler.policies.sjf import SJFPolicy
from scheduler.policies.srpt_oracle import SRPTOraclePolicy
from scheduler.policies.tie import TIEPolicy
from scheduler.policies.trail import TrailPolicy
from scheduler.policies.uniboost import UniBoostPolicy
from scheduler.policies.victims import CostAwareVictim
from scheduler.policies.weighted import WeightedPolicy
from scheduler.policies.weighted_fair import WeightedFairPolicy
from scheduler.sim.cost import LinearCostModel
from scheduler.sim.engine import SimEngine
from scheduler.sim.synthetic import synthetic_frame
from tests.scheduler.sim.test_sim_fast_forward import HorizonFIFO, OpaqueCost
from tests.tiny_predictor import DRIFT_MECHANISMS, drift_kwargs, with_prompts

GOLDEN = Path(__file__).with_name("golden.json")
SEEDS = (0, 1, 2)
META_KEYS = (
    "preemptions",
    "policy_preemptions",
    "recomputed_tokens",
    "computed_tokens",
    "aborted",
    "fast_forward_windows",
    "fast_forward_steps",
    "aggregate_steps",
    "steps",
    "makespan_s",
)


def policies(art: str) -> dict[str, Callable[[], object]]:
    return {
        "fifo": FIFOPolicy,
        "priority": PriorityPolicy,
        "aging": AgingPolicy,
        "weighted": WeightedPolicy,
        "weighted_fair": WeightedFairPolicy,
        "driftsched": DriftSchedPolicy,
        "oracle": OraclePolicy,
        "oracle_preemptive": lambda: OraclePolicy(preemptive=True),
        "srpt_oracle": lambda: SRPTOraclePolicy(rekey_every=4),
        "uniboost": lambda: UniBoostPolicy(min_count=8, refresh_every=16, rekey_every=4),
        "horizon3": lambda: HorizonFIFO(3),
        "sjf": lambda: SJFPolicy(art),
        "drift": lambda: DriftPolicy(
            art,
            **drift_kwargs(
                preemption={
                    "max_per_request": 2,
                    "per_step": 2,
                    "min_gain_tokens": 8.0,
                    "recompute_cost_per_token": 0.0,
                },
                reclassify={"min_delta_tokens": 8},
            ),
        ),
        "drift_urgent": lambda: DriftPolicy(
            art,
            **drift_kwargs(preemption={"urgent": True}, urgency={"slo_fraction": 0.05}),
        ),
        "drift_order_key_victim": lambda: victim(DriftPolicy(art, **DRIFT_MECHANISMS), None),
        "sjf_cost_aware": lambda: victim(SJFPolicy(art), CostAwareVictim()),
        "fifo_least_computed": lambda: victim(
            FIFOPolicy(), CostAwareVictim(remaining_weight=0.0, protect_tokens=16)
        ),
        "trail": lambda: TrailPolicy(art, rekey_every=4),
        "tie": lambda: TIEPolicy(art),
    }


# engine configurations: (workload kwargs, engine kwargs, policies run on it)
CONFIGS: dict[str, tuple[dict, dict, tuple[str, ...] | None]] = {
    # KV pressure (memory preemptions) and a context window that aborts long prompts
    "tight": (
        {"rate_rps": 20.0, "output_median": 120.0},
        {
            "num_gpu_blocks": 160,
            "max_num_batched_tokens": 512,
            "max_num_seqs": 32,
            "max_model_len": 1200,
        },
        None,  # every policy
    ),
    # plenty of memory: long decode windows
    "roomy": (
        {"rate_rps": 6.0},
        {"max_num_batched_tokens": 2048},
        ("fifo", "aging", "drift", "srpt_oracle", "uniboost", "horizon3"),
    ),
    # small blocks, chunked prefill, few seats, a fitted cost with a per-prefill charge
    "chunked": (
        {"rate_rps": 12.0, "prompt_median": 300.0},
        {
            "num_gpu_blocks": 700,
            "block_size": 4,
            "max_num_batched_tokens": 96,
            "max_num_seqs": 12,
            "cost": LinearCostModel(
                c0=0.01, c_token=1.9e-4, c_kv=2.5e-7, c_pair=3e-9, c_prefill_seq=4e-4
            ),
        },
        ("fifo", "priority", "drift", "trail", "oracle_preemptive", "sjf_cost_aware"),
    ),
    "opaque_cost": (
        {"rate_rps": 15.0},
        {"num_gpu_blocks": 240, "max_num_batched_tokens": 256, "cost": OpaqueCost()},
        ("fifo", "weighted_fair", "drift"),
    ),
    "microbatch": (
        {"rate_rps": 10.0},
        {
            "mode": "microbatch",
            "microbatch_size": 8,
            "num_gpu_blocks": 400,
            "max_model_len": 2000,
        },
        ("fifo", "priority", "sjf", "drift", "srpt_oracle", "uniboost"),
    ),
}


def victim(policy, rule):
    policy.victim = rule
    return policy


def cases(art: str) -> list[tuple[str, Callable[[], dict]]]:
    """(case id, thunk returning its digest) for every config x policy x seed x stepping."""
    makers = policies(art)
    out = []
    for cname, (wkw, ekw, names) in CONFIGS.items():
        for pname in names or tuple(makers):
            for seed in SEEDS:
                for ff in (True, False):
                    cid = f"{cname}/{pname}/seed{seed}/{'ff' if ff else 'step'}"

                    def thunk(wkw=wkw, ekw=ekw, pname=pname, seed=seed, ff=ff) -> dict:
                        df = with_prompts(synthetic_frame(200, seed=seed, **wkw), seed=seed)
                        res = SimEngine(fast_forward=ff, **ekw).run(df, makers[pname]())
                        return digest(res)

                    out.append((cid, thunk))
    return out


def frame_hash(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(json.dumps(sorted((str(k), repr(v)) for k, v in df.attrs.items())).encode())
    h.update(pd.util.hash_pandas_object(df, index=True).values.tobytes())
    return h.hexdigest()


def digest(res) -> dict:
    meta = {}
    for k in META_KEYS:
        v = res.meta[k]
        meta[k] = float(v).hex() if isinstance(v, float) else int(v)
    return {
        "records": frame_hash(res.records),
        "steps": frame_hash(res.steps),
        "rows": [len(res.records), len(res.steps)],
        "meta": meta,
    }


def pinned_env() -> dict[str, str]:
    """This process's environment with the floating-point kernels pinned (module docstring)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as have
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as have
    env = dict(os.environ)
    avx512 = sorted(f for f, on in have.items() if on and f.startswith("AVX512"))
    if avx512:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(avx512)
    env.setdefault("OPENBLAS_CORETYPE", "Haswell")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    return env


@pytest.fixture(scope="module")
def computed() -> dict[str, dict]:
    """Every case's digest, computed once in a child process with the kernels pinned."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "got.json"
        subprocess.run(
            [sys.executable, "-m", "tests.scheduler.sim.test_golden", "--out", str(out)],
            env=pinned_env(),
            check=True,
            timeout=1800,
        )
        return json.loads(out.read_text())


GOLDEN_CASES = sorted(json.loads(GOLDEN.read_text()))  # engine setup / policy / seed / stepping


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
def test_golden_case_list_is_the_code_case_list(computed: dict[str, dict]) -> None:
    assert sorted(computed) == GOLDEN_CASES, "case list changed: regenerate golden.json on purpose"


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_case(case: str, computed: dict[str, dict]) -> None:
    """Records, steps and run stats of one case (``setup/policy/seedN/ff|step``) are unchanged."""
    golden = json.loads(GOLDEN.read_text())[case]
    assert case in computed, f"{case} is no longer computed: regenerate golden.json on purpose"
    got = computed[case]
    diff = {k: {"got": got[k], "golden": golden[k]} for k in golden if got.get(k) != golden[k]}
    assert not diff, f"{case} differs from golden.json: {json.dumps(diff)}"


def test_golden_covers_preemptions_aborts_and_fast_forward() -> None:
    golden = json.loads(GOLDEN.read_text())
    tight = [v["meta"] for k, v in golden.items() if k.startswith("tight/")]
    assert all(m["aborted"] > 0 for m in tight)
    assert all(m["preemptions"] > 0 for m in tight)
    assert any(m["policy_preemptions"] > 0 for m in tight)
    assert any(m["fast_forward_steps"] > 0 for m in tight)
    assert not math.isnan(float.fromhex(tight[0]["makespan_s"]))


def compute() -> dict[str, dict]:
    """Every case's digest, on the tiny predictor of the ``tiny_artifacts`` fixture."""
    from tests.tiny_predictor import tiny_artifacts_at

    with tempfile.TemporaryDirectory() as tmp:
        art = tiny_artifacts_at(Path(tmp))
        return {cid: thunk() for cid, thunk in cases(str(art))}


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--write"]:  # re-executed with the pinned kernels
        subprocess.run(
            [sys.executable, "-m", "tests.scheduler.sim.test_golden", "--out", str(GOLDEN)],
            env=pinned_env(),
            check=True,
        )
        print(f"wrote {GOLDEN}")
    elif len(args) == 2 and args[0] == "--out":
        Path(args[1]).write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    else:
        raise SystemExit("usage: python -m tests.scheduler.sim.test_golden --write")
