"""``python -m report.generalisation [--quick]``: the generalisation suite -> docs/GENERALISATION.md.

Every policy of ``conf/evaluate.yaml``'s ``compare`` list x every workload of :data:`SUITE` x
loads 0.95 and 1.1 x seeds 0, 1, 2 on the simulator, each an ``evaluate.py`` job run in-process
into ``results_runs/generalisation/<plan>/<workload>/u<load>/seed<seed>/<policy>`` (reused when
it holds a finished run of the same config, so an interrupted suite resumes). Every number in
the document is computed from those ``summary.json`` files.

Each suite workload is a preset usable alone (``python evaluate.py workload=<name>``; the
memory-bound one selects ``engine=sim_memory_bound`` itself). Presets that are judged with their own
predictor (``workload.predictor``: leave-one-source-out, leave-one-model-out) name the
``train.py`` overrides that make it; the suite trains it first when it is missing. Every
learned policy runs with ``train_overlap`` 0 (``data.holdout``): the suite refuses otherwise.

Headroom capture = (E2E_fifo - E2E_policy) / (E2E_fifo - E2E_oracle), mean E2E, per seed with
that seed's FIFO and oracle runs; intervals are 95% t-intervals over seeds.

Every workload section also reports the learned policies' predictor on that workload's
requests (the first seed's): Kendall tau (pooled and within a generator) and MAE of the
admission p50, cold (the artifact alone) and prequential online (``predictor.prequential``:
``OnlineLevels`` learning from completions and running requests in arrival order), so a
scheduling number can be read next to how well the lengths were known
(``report.suite_predictors``: training, scoring and that table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from report.jobs import Arm, compose, run_arms
from report.runs import read_summary
from report.suite_predictors import (
    ensure_predictor,
    predictor_scores,
    predictor_section,
    write_predictor_numbers,
)
from report.tables import (
    REPO,
    capture,
    figure_link,
    finite_mean,
    fixed,
    fmt_ci,
    get,
    latency,
    load_table,
    md_table,
    rel,
    section_header,
)


@dataclass(frozen=True)
class Entry:
    """One suite workload: a ``conf/workload`` preset on a ``conf/engine`` preset."""

    name: str
    workload: str
    engine: str = "sim"


SUITE: tuple[Entry, ...] = (
    Entry("unseen_prompts", "unseen_prompts"),
    Entry("unseen_source", "unseen_source"),
    Entry("unseen_generators", "unseen_generators"),
    Entry("shift", "shift"),
    Entry("bursty", "bursty"),
    Entry("heavy_tail", "heavy_tail"),
    Entry("memory_bound", "memory_bound", "sim_memory_bound"),
    Entry("cross_shift", "cross_shift"),
    Entry("long_generators", "long_generators"),
    Entry("mixed_generators", "mixed_generators"),
)


@dataclass(frozen=True)
class SuitePlan:
    name: str
    n_requests: int
    loads: tuple[float, ...]
    seeds: tuple[int, ...]
    policies: tuple[str, ...] | None  # None: conf/evaluate.yaml's compare list
    entries: tuple[str, ...] | None = None  # None: every SUITE entry


PLANS: dict[str, SuitePlan] = {
    "full": SuitePlan("full", 3000, (0.95, 1.1), (0, 1, 2), None),
    # CI smoke test: every step of the pipeline on small workloads
    "quick": SuitePlan(
        "quick",
        200,
        (1.1,),
        (0,),
        ("fifo", "sjf", "drift", "oracle"),
        ("unseen_prompts", "shift", "bursty", "memory_bound"),
    ),
}

DISPLAY_METRICS = (
    ("mean E2E (s)", ("latency", "e2e_s", "mean"), False),
    ("P99 E2E (s)", ("latency", "e2e_s", "p99"), False),
    ("premium TTFT P99 (s)", ("per_tier", "premium", "latency", "ttft_s", "p99"), False),
    ("SLO attainment", ("slo", "attainment"), True),
    ("max preemptions / request", ("preemptions", "max_per_request"), False),
    ("recompute tax", ("preemptions", "recompute_tax"), False),
)


def workload_header(name: str) -> str:
    """The leading comment block of ``conf/workload/<name>.yaml`` (what the preset tests)."""
    lines = []
    for line in (REPO / "conf" / "workload" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(x for x in lines if x)


def preset_predictor(entry: Entry) -> tuple[str, list[str]] | None:
    """(artifact dir, train.py overrides) of a preset judged with its own predictor."""
    cfg = compose([f"workload={entry.workload}", f"engine={entry.engine}"])
    pred = cfg.workload.get("predictor")
    if pred is None or not pred.get("train"):
        return None
    return str(pred.dir), [str(o) for o in pred.train]


def suite_policies(plan: SuitePlan) -> tuple[str, ...]:
    """The plan's policies: its own list, else ``conf/evaluate.yaml``'s ``compare``."""
    return plan.policies or tuple(compose([]).compare)


def run_suite(
    plan: SuitePlan,
    root: Path,
    over: Sequence[str] = (),
    log: Any = print,
    arms: Sequence[Arm] | None = None,
) -> dict[str, dict[float, dict[int, dict[str, Path]]]]:
    """Run every job of ``plan``; ``runs[entry][load][seed][label]`` = its directory.

    ``arms``: the jobs per (workload, load, seed), default one per policy of the plan; an
    arm's directory is ``root/<workload>/u<load>/seed<seed>/<label>`` (finished runs of the
    same config are reused, so the ablations share the suite's baseline runs)."""
    from data.presets import workload_from_config

    entries = [e for e in SUITE if plan.entries is None or e.name in plan.entries]
    arms = list(arms) if arms is not None else [Arm(p, p) for p in suite_policies(plan)]
    runs: dict[str, dict[float, dict[int, dict[str, Path]]]] = {}
    for e in entries:
        runs[e.name] = {u: {} for u in plan.loads}
        for seed in plan.seeds:
            base = [
                f"workload={e.workload}",
                f"engine={e.engine}",
                f"seed={seed}",
                f"workload.n_requests={plan.n_requests}",
                # the policies are given explicitly: a changed compare list in evaluate.yaml
                # must not invalidate finished runs (they are reused by config equality)
                "compare=[]",
                *over,
            ]
            cache: dict[str, Any] = {}

            def wl(base: list[str] = base, seed: int = seed, cache: dict = cache) -> Any:
                if "w" not in cache:
                    cache["w"] = workload_from_config(compose(base).workload, seed=seed)
                return cache["w"]

            for u in plan.loads:
                d = root / e.name / f"u{u:g}" / f"seed{seed}"
                t0 = time.perf_counter()
                runs[e.name][u][seed] = run_arms(d, [*base, f"utilisation={u}"], arms, wl)
                log(f"  {e.name} u={u:g} seed={seed}: {time.perf_counter() - t0:.1f} s")
    return runs


