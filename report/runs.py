"""Find and read evaluation runs from disk (never from wandb).

An evaluation job directory (``evaluate.py``'s Hydra run dir, one sub-directory per policy for the
bare command, or one multirun job dir) holds ``records.parquet`` (``scheduler.records``),
``steps.parquet`` (``scheduler.engine.STEP_COLUMNS``), ``summary.json`` (written last, atomically:
its presence marks a finished job) and ``config.yaml`` / ``.hydra/config.yaml``.

:func:`discover_runs` walks the given directories recursively and returns every job directory it
finds, complete or not. A job is *incomplete* when

* ``records.parquet`` exists but ``summary.json`` does not (killed or still running), or
* it is a Hydra job directory (``.hydra/``) with neither (failed before writing anything), or
* an ``INCOMPLETE`` marker file is present (a job may write one while it runs), or
* ``summary.json`` is unreadable or does not count the rows of ``records.parquet``.

:func:`job_finished` is the same test for one directory, used to skip finished jobs when a sweep
is re-run (see docs/COMPARING.md, "Resuming a sweep").

This module is the one owner of the format: the job layer (``report.jobs``) writes a job
directory only through :func:`atomic_write`, :func:`write_outputs`, :func:`write_partial`,
:func:`mark_running` and :func:`save_config`, and reads it back through the functions below.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

RECORDS = "records.parquet"
STEPS = "steps.parquet"
SUMMARY = "summary.json"
MARKER = "INCOMPLETE"  # present while a job runs or after it failed (its text says why)
PARTIAL_META = "partial.json"  # what a failed job kept: error, counts (no summary.json)
CONFIG = "config.yaml"  # the job's composed config (unresolved), saved before it runs
COMPARISON = "comparison.csv"  # the bare command's table over its per-policy sub-directories
SKIP_DIRS = {"wandb", ".hydra", ".submitit", "__pycache__", "figures", "comparison", ".git"}


@dataclass
class Run:
    """One evaluation job directory."""

    path: Path
    problem: str = ""  # why the run is incomplete; "" when complete
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the job's config.yaml (unresolved)
    overrides: list[str] = field(default_factory=list)  # .hydra/overrides.yaml, if any

    @property
    def complete(self) -> bool:
        return not self.problem

    @property
    def policy(self) -> str:
        """Policy name: summary.json, else the config's choice, else the directory name."""
        return str(
            self.summary.get("policy") or _override(self.overrides, "policy") or self.path.name
        )

    @property
    def seed(self) -> int | None:
        s = self.summary.get("seed", self.config.get("seed"))
        return None if s is None else int(s)

    @property
    def utilisation(self) -> float | None:
        """Offered load as a fraction of capacity; None when the load was set as ``rate_rps``."""
        if self.config.get("rate_rps") is not None:
            return None
        u = self.summary.get("utilisation", self.config.get("utilisation"))
        return None if u is None else float(u)

    @property
    def rate_rps(self) -> float | None:
        r = self.summary.get("rate_rps")
        return None if r is None else float(r)

    @property
    def workload(self) -> str:
        w = self.config.get("workload")
        name = w.get("name") if isinstance(w, Mapping) else None
        return str(self.summary.get("workload") or name or "?")

    @property
    def engine(self) -> str:
        return str(self.summary.get("engine") or "?")

    @cached_property
    def records(self) -> pd.DataFrame:
        from scheduler.records import check_records

        df = pd.read_parquet(self.path / RECORDS)
        check_records(df, where=str(self.path / RECORDS))
        return df

    @cached_property
    def steps(self) -> pd.DataFrame | None:
        p = self.path / STEPS
        return pd.read_parquet(p) if p.is_file() else None


def _override(overrides: Iterable[str], key: str) -> str | None:
    for o in overrides:
        k, _, v = o.partition("=")
        if k.lstrip("+~") == key:
            return v
    return None


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _job_config(d: Path) -> tuple[dict[str, Any], list[str]]:
    """The job's config and overrides: here, or in the parent (bare ``evaluate.py`` writes one
    config for its per-policy sub-directories)."""
    for base in (d, d.parent):
        for p in (base / "config.yaml", base / ".hydra" / "config.yaml"):
            if p.is_file():
                ov = base / ".hydra" / "overrides.yaml"
                overrides = [str(o) for o in _load_yaml(ov)] if ov.is_file() else []
                cfg = _load_yaml(p)
                if base != d and isinstance(cfg, dict):  # the bare command: policy = dir name
                    cfg = {**cfg, "policy_name": d.name}
                return (cfg if isinstance(cfg, dict) else {}), overrides
    return {}, []


