"""The one module that owns wandb.

``tracking_run(...)`` is a context manager that yields a :class:`Tracker`. It never prompts and
never blocks: without ``WANDB_API_KEY`` (or with ``WANDB_MODE=offline``) runs are written offline
under ``wandb/``; ``logger=none`` (``enabled=False``) yields a tracker that does nothing. The run
is always finished in ``finally``, with a non-zero exit code when the body raised, so a failing
sweep job never leaves a dangling run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into ``a.b.c`` keys (wandb config and summaries)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


class Tracker:
    """No-op tracker; :class:`WandbTracker` overrides every method."""

    enabled = False

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        pass

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        pass

    def log_image(self, name: str, path: str | Path) -> None:
        pass


class WandbTracker(Tracker):
    enabled = True

    def __init__(self, run: Any) -> None:
        self.run = run

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.run.log(flatten(metrics), step=step)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        for k, v in flatten(metrics).items():
            self.run.summary[k] = v

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        import wandb

        self.run.log({name: wandb.Table(dataframe=df.reset_index(drop=True))})

    def log_image(self, name: str, path: str | Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})


def wandb_mode(requested: str | None = None) -> str:
    """``online`` only when asked for and a key is set; otherwise ``offline`` (never prompts)."""
    env = os.environ.get("WANDB_MODE")
    mode = requested or env or "auto"
    if mode == "disabled":
        return "disabled"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if mode == "online" and has_key:
        return "online"
    if mode == "auto" and has_key and env != "offline":
        return "online"
    return "offline"


@contextmanager
def tracking_run(*, enabled: bool, project: str, job_type: str, name: str,
                 config: Mapping[str, Any], group: str | None = None,
                 tags: list[str] | None = None, mode: str | None = None,
                 dir: str | Path | None = None) -> Iterator[Tracker]:
    """Start a wandb run (offline without a key) or a no-op tracker, and always finish it."""
    if not enabled:
        yield Tracker()
        return
    import wandb

    resolved = wandb_mode(mode)
    # Never let wandb ask questions or wait on the network.
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    run = wandb.init(project=project, job_type=job_type, name=name, group=group, tags=tags,
                     config=flatten(config), mode=resolved,
                     dir=str(dir) if dir is not None else None, reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    exit_code = 1
    try:
        yield WandbTracker(run)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)