def collect(
    runs: Mapping[int, Mapping[str, Path]], baseline: str = "fifo", reference: str = "oracle"
) -> dict[str, dict[str, list[float]]]:
    """Per policy: metric -> one value per seed (headroom capture per seed)."""
    out: dict[str, dict[str, list[float]]] = {}
    for _seed, by_policy in sorted(runs.items()):
        s = {p: read_summary(d) for p, d in by_policy.items()}
        fifo = latency(s.get(baseline, {}), "e2e_s", "mean")
        orc = latency(s.get(reference, {}), "e2e_s", "mean")
        for p, summ in s.items():
            m = out.setdefault(p, {})
            for label, path, _pct in DISPLAY_METRICS:
                m.setdefault(label, []).append(get(summ, *path))
            e2e = latency(summ, "e2e_s", "mean")
            m.setdefault("capture", []).append(capture(fifo, e2e, orc, tol=1e-9))
            m.setdefault("p99_vs_fifo", []).append(
                latency(summ, "e2e_s", "p99") / latency(s[baseline], "e2e_s", "p99")
                if baseline in s
                else math.nan
            )
            ov = summ.get("train_overlap")
            m.setdefault("train_overlap", []).append(math.nan if ov is None else float(ov))
            m.setdefault("distinct_prompts", []).append(float(summ.get("distinct_prompts") or 0))
    return out


