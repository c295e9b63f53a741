"""Progress for long loops (simulation, live replay, training) that stays quiet in CI logs.

``Progress(total, desc)`` shows a tqdm bar on an interactive terminal and, when stderr is not a
terminal (CI, ``sbatch``, ``submitit``, joblib workers), prints one plain line at most every
``every_s`` seconds (default 60: a job shorter than a minute prints nothing). ``DRIFTSCHED_PROGRESS``
overrides the choice: ``bar`` | ``lines`` | ``off`` (``auto`` is the default).

``sim_observer(desc, horizon_s)`` adapts it to ``scheduler.sim.engine.SimEngine``'s per-step
``observer`` hook: progress is simulated time against the last arrival (the simulator does not
know in advance how many steps a run takes).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

MODES = ("auto", "bar", "lines", "off")


def progress_mode(stream: TextIO | None = None) -> str:
    """``bar`` on an interactive terminal outside CI, else ``lines``; ``DRIFTSCHED_PROGRESS``
    (bar | lines | off) wins."""
    env = os.environ.get("DRIFTSCHED_PROGRESS", "auto").strip().lower() or "auto"
    if env not in MODES:
        raise ValueError(f"DRIFTSCHED_PROGRESS={env!r}; expected one of {list(MODES)}")
    if env != "auto":
        return env
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty and not os.environ.get("CI") else "lines"


class Progress:
    """A counter towards ``total`` (any unit) with a bar or rate-limited lines.

    ``update(n)`` adds, ``set(value)`` sets the absolute value; ``close()`` (or leaving the
    ``with`` block) prints a final line in ``lines`` mode only when an intermediate line was
    printed (so short jobs stay silent).
    """

    def __init__(
        self,
        total: float | None,
        desc: str = "",
        unit: str = "it",
        every_s: float = 60.0,
        stream: TextIO | None = None,
        mode: str | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every_s = float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode or progress_mode(self.stream)
        if self.mode not in MODES[1:]:
            raise ValueError(f"progress mode {self.mode!r}; expected bar | lines | off")
        self.value = 0.0
        self.postfix = ""
        self.lines_printed = 0
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=False
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1, postfix: str = "") -> None:
        self.set(self.value + n, postfix)

    def set(self, value: float, postfix: str = "") -> None:
        delta = value - self.value
        self.value = float(value)
        if postfix:
            self.postfix = postfix
        if self.mode == "bar":
            if delta:
                self._bar.update(delta)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= self.every_s:
                self._last = now
                self._line(now)

    def line(self) -> str:
        """The text of a progress line: ``desc: value/total unit (pct) elapsed, postfix``."""
        elapsed = time.monotonic() - self._t0
        if self.total:
            pct = 100.0 * self.value / self.total
            done = f"{self.value:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%)"
        else:
            done = f"{self.value:,.0f} {self.unit}"
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}, {elapsed:.0f} s elapsed{tail}"

    def _line(self, now: float) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.lines_printed += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.lines_printed:
            self._line(time.monotonic())
            self.lines_printed = 0  # idempotent close


class SimProgressObserver:
    """``SimEngine.observer``: progress in simulated seconds towards the last arrival."""

    fast_forward_ok = True  # reads now/step/queue sizes only: one call per decode window is fine

    def __init__(
        self,
        desc: str,
        horizon_s: float,
        every_s: float = 60.0,
        stream: TextIO | None = None,
        mode: str | None = None,
    ) -> None:
        self.progress = Progress(
            total=max(float(horizon_s), 1e-9),
            desc=desc,
            unit="sim s",
            every_s=every_s,
            stream=stream,
            mode=mode,
        )

    def __call__(self, state: Any) -> None:
        # past the last arrival the run only drains the queue; clamp so the bar ends at 100%
        now = min(float(state.now), self.progress.total or float(state.now))
        self.progress.set(
            now,
            postfix=f"step {state.step}, {len(state.running)} running, "
            f"{len(state.waiting)} waiting",
        )

    def close(self) -> None:
        self.progress.close()


def sim_observer(
    desc: str, workload: Any, every_s: float = 60.0, mode: str | None = None
) -> SimProgressObserver:
    """An observer for ``SimEngine`` over ``workload`` (a ``Workload`` or request table)."""
    df = workload.requests if hasattr(workload, "requests") else workload
    horizon = float(df["arrival_s"].max()) if len(df) else 0.0
    return SimProgressObserver(desc, horizon, every_s=every_s, mode=mode)
