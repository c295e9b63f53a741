"""Fixtures of the reliability suite: a network-blocked process, and the campaign's counts.

``no_network`` (any test can use it, e.g. future train/evaluate end-to-end tests):

    def test_offline(no_network):
        ...  # every connection / DNS lookup to a non-local address raises NetworkBlockedError
        assert no_network == []  # and was recorded, even if the code swallowed the error

``blocked_subprocess_env`` gives an environment (and the attempt log) that blocks the network
in a child Python too, through a generated ``sitecustomize.py``.

``tiny_artifacts`` is the one tiny trained predictor (real LightGBM length + drift, ~3 s),
trained once per session for every test that serves from a predictor (tests/tiny_predictor.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/LightGBM start their pools

from report.config_schema import register
from tests import campaign
from tests.netblock import block_network, blocked_env
from tests.tiny_predictor import tiny_artifacts_at

register()  # every test composes the real configs: the policy/engine schemas they name

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny length + drift predictor (tests/tiny_predictor.py), trained once."""
    return tiny_artifacts_at(tmp_path_factory.mktemp("tiny_artifacts"))


@pytest.fixture
def no_network() -> Iterator[list[str]]:
    """Block non-local network use for the test; yields the list of attempts made."""
    with block_network() as attempts:
        yield attempts


@pytest.fixture
def blocked_subprocess_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """``(env, attempt_log)`` for ``subprocess.run(..., env=env)`` with the network blocked."""
    return blocked_env(tmp_path, REPO_ROOT)


@pytest.fixture(scope="session", autouse=True)
def _campaign_counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Write the counts of generated inputs as JSON when the session ends."""
    yield
    if not campaign.COUNTS:
        return
    out = os.environ.get("RELIABILITY_COUNTS_JSON")
    path = Path(out) if out else tmp_path_factory.getbasetemp() / "reliability_counts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary(), indent=2, sort_keys=True) + "\n")


def summary() -> dict[str, object]:
    by_target: dict[str, dict[str, int]] = {}
    for key, n in sorted(campaign.COUNTS.items()):
        target, outcome = key.rsplit("/", 1)
        by_target.setdefault(target, {})[outcome] = n
    return {
        "profile": campaign.PROFILE,
        "total_inputs": sum(campaign.COUNTS.values()),
        "by_target": by_target,
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not campaign.COUNTS:
        return
    s = summary()
    tr = terminalreporter
    tr.section(f"reliability campaign ({s['profile']} profile): inputs by target and outcome")
    for target, outcomes in s["by_target"].items():  # type: ignore[union-attr]
        parts = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        tr.write_line(f"{target:<44} {sum(outcomes.values()):>6}  ({parts})")
    tr.write_line(f"{'total':<44} {s['total_inputs']:>6}")