def entry_section(
    e: Entry,
    runs: Mapping[float, Mapping[int, Mapping[str, Path]]],
    plan: SuitePlan,
    scored: Mapping[str, Any] | None = None,
) -> tuple[list[str], dict[float, dict[str, dict[str, list[float]]]]]:
    lines = [*section_header(e.name), workload_header(e.workload), ""]
    pred = preset_predictor(e)
    first = next(iter(next(iter(runs.values())).values()))
    s0 = read_summary(next(iter(first.values())))
    lines.append(
        f"Preset `workload={e.workload}` on `engine={e.engine}`; predictor "
        f"`{pred[0] if pred else 'artifacts'}`"
        + (f" (trained with `python train.py {' '.join(pred[1])}`)" if pred else "")
        + f"; {plan.n_requests:,} requests, {int(s0.get('distinct_prompts') or 0):,} distinct "
        f"prompts (seed {min(plan.seeds)}); runs under `{rel(next(iter(first.values())).parents[2])}`."
    )
    lines.append("")
    if scored is not None:
        c, o = scored["cold"], scored["online"]
        lines += [
            f"Predictor on these requests (seed {min(plan.seeds)}, {scored['n']:,} requests): "
            f"Kendall tau {c['kendall_tau']:.3f} cold / {o['kendall_tau']:.3f} online "
            f"(within a generator {c['tau_within_generator']:.3f} / "
            f"{o['tau_within_generator']:.3f}), MAE {c['mae']:.0f} / {o['mae']:.0f} tokens "
            f"(after the first 10%: {c['mae_after_warmup']:.0f} / {o['mae_after_warmup']:.0f}), "
            f"p90 coverage {c['p90_coverage']:.2f} / {o['p90_coverage']:.2f}.",
            "",
        ]
    data: dict[float, dict[str, dict[str, list[float]]]] = {}
    for u, by_seed in runs.items():
        m = collect(by_seed)
        data[u] = m
        header = [
            "policy",
            *[lab for lab, _, _ in DISPLAY_METRICS],
            "capture",
            "P99 / FIFO",
            "train_overlap",
        ]
        rows = []
        for p, v in m.items():
            ov = [x for x in v["train_overlap"] if math.isfinite(x)]
            rows.append(
                [
                    f"`{p}`",
                    *[fmt_ci(v[lab], pct=pct) for lab, _, pct in DISPLAY_METRICS],
                    fmt_ci(v["capture"]),
                    fmt_ci(v["p99_vs_fifo"]),
                    f"{max(ov):.3f}" if ov else "-",
                ]
            )
        lines += load_table(u, len(by_seed), header, rows)
    return lines, data


def overview(
    data: Mapping[str, Mapping[float, Mapping[str, Mapping[str, list[float]]]]],
    metric: str,
    digits: int = 2,
) -> str:
    """Policies x (workload, load): the seed mean of ``metric``."""
    cols = [(e, u) for e, by_u in data.items() for u in by_u]
    policies = list(dict.fromkeys(p for by_u in data.values() for m in by_u.values() for p in m))
    rows = []
    for p in policies:
        row = [f"`{p}`"]
        for e, u in cols:
            v = data[e][u].get(p, {}).get(metric)
            x = finite_mean(v) if v else math.nan
            row.append(fixed(x, f".{digits}f"))
        rows.append(row)
    return md_table(["policy", *[f"{e} @{u:g}" for e, u in cols]], rows)


