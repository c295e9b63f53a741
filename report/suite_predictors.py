"""The suite's length predictors (``report.generalisation``): training the ones a preset is
judged with (:func:`ensure_predictor`), scoring the learned policies' predictor on each suite
workload's requests, cold and prequentially online (:func:`predictor_scores`, cached per
workload), and the document's table of those scores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from report.jobs import compose
from report.tables import NA, REPO, fixed, md_table, rel

if TYPE_CHECKING:
    from report.generalisation import Entry, SuitePlan


def ensure_predictor(
    directory: str, overrides: Sequence[str], extra: Sequence[str] = (), log: Any = print
) -> float:
    """Train ``directory`` with ``python train.py <overrides>`` unless it exists; seconds."""
    d = Path(directory)
    if not d.is_absolute():
        d = REPO / d
    if (d / "length" / "meta.json").is_file() and (d / "drift" / "meta.json").is_file():
        return 0.0
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        *overrides,
        f"out_dir={d}",
        "logger=none",
        "hydra.run.dir=" + str(REPO / "outputs" / "train" / "suite" / d.name),
        *extra,
    ]
    log(f"training the suite predictor {rel(d)}: {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def predictor_scores(
    e: Entry, plan: SuitePlan, root: Path, over: Sequence[str] = ()
) -> dict[str, Any] | None:
    """Cold and online predictor metrics on the entry's workload (first seed), cached in
    ``root/<entry>/predictor_seed<seed>.json``; None where the predictor is not trained."""
    from data.presets import workload_from_config
    from predictor.prequential import evaluate_frame
    from predictor.score import load_length_model

    seed = min(plan.seeds)
    path = root / e.name / f"predictor_seed{seed}.json"
    cfg = compose(
        [
            f"workload={e.workload}",
            f"engine={e.engine}",
            f"seed={seed}",
            f"workload.n_requests={plan.n_requests}",
            *over,
        ]
    )
    d = Path(str(cfg.predictor_dir))
    d = d if d.is_absolute() else REPO / d
    if not ((d / "length" / "meta.json").is_file() or (d / "meta.json").is_file()):
        return None
    meta = (d / "length" / "meta.json") if (d / "length").is_dir() else d / "meta.json"
    stamp = json.loads(meta.read_text()).get("created_utc")
    if path.is_file():
        hit = json.loads(path.read_text())
        if hit.get("artifact_created_utc") == stamp and hit.get("n") == plan.n_requests:
            return hit
    wl = workload_from_config(cfg.workload, seed=seed)
    out = evaluate_frame(load_length_model(d), wl.requests)
    out.update(predictor_dir=rel(d), artifact_created_utc=stamp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    return out


PREDICTOR_COLUMNS = (
    ("tau", "kendall_tau"),
    ("tau within generator", "tau_within_generator"),
    ("MAE (tokens)", "mae"),
    ("MAE after 10%", "mae_after_warmup"),
    ("p90 coverage", "p90_coverage"),
)


def predictor_table(scored: Mapping[str, Mapping[str, Any] | None]) -> str:
    """Workloads x (cold, online) predictor metrics (markdown)."""
    header = ["workload", "n"]
    for lab, _ in PREDICTOR_COLUMNS:
        header += [f"{lab} cold", f"{lab} online"]
    rows = []
    for name, sc in scored.items():
        if sc is None:
            rows.append([name, "-", *["not trained"] * (2 * len(PREDICTOR_COLUMNS))])
            continue
        row = [name, f"{sc['n']:,}"]
        for _, key in PREDICTOR_COLUMNS:
            for mode in ("cold", "online"):
                v = sc[mode].get(key, math.nan)
                row.append(fixed(v, ".3g") if isinstance(v, float) else NA)
        rows.append(row)
    return md_table(header, rows)


def predictor_section(scored: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The predictor's quality on every workload, cold and online."""
    return [
        "## The predictor on each workload",
        "",
        "The learned policies' length predictor on each workload's requests (first seed): "
        "Kendall tau of the admission p50 pooled and within a generator (n-weighted over "
        "generators with >= 20 requests), MAE (all requests, and after the first 10% of "
        "arrivals), p90 coverage; *cold* = the artifact alone, *online* = served "
        "prequentially with `predictor.online.OnlineLevels` (levels model, tenant, category; "
        "completions at arrival + 0.03 s per output token, running requests censored).",
        "",
        predictor_table(scored),
        "",
    ]


def write_predictor_numbers(root: Path, scored: Mapping[str, Mapping[str, Any] | None]) -> None:
    """``root/predictor_numbers.json``: each workload's cold and online predictor metrics."""
    (root / "predictor_numbers.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "predictor_numbers.json").write_text(
        json.dumps(
            {
                e: None if sc is None else {m: sc[m] for m in ("cold", "online")}
                for e, sc in scored.items()
            },
            indent=1,
            default=float,
        )
    )