def _problem(d: Path) -> tuple[str, dict[str, Any]]:
    """("", summary) for a finished job dir, else (reason, partial summary)."""
    if (d / MARKER).exists():
        return f"{MARKER} marker present (the job is running or was interrupted)", {}
    if not (d / RECORDS).is_file():
        return f"no {RECORDS} (the job failed or has not written results yet)", {}
    if not (d / SUMMARY).is_file():
        return f"no {SUMMARY} next to {RECORDS} (the job did not finish)", {}
    try:
        summary = json.loads((d / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{SUMMARY} is not valid JSON ({e})", {}
    if not isinstance(summary, dict) or "n_requests" not in summary:
        return f"{SUMMARY} has no n_requests (not an evaluate.py summary)", {}
    if summary.get("complete") is False:
        return f"{SUMMARY} says complete=false", summary
    try:
        import pyarrow.parquet as pq

        n_rows = pq.ParquetFile(d / RECORDS).metadata.num_rows
    except Exception as e:  # unreadable parquet: a torn or foreign file
        return f"{RECORDS} is unreadable ({type(e).__name__}: {e})", summary
    if n_rows != summary["n_requests"]:
        return (
            f"{RECORDS} has {n_rows} rows but {SUMMARY} counts n_requests={summary['n_requests']}",
            summary,
        )
    return "", summary


def job_finished(job_dir: str | os.PathLike[str]) -> bool:
    """True when ``job_dir`` holds a finished evaluation (a sweep re-run may skip it).

    For the bare ``evaluate.py`` (one sub-directory per policy) every policy directory listed in
    ``config.yaml``'s ``compare`` must be finished.
    """
    d = Path(job_dir)
    if not _problem(d)[0]:
        return True
    cfg_path = d / "config.yaml"
    if not cfg_path.is_file() or (d / RECORDS).exists():
        return False
    cfg = _load_yaml(cfg_path)
    if not isinstance(cfg, dict) or cfg.get("policy") is not None or not cfg.get("compare"):
        return False
    return all(not _problem(d / str(p))[0] for p in cfg["compare"])


def _is_hydra_job(d: Path) -> bool:
    return (d / ".hydra").is_dir()


def discover_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Every evaluation job directory under ``paths`` (recursively), sorted by path.

    Raises ``FileNotFoundError`` for a path that does not exist and ``ValueError`` when nothing
    that looks like a run is found under a path.
    """
    found: dict[Path, Run] = {}
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run or multirun directory")
        if not root.is_dir():
            raise ValueError(
                f"{root}: expected a directory (an evaluate.py run or multirun "
                "directory), got a file"
            )
        before = len(found)
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = sorted(x for x in dirnames if x not in SKIP_DIRS)
            names = set(filenames)
            has_results = RECORDS in names or SUMMARY in names or MARKER in names
            if not has_results and not _is_hydra_job(d):
                continue
            if not has_results and _has_results_below(d):
                continue  # the bare command's parent dir: its policies are the runs
            problem, summary = _problem(d)
            config, overrides = _job_config(d)
            found[d.resolve()] = Run(
                path=d, problem=problem, summary=summary, config=config, overrides=overrides
            )
        if len(found) == before:
            raise ValueError(
                f"{root}: no evaluation runs found (expected directories with "
                f"{RECORDS} and {SUMMARY}, written by evaluate.py)"
            )
    return [found[k] for k in sorted(found)]


def _has_results_below(d: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [x for x in dirnames if x not in SKIP_DIRS]
        if Path(dirpath) != d and (RECORDS in filenames or SUMMARY in filenames):
            return True
    return False


# --- writing a job directory ---------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, then rename (no torn files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def clean_json(o: Any) -> Any:
    """NaN/inf -> None so summary.json is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Mapping):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [clean_json(v) for v in o]
    return o


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (NaN/inf as null, numpy scalars as numbers), written atomically."""
    text = json.dumps(clean_json(obj), indent=2, default=_json_default, allow_nan=False)
    atomic_write(path, lambda p: p.write_text(text))


def save_config(job_dir: Path, cfg: Any) -> None:
    """The composed config (unresolved) as ``config.yaml``: what :func:`finished_same_config`
    compares a re-run against."""
    from omegaconf import OmegaConf

    atomic_write(job_dir / CONFIG, lambda p: OmegaConf.save(cfg, p))


def finished_same_config(job_dir: Path, cfg: Any) -> bool:
    """True if ``job_dir`` holds a finished job (:func:`job_finished`) whose saved
    ``config.yaml`` equals ``cfg`` (a re-run of a resumable sweep skips it)."""
    from omegaconf import OmegaConf

    saved = job_dir / CONFIG
    if not saved.is_file() or not job_finished(job_dir):
        return False
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    return old == OmegaConf.to_container(cfg, resolve=False)


def mark_running(job_dir: Path, text: str) -> Path:
    """Write the ``INCOMPLETE`` marker (the job counts as unfinished until
    :func:`write_outputs` has written summary.json and the marker is removed); returns it."""
    marker = job_dir / MARKER
    atomic_write(marker, lambda p: p.write_text(text))
    return marker


def write_outputs(job_dir: Path, result: Any, summary: Mapping[str, Any]) -> None:
    """records.parquet, steps.parquet, then summary.json (last: it marks the job finished)."""
    # a re-run into a finished job's directory: drop the old summary first, so a crash between
    # the renames below never pairs new records with a summary that claims completion
    (job_dir / SUMMARY).unlink(missing_ok=True)
    atomic_write(job_dir / RECORDS, lambda p: result.records.to_parquet(p))
    atomic_write(job_dir / STEPS, lambda p: result.steps.to_parquet(p))
    write_json(job_dir / SUMMARY, summary)


def write_partial(job_dir: Path, name: str, exc: BaseException) -> str:
    """After a failed or interrupted run: the records the engine kept (``exc.partial_result``,
    both engines) and ``partial.json``; never ``summary.json``, so the job stays incomplete.
    Returns the marker text. Never raises over ``exc``."""
    kind = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    head = f"policy {name} {kind}: {type(exc).__name__}: {exc}\n"
    res = getattr(exc, "partial_result", None)
    if res is None or getattr(res, "records", None) is None:
        why = getattr(exc, "partial_error", "the engine kept no records of this run")
        return head + f"no records were written for it ({why})\n"
    try:
        (job_dir / SUMMARY).unlink(missing_ok=True)
        atomic_write(job_dir / RECORDS, lambda p: res.records.to_parquet(p))
        if getattr(res, "steps", None) is not None:
            atomic_write(job_dir / STEPS, lambda p: res.steps.to_parquet(p))
        write_json(
            job_dir / PARTIAL_META,
            {**dict(res.meta or {}), "complete": False, "error": head.strip()},
        )
    except Exception as e:  # keep the original error; say what was lost
        return head + f"its partial records could not be written ({type(e).__name__}: {e})\n"
    rec = res.records
    n_fin = int((rec["status"] == "finished").sum()) if "status" in rec else 0
    left = (res.meta or {}).get("unfinished_requests")
    return head + (
        f"partial records: {len(rec)} request(s) that ended before it ({n_fin} finished, "
        f"{len(rec) - n_fin} aborted) in records.parquet"
        + (f"; {left} unfinished request(s) left out" if left is not None else "")
        + f"; details in {PARTIAL_META}. This run is INCOMPLETE: do not compare it as finished\n"
    )


def read_summary(job_dir: Path) -> dict[str, Any]:
    """A finished job's ``summary.json`` (the report generators' source of numbers)."""
    return json.loads((job_dir / SUMMARY).read_text())


def load_run(job_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """A finished job's summary and record table."""
    return read_summary(job_dir), pd.read_parquet(job_dir / RECORDS)


def group_minutes(root: Path) -> float:
    """Minutes the simulation groups under ``root`` took in all (their ``group_timing.json``,
    written by ``report.jobs.run_arms``)."""
    files = list(root.rglob("group_timing.json"))
    return sum(json.loads(f.read_text())["wall_s"] for f in files) / 60