def figure(
    data: Mapping[str, Mapping[float, Mapping[str, Mapping[str, list[float]]]]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(e, u) for e, by_u in data.items() for u in by_u]
    policies = list(dict.fromkeys(p for by_u in data.values() for m in by_u.values() for p in m))
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.3 * len(cols)), 0.5 * len(policies) + 3))
    for ax, metric, title, cmap, lim in (
        (axes[0], "capture", "headroom capture (1 = oracle, 0 = FIFO)", "RdYlGn", (-1, 1)),
        (axes[1], "p99_vs_fifo", "P99 E2E / FIFO's", "RdYlGn_r", (0, 2)),
    ):
        grid = np.array(
            [
                [finite_mean(data[e][u].get(p, {}).get(metric, [math.nan])) for e, u in cols]
                for p in policies
            ]
        )
        im = ax.imshow(grid, cmap=cmap, vmin=lim[0], vmax=lim[1], aspect="auto")
        ax.set_xticks(range(len(cols)), [f"{e}\n@{u:g}" for e, u in cols], fontsize=7)
        ax.set_yticks(range(len(policies)), policies, fontsize=8)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if math.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reading(
    data: Mapping[str, Mapping[float, Mapping[str, Mapping[str, list[float]]]]],
) -> list[str]:
    """Computed sentences: the best non-oracle policy per workload and load, and drift's place."""
    out = []
    for e, by_u in data.items():
        for u, m in by_u.items():
            cands = {
                p: finite_mean(v["mean E2E (s)"])
                for p, v in m.items()
                if p not in ("oracle", "srpt_oracle")
                and math.isfinite(finite_mean(v["mean E2E (s)"]))
            }
            if not cands:
                continue
            best = min(cands, key=cands.get)  # type: ignore[arg-type]
            line = (
                f"- **{e} @{u:g}**: best non-oracle mean E2E `{best}` "
                f"({cands[best]:.1f} s, capture {finite_mean(m[best]['capture']):.2f}, P99/FIFO "
                f"{finite_mean(m[best]['p99_vs_fifo']):.2f})"
            )
            if "drift" in m and best != "drift":
                d = finite_mean(m["drift"]["mean E2E (s)"])
                line += (
                    f"; `drift` {100 * (d / cands[best] - 1):+.1f}% mean E2E vs it, capture "
                    f"{finite_mean(m['drift']['capture']):.2f}, P99/FIFO "
                    f"{finite_mean(m['drift']['p99_vs_fifo']):.2f}"
                )
            out.append(line + ".")
    return out


def write_document(
    plan: SuitePlan,
    root: Path,
    doc: Path,
    runs: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]],
    wall_s: float,
    train_s: float,
    over: Sequence[str] = (),
) -> dict[str, Any]:
    data: dict[str, dict[float, dict[str, dict[str, list[float]]]]] = {}
    sections: list[str] = []
    scored: dict[str, dict[str, Any] | None] = {}
    for e in SUITE:
        if e.name not in runs:
            continue
        scored[e.name] = predictor_scores(e, plan, root, over)
        lines, d = entry_section(e, runs[e.name], plan, scored[e.name])
        data[e.name] = d
        sections += lines
    fig = doc.parent / "figures" / f"generalisation_{plan.name}.png"
    figure(data, fig)
    head = [
        *_intro(plan, runs, wall_s, train_s),
        "## Reading",
        "",
        *reading(data),
        "",
        "## Headroom capture (mean over seeds)",
        "",
        overview(data, "capture"),
        "",
        "## P99 E2E relative to FIFO (mean over seeds)",
        "",
        overview(data, "p99_vs_fifo"),
        "",
        *predictor_section(scored),
        figure_link("capture and tail", fig, doc.parent),
        "",
        "## Workloads",
        "",
        *sections,
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(head) + "\n")
    write_predictor_numbers(root, scored)
    return {
        e: {
            f"{u:g}": {p: {k: finite_mean(v) for k, v in m.items()} for p, m in by_p.items()}
            for u, by_p in by_u.items()
        }
        for e, by_u in data.items()
    }


