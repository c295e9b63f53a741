"""scheduler.progress: a bar on a terminal, rate-limited lines elsewhere, silent for short CI jobs."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from scheduler.progress import Progress, progress_mode, sim_observer


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTSCHED_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(TTY()) == "bar"
    monkeypatch.setenv("CI", "true")
    assert progress_mode(TTY()) == "lines"
    monkeypatch.setenv("DRIFTSCHED_PROGRESS", "off")
    assert progress_mode(TTY()) == "off"
    monkeypatch.setenv("DRIFTSCHED_PROGRESS", "loud")
    with pytest.raises(ValueError, match="DRIFTSCHED_PROGRESS"):
        progress_mode(io.StringIO())


def test_short_job_in_ci_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTSCHED_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(1000, "sim", stream=out) as p:
        for _ in range(1000):
            p.update(1)
    assert out.getvalue() == ""


def test_lines_are_rate_limited_and_closed() -> None:
    out = io.StringIO()
    with Progress(4, "replay", unit="requests", every_s=0.0, stream=out, mode="lines") as p:
        for i in range(4):
            p.update(1, postfix=f"{i} in flight")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per update (every_s=0) plus the closing line
    assert lines[-1].startswith("replay: 4/4 requests (100%)")
    assert "3 in flight" in lines[-1]


def test_bar_and_off() -> None:
    out = io.StringIO()
    with Progress(10, "train", stream=out, mode="bar") as p:
        p.update(10)
    assert "train" in out.getvalue()
    out = io.StringIO()
    with Progress(10, "x", stream=out, mode="off", every_s=0.0) as p:
        p.update(10)
    assert out.getvalue() == ""


def test_sim_observer_on_a_real_engine(capsys: pytest.CaptureFixture[str]) -> None:
    from scheduler.policies.fifo import FIFOPolicy
    from scheduler.sim.engine import SimEngine

    n = 30
    wl = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": ["chat"] * n,
            "tier": ["premium"] * n,
            "arrival_s": [0.5 * i for i in range(n)],
            "prompt_tokens": [64] * n,
            "output_tokens": [32] * n,
            "max_tokens": [64] * n,
        }
    )
    obs = sim_observer("sim fifo", wl, every_s=0.0, mode="lines")
    engine = SimEngine(observer=obs)
    res = engine.run(wl, FIFOPolicy())
    obs.close()
    assert len(res.records) == n
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) > 10 and all(line.startswith("sim fifo: ") for line in lines)
    assert "running" in lines[0] and "sim s" in lines[0]
    assert "(100%)" in lines[-1]
