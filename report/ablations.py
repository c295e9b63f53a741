"""``python -m report.ablations [--quick]``: each mechanism of ``drift`` on and off, and every
baseline, on every workload of the generalisation suite -> docs/ABLATIONS.md.

The jobs share the generalisation suite's run tree (``results_runs/generalisation/<plan>/``):
the baselines' directories are the suite's own (reused when finished), the ``drift`` variants
are extra arms beside them. A variant is ``+policy=drift`` with overrides (:data:`VARIANTS`);
``drift-core`` is admission-time SJF on the learned predictor with everything else off, and each
``+mechanism`` row adds one mechanism to it; ``drift`` is the shipped default (its
mechanisms are the ones that paid here; the row names its settings). Deltas are paired
per seed against ``drift-core`` (negative = lower mean E2E = better), 95% t-intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from report.generalisation import (
    SUITE,
    Entry,
    SuitePlan,
    _mean,
    _summary,
    collect,
    run_suite,
    suite_paths,
    suite_policies,
    train_suite_predictors,
)
from report.jobs import Arm
from report.results import REPO, _group_minutes, fmt_ci, get, md_table, rel

# everything beyond admission-time ranking off (a starvation bound far beyond any run)
CORE = (
    "policy.recalibrate=false",
    "policy.repredict_every=1000000000",
    "policy.max_preemptions=0",
    "policy.max_wait_s=1e9",
    "policy.slo_tiers=[]",
)


@dataclass(frozen=True)
class Variant:
    label: str
    what: str  # one line for the document
    overrides: tuple[str, ...]


# each mechanism's settings in the configuration that had every mechanism on (the earlier
# default): a variant is CORE with one of them switched back on, explicitly
ON: dict[str, tuple[str, ...]] = {
    "recal": ("policy.recalibrate=true",),
    "repredict": ("policy.repredict_every=32",),
    "preempt": ("policy.max_preemptions=1",),
    "guard": ("policy.max_wait_s=300.0", "policy.slo_tiers=[premium]"),
}


def _with(*keep_on: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """CORE with the named mechanisms switched on (``ON``)."""
    keys = [o.split("=", 1)[0] for k in keep_on for o in ON[k]]
    kept = tuple(o for o in CORE if o.split("=", 1)[0] not in keys)
    return kept + tuple(o for k in keep_on for o in ON[k]) + extra


VARIANTS: tuple[Variant, ...] = (
    Variant("drift-core", "admission-time ranking on the learned p50 only", CORE),
    Variant("drift+recal", "+ online recalibration (per tenant/category)", _with("recal")),
    Variant("drift+repredict", "+ re-prediction of running requests", _with("repredict")),
    Variant("drift+preempt", "+ voluntary preemption (gain test)", _with("preempt")),
    Variant("drift+guard", "+ starvation guard and premium SLO urgency", _with("guard")),
    Variant(
        "drift-all",
        "every mechanism on (the previous default)",
        _with("recal", "repredict", "preempt", "guard"),
    ),
    Variant(
        "drift+boost",
        "+ learned gamma-Boost (boosted arrival time, gamma 0.001) instead of pure size order",
        (*CORE, "policy.boost_gamma=0.001"),
    ),
)


def variant_arms() -> list[Arm]:
    return [Arm(v.label, "drift", v.overrides) for v in VARIANTS]


def paired_delta(
    runs: Mapping[int, Mapping[str, Path]], label: str, ref: str = "drift-core"
) -> list[float]:
    """Relative mean-E2E change of ``label`` vs ``ref`` per seed (-0.05 = 5% lower)."""
    out = []
    for _seed, by in sorted(runs.items()):
        if label not in by or ref not in by:
            continue
        a = get(_summary(by[label]), "latency", "e2e_s", "mean")
        b = get(_summary(by[ref]), "latency", "e2e_s", "mean")
        out.append(a / b - 1 if b > 0 else math.nan)
    return out


def section(
    e: Entry, runs: Mapping[float, Mapping[int, Mapping[str, Path]]], baselines: Sequence[str]
) -> list[str]:
    lines = [f"### {e.name}", ""]
    for u, by_seed in runs.items():
        m = collect(by_seed)
        rows = []
        for lab in [*(v.label for v in VARIANTS), "drift", *baselines]:
            if lab not in m:
                continue
            v = m[lab]
            delta = paired_delta(by_seed, lab) if lab.startswith("drift") else []
            rows.append(
                [
                    f"`{lab}`",
                    fmt_ci(v["mean E2E (s)"]),
                    fmt_ci(delta, pct=True) if delta and lab != "drift-core" else "-",
                    fmt_ci(v["capture"]),
                    fmt_ci(v["P99 E2E (s)"]),
                    fmt_ci(v["p99_vs_fifo"]),
                    fmt_ci(v["premium TTFT P99 (s)"]),
                ]
            )
        lines += [
            f"Utilisation {u:g} ({len(by_seed)} seeds):",
            "",
            md_table(
                [
                    "arm",
                    "mean E2E (s)",
                    "vs drift-core",
                    "capture",
                    "P99 E2E (s)",
                    "P99 / FIFO",
                    "premium TTFT P99 (s)",
                ],
                rows,
            ),
            "",
        ]
    return lines


def mechanism_overview(
    runs: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]],
) -> tuple[str, dict[str, Any]]:
    """Mechanisms x (workload, load): mean paired change of mean E2E vs ``drift-core``."""
    cols = [(e, u) for e, by_u in runs.items() for u in by_u]
    key: dict[str, Any] = {}
    rows = []
    for v in [*VARIANTS[1:], Variant("drift", "the shipped default", ())]:
        row = [f"`{v.label}`"]
        for e, u in cols:
            d = paired_delta(runs[e][u], v.label)
            key[f"{v.label}|{e}|{u:g}"] = d
            x = _mean(d) if d else math.nan
            row.append(f"{100 * x:+.1f}%" if math.isfinite(x) else "n/a")
        rows.append(row)
    return md_table(["arm", *[f"{e} @{u:g}" for e, u in cols]], rows), key


def targets(
    runs: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]],
    baselines: Sequence[str],
) -> list[str]:
    """The issue's targets per (workload, load), computed: drift's mean E2E within 2% of the
    best non-oracle policy, its P99 no worse than FIFO's, capture >= 0.6 on the unseen
    workloads."""
    rows = []
    non_oracle = [b for b in baselines if b not in ("fifo", "oracle", "srpt_oracle")]
    for e, by_u in runs.items():
        for u, by_seed in by_u.items():
            m = collect(by_seed)
            if "drift" not in m:
                continue
            best = min(
                (b for b in non_oracle if b in m),
                key=lambda b: _mean(m[b]["mean E2E (s)"]),
                default=None,
            )
            d = _mean(m["drift"]["mean E2E (s)"])
            gap = d / _mean(m[best]["mean E2E (s)"]) - 1 if best else math.nan
            p99 = _mean(m["drift"]["p99_vs_fifo"])
            cap = _mean(m["drift"]["capture"])
            need_cap = e in ("unseen_prompts", "unseen_generators")
            ok = gap <= 0.02 and p99 <= 1.0 and (cap >= 0.6 or not need_cap)
            rows.append(
                [
                    e,
                    f"{u:g}",
                    f"`{best}`",
                    f"{100 * gap:+.1f}%",
                    f"{p99:.2f}",
                    f"{cap:.2f}" + (" (target >= 0.6)" if need_cap else ""),
                    "met" if ok else "**missed**",
                ]
            )
    return [
        md_table(
            [
                "workload",
                "load",
                "best non-oracle",
                "drift vs it (mean E2E)",
                "drift P99 / FIFO",
                "drift capture",
                "targets",
            ],
            rows,
        )
    ]


LOW_LOADS = (0.5, 0.7)


def low_load(low: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]]) -> list[str]:
    """drift / FIFO mean E2E at light loads (target: within 1%)."""
    rows = []
    for e, by_u in low.items():
        for u, by_seed in by_u.items():
            r = [
                get(_summary(by["drift"]), "latency", "e2e_s", "mean")
                / get(_summary(by["fifo"]), "latency", "e2e_s", "mean")
                - 1
                for by in by_seed.values()
            ]
            ok = abs(_mean(r)) <= 0.01 or _mean(r) < 0
            rows.append([e, f"{u:g}", fmt_ci(r, pct=True), "met" if ok else "**missed**"])
    if not rows:
        return []
    return [
        "Light load (target: drift within 1% of FIFO's mean E2E, or better):",
        "",
        md_table(["workload", "load", "drift vs FIFO (mean E2E, paired)", "target"], rows),
    ]


def write_document(
    plan: SuitePlan,
    root: Path,
    doc: Path,
    runs: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]],
    baselines: Sequence[str],
    wall_s: float,
    low: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]] | None = None,
) -> dict[str, Any]:
    overview, key = mechanism_overview(runs)
    sections: list[str] = []
    for e in SUITE:
        if e.name in runs:
            sections += section(e, runs[e.name], baselines)
    variants = md_table(
        ["arm", "what", "overrides of `+policy=drift`"],
        [[f"`{v.label}`", v.what, " ".join(f"`{o}`" for o in v.overrides)] for v in VARIANTS],
    )
    cmd = "python -m report.ablations" + (" --quick" if plan.name == "quick" else "")
    head = [
        "# Ablations of `drift`, and the baselines, on the generalisation suite",
        "",
        f"Regenerated by `{cmd}` (plan `{plan.name}`: {len(runs)} workloads x loads "
        f"{list(plan.loads)} x seeds {list(plan.seeds)}, {plan.n_requests:,} requests each; "
        f"this invocation {wall_s / 60:.1f} min wall on this 2-core machine; the simulation "
        f"groups took {_group_minutes(root):.0f} min in their last runs (sum of `group_timing.json`) "
        "on a machine shared with other jobs; finished runs are reused), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}). Runs: "
        f"`{rel(root)}/<workload>/u<load>/seed<seed>/<arm>/`, shared with "
        "docs/GENERALISATION.md. Every learned arm uses the same artifacts per workload and "
        "runs with `train_overlap` 0. Never edited by hand.",
        "",
        "## Arms",
        "",
        variants,
        "",
        "## Targets (issue: drift within 2% of the best non-oracle policy, P99 <= FIFO's, "
        "capture >= 0.6 on unseen prompts/generators)",
        "",
        *targets(runs, baselines),
        "",
        *low_load(low or {}),
        "",
        "## Each mechanism: mean E2E change vs `drift-core`, paired per seed (mean over seeds)",
        "",
        overview,
        "",
        "## Per workload",
        "",
        *sections,
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(head) + "\n")
    return key


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m report.ablations", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the CI smoke plan")
    ap.add_argument("--runs", default=str(REPO / "results_runs" / "generalisation"))
    ap.add_argument("--doc", default=None, help="default docs/ABLATIONS.md (full plan)")
    ap.add_argument("--override", action="append", default=[], help="extra evaluate.py override")
    a = ap.parse_args(argv)
    plan, root, doc = suite_paths(a.quick, a.runs, a.doc, "ABLATIONS.md")
    t0 = time.perf_counter()
    train_suite_predictors(plan)
    baselines = suite_policies(plan)
    arms = [Arm(p, p) for p in baselines] + variant_arms()
    runs = run_suite(plan, root, a.override, arms=arms)
    # the light-load target: drift within 1% of FIFO where there is little to reorder
    low_plan = replace(plan, loads=LOW_LOADS, entries=("unseen_prompts",))
    low = run_suite(low_plan, root, a.override, arms=[Arm("fifo", "fifo"), Arm("drift", "drift")])
    wall = time.perf_counter() - t0
    key = write_document(plan, root, doc, runs, baselines, wall, low)
    (root / "ablations_key.json").write_text(json.dumps(key, indent=1, default=str))
    print(f"wrote {doc} ({wall / 60:.1f} min)")
    return key


if __name__ == "__main__":
    main()
