"""The simulations behind docs/RESULTS.md (``report.results``): the plans (how big a
regeneration is) and one ``run_*`` per part, each an ``evaluate.py`` job per arm run in-process
(``report.jobs.run_arms``) into ``<runs>/<plan>/<part>/...``; a job whose directory already holds
a finished run of the same config is reused, so an interrupted regeneration resumes.

Each ``run_*`` returns the job directories (``runs[...][seed][label]``) the document sections
(``report.results_paper``, ``report.results_study``) read their numbers from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from report.jobs import Arm, compose, run_arms
from report.paper_replay import paper_inputs, write_replay

HEADLINE_POLICIES = (
    "fifo",
    "priority",
    "weighted",
    "weighted_fair",
    "aging",
    "sjf",
    "driftsched",
    "drift",
    "oracle",
)


@dataclass(frozen=True)
class Plan:
    """Sizes of one regeneration (``full`` is the documented study)."""

    name: str
    paper_scale: float  # fraction of the paper's 1000 + 2000 requests
    paper_seeds: tuple[int, ...]
    default_n: int  # requests of the default workload
    seeds: tuple[int, ...]
    loads: tuple[float, ...]
    policies: tuple[str, ...]
    shift_n: int  # requests per half of the shifting workload
    shift_load: float


PLANS: dict[str, Plan] = {
    "full": Plan(
        "full", 1.0, (0, 1, 2), 3000, (0, 1, 2), (0.7, 0.9, 1.1), HEADLINE_POLICIES, 1500, 1.0
    ),
    "quick": Plan("quick", 0.3, (0, 1), 800, (0, 1), (0.7, 0.9, 1.1), HEADLINE_POLICIES, 400, 1.0),
    # the test's plan: the same pipeline on a reduced workload
    "tiny": Plan(
        "tiny", 0.03, (0, 1), 80, (0, 1), (1.1,), ("fifo", "sjf", "drift", "oracle"), 40, 1.0
    ),
}


def paper_workload_overrides(plan: Plan) -> list[str]:
    if plan.paper_scale >= 1.0:
        return []
    n1 = max(20, round(1000 * plan.paper_scale))
    n2 = max(40, round(2000 * plan.paper_scale))
    return [f"workload.phases.learning.n_requests={n1}", f"workload.phases.stress.n_requests={n2}"]


def run_paper(plan: Plan, root: Path, over: Sequence[str] = ()) -> dict[str, Any]:
    from data.presets import workload_from_config

    exp = compose(["+experiment=driftsched_paper"]).paper_experiment
    arms = {k: Arm(k, v.policy, tuple(v.overrides)) for k, v in exp.arms.items()}
    cont = [arms[k] for k in exp.continuous_arms]
    wl_over = paper_workload_overrides(plan)
    runs: dict[str, dict[int, dict[str, Path]]] = {"mb": {}, "cb": {}}
    for seed in plan.paper_seeds:
        base = ["+experiment=driftsched_paper", f"seed={seed}", *wl_over, *over]
        wl = workload_from_config(compose(base).workload, seed=seed)
        native = wl.rate_rps  # the paper's own gaps: at_rate(native) rescales nothing
        inputs = paper_inputs(wl.requests)
        for mode, arm_list in (("mb", list(arms.values())), ("cb", cont)):
            mode_over = base if mode == "mb" else [*base, "engine.mode=continuous"]
            d = root / "paper" / mode / f"seed{seed}"
            dirs = run_arms(d, mode_over, arm_list, lambda w=wl: w, rate_rps=native)
            for jd in dirs.values():
                if not (jd / "estimation_replay.json").is_file():
                    write_replay(jd, inputs)
            runs[mode][seed] = dirs
    return {"runs": runs, "five": dict(exp.five_policies)}


def run_headline(
    plan: Plan, root: Path, over: Sequence[str] = (), transformer: Path | None = None
) -> dict:
    """Every policy x load x seed; with ``transformer`` (a trained MiniLM artifact root) also
    ``sjf_tf`` and ``drift_tf``: the learned policies on the transformer predictor."""
    from data.presets import workload_from_config

    runs: dict[float, dict[int, dict[str, Path]]] = {u: {} for u in plan.loads}
    arms = [Arm(p, p) for p in plan.policies]
    tf_arms = []
    if transformer is not None:  # ~1 min per run on a shared 2-core CPU: the top load only
        tf = f"policy.predictor_dir={transformer.resolve()}"
        tf_arms = [Arm(f"{p}_tf", p, (tf,)) for p in ("sjf", "drift") if p in plan.policies]
    for seed in plan.seeds:
        base = [f"seed={seed}", f"workload.n_requests={plan.default_n}", *over]
        cache: dict[str, Any] = {}

        def wl(base: list[str] = base, seed: int = seed, cache: dict = cache) -> Any:
            if "w" not in cache:
                cache["w"] = workload_from_config(compose(base).workload, seed=seed)
            return cache["w"]

        for u in plan.loads:
            d = root / "headline" / f"u{u:g}" / f"seed{seed}"
            extra = tf_arms if u == max(plan.loads) else []
            runs[u][seed] = run_arms(d, [*base, f"utilisation={u}"], [*arms, *extra], wl)
    return runs


OVERLAP_ARMS = ("fifo", "sjf", "drift", "oracle")


def run_overlap(plan: Plan, root: Path, over: Sequence[str] = ()) -> dict[int, dict[str, Path]]:
    """The previous protocol, for comparison: the default workload drawn from every prompt
    (``workload.unseen_by=null``, most of them in the predictor's training split) with
    ``allow_train_overlap=true``, at the top load, same seeds and artifacts."""
    from data.presets import workload_from_config

    u = max(plan.loads)
    runs = {}
    for seed in plan.seeds:
        base = [
            f"seed={seed}",
            f"workload.n_requests={plan.default_n}",
            "workload.unseen_by=null",
            "allow_train_overlap=true",
            f"utilisation={u}",
            *over,
        ]
        cache: dict[str, Any] = {}

        def wl(base: list[str] = base, seed: int = seed, cache: dict = cache) -> Any:
            if "w" not in cache:
                cache["w"] = workload_from_config(compose(base).workload, seed=seed)
            return cache["w"]

        runs[seed] = run_arms(
            root / "overlap" / f"seed{seed}", base, [Arm(p, p) for p in OVERLAP_ARMS], wl
        )
    return runs


def shift_workload(n: int, seed: int) -> Any:
    """Two default workloads back to back; in the second half the chat and batch tenants swap
    their length mixes (chat gets long-form generation, batch gets chat prompts)."""
    from omegaconf import OmegaConf

    from data.presets import workload_from_config

    cfg = compose([f"workload.n_requests={n}"]).workload
    a = workload_from_config(cfg, seed=seed)
    cfg_b = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    chat_mix, batch_mix = cfg_b.tenants.chat.mix, cfg_b.tenants.batch.mix
    cfg_b.tenants.chat.mix, cfg_b.tenants.batch.mix = batch_mix, chat_mix
    b = workload_from_config(cfg_b, seed=seed + 1000)
    ra, rb = a.requests.copy(), b.requests.copy()
    ta = ra["arrival_s"].to_numpy()
    gap = (ta[-1] - ta[0]) / max(1, len(ta) - 1)
    rb["arrival_s"] = rb["arrival_s"] - rb["arrival_s"].min() + ta[-1] + gap
    ra["request_id"] = "a-" + ra["request_id"].astype(str)
    rb["request_id"] = "b-" + rb["request_id"].astype(str)
    req = pd.concat([ra, rb], ignore_index=True)
    return replace(a, requests=req, name="shift", arrival=f"{a.arrival}; mix swap at {n}")


SHIFT_ARMS = (
    Arm("fifo", "fifo"),
    Arm("sjf", "sjf"),
    Arm("drift_recal", "drift", ("policy.recalibrate=true",)),
    Arm("drift_norecal", "drift", ("policy.recalibrate=false",)),
    Arm("oracle", "oracle"),
)


def run_shift(plan: Plan, root: Path, over: Sequence[str] = ()) -> dict[int, dict[str, Path]]:
    runs = {}
    for seed in plan.seeds:
        d = root / "shift" / f"seed{seed}"
        base = [
            f"seed={seed}",
            f"workload.n_requests={plan.shift_n}",
            f"utilisation={plan.shift_load}",
            "workload.name=shift",
            *over,
        ]
        cache: dict[str, Any] = {}

        def wl(seed: int = seed, cache: dict = cache) -> Any:
            if "w" not in cache:
                cache["w"] = shift_workload(plan.shift_n, seed)
            return cache["w"]

        runs[seed] = run_arms(d, base, SHIFT_ARMS, wl)
    return runs