def _intro(
    plan: SuitePlan,
    runs: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Path]]]],
    wall_s: float,
    train_s: float,
) -> list[str]:
    """The document's title, how it was regenerated (jobs, wall time) and the protocol."""
    n_jobs = sum(
        len(by_p) for by_u in runs.values() for by_s in by_u.values() for by_p in by_s.values()
    )
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return [
        "# Generalisation suite",
        "",
        f"Regenerated by `python -m report.generalisation{' --quick' if plan.name == 'quick' else ''}`"
        f" (plan `{plan.name}`): {len(runs)} workloads x {len(plan.loads)} loads x "
        f"{len(plan.seeds)} seeds x every policy = {n_jobs} simulator jobs, "
        f"{wall_s / 60:.1f} min wall on this 2-core machine (OMP_NUM_THREADS={threads}; "
        f"training the suite's own predictors took {train_s / 60:.1f} min of it). "
        "Never edited by hand.",
        "",
        "Protocol: every learned policy is evaluated on prompts its predictor never trained or "
        "validated on (`train_overlap` = 0 in every row; `data/holdout.py`), with the same "
        "artifacts for every learned policy of a workload. Headroom capture = (E2E_fifo - "
        "E2E_policy) / (E2E_fifo - E2E_oracle) per seed (oracle = non-preemptive, true "
        "lengths); intervals are 95% t-intervals over seeds. `P99 / FIFO` < 1 is a better tail "
        "than FIFO.",
        "",
    ]


def suite_paths(quick: bool, runs: str, doc: str | None, name: str) -> tuple[SuitePlan, Path, Path]:
    """(plan, run root, document) for a suite command; the full plan's document is the
    documented study in docs/, a quick run's lies beside its run directories."""
    plan = PLANS["quick" if quick else "full"]
    root = Path(runs) / plan.name
    if doc:
        path = Path(doc)
    elif plan.name == "full":
        path = REPO / "docs" / name
    else:
        path = root / name
    os.environ.setdefault("DRIFTSCHED_PROGRESS", "off")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return plan, root, path


def train_suite_predictors(plan: SuitePlan, extra: Sequence[str] = ()) -> float:
    """Train the predictors the plan's presets are judged with, where missing; seconds."""
    total = 0.0
    for e in SUITE:
        if plan.entries is None or e.name in plan.entries:
            pred = preset_predictor(e)
            if pred is not None:
                total += ensure_predictor(pred[0], pred[1], extra)
    return total


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m report.generalisation", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the CI smoke plan (small, 1 seed)")
    ap.add_argument("--runs", default=str(REPO / "results_runs" / "generalisation"))
    ap.add_argument("--doc", default=None, help="default docs/GENERALISATION.md (full plan)")
    ap.add_argument(
        "--train-arg",
        action="append",
        default=[],
        help="extra train.py override for the suite's own predictors (repeatable)",
    )
    ap.add_argument(
        "--override", action="append", default=[], help="extra evaluate.py override (repeatable)"
    )
    a = ap.parse_args(argv)
    plan, root, doc = suite_paths(a.quick, a.runs, a.doc, "GENERALISATION.md")
    t0 = time.perf_counter()
    train_s = train_suite_predictors(plan, a.train_arg)
    runs = run_suite(plan, root, a.override)
    wall = time.perf_counter() - t0
    key = write_document(plan, root, doc, runs, wall, train_s, a.override)
    (root / "key_numbers.json").write_text(json.dumps(key, indent=1, default=str))
    print(f"wrote {doc} ({wall / 60:.1f} min); key numbers in {root / 'key_numbers.json'}")
    return key


if __name__ == "__main__":
    main()
