"""Shared pieces of the docs/BENCHMARKS.md sections: missing numbers, met/missed, failed sections."""

from __future__ import annotations

import math

NA = float("nan")


def fmt(v: float, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}"


def status(v: bool | None) -> str:
    return "n/a" if v is None else ("**met**" if v else "**missed**")


def section_error(sec: dict | None, name: str) -> str | None:
    """What a section says instead of its tables when it was not run or failed."""
    if sec is None:
        return f"_Not run yet: `python -m benchmarks.run --only {name}`._"
    if "error" in sec:
        return f"**This section failed:**\n\n```\n{sec['error'][-1500:]}\n```"
    return None
