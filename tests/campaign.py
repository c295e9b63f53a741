"""Shared machinery of the reliability campaign: hypothesis settings and input counters.

Every property test records what it generated in ``COUNTS`` (``"<target>/<outcome>"`` ->
inputs); ``conftest.py`` prints the table at the end of the session and writes it as JSON
(``reliability_counts.json`` under pytest's base temp dir, or ``$RELIABILITY_COUNTS_JSON``),
which is where the numbers in docs/RELIABILITY.md come from.

``HYPOTHESIS_PROFILE=long`` multiplies every test's example budget by ``LONG_FACTOR`` and lets
hypothesis explore freely; the default (``ci``) is derandomised (the same inputs every run, so a
CI failure reproduces) and sized for ~1 minute of the whole campaign on one core.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

from data.schema import TraceFileError, TraceFileNotFoundError, TraceValidationError

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
LONG_FACTOR = 20

TOOLKIT_ERRORS: tuple[type[Exception], ...] = (
    TraceValidationError,
    TraceFileError,
    TraceFileNotFoundError,
)
"""The documented error classes of the data layer; anything else escaping is a bug."""

COUNTS: Counter[str] = Counter()


def campaign(max_examples: int) -> settings:
    """Hypothesis settings for one campaign test with a default budget of ``max_examples``."""
    long = PROFILE == "long"
    return settings(
        max_examples=max_examples * (LONG_FACTOR if long else 1),
        deadline=None,  # file I/O and pandas make per-example time noisy on a shared CPU
        derandomize=not long,
        database=None,  # no .hypothesis/ directory written by CI runs
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
        print_blob=True,  # a failure prints the @reproduce_failure blob
    )


def record(target: str, outcome: str) -> None:
    COUNTS[f"{target}/{outcome}"] += 1


def outcome_of(exc: BaseException | None) -> str:
    return "loaded" if exc is None else type(exc).__name__


def assert_toolkit_error(exc: BaseException, where: str | None = None) -> None:
    """``exc`` is one of the documented classes and its message names ``where``."""
    assert type(exc) in TOOLKIT_ERRORS, (
        f"raw {type(exc).__module__}.{type(exc).__name__} leaked: {exc!r}"
    )
    msg = str(exc)
    if where is not None:
        assert where in msg, f"error does not name {where!r}: {msg}"
    if exc.column is not None:  # type: ignore[attr-defined]
        assert f"column {exc.column!r}" in msg, msg  # type: ignore[attr-defined]
    rows = exc.rows  # type: ignore[attr-defined]
    if rows and not isinstance(exc, TraceFileError):
        assert f"row(s) {rows[0]}" in msg, msg
