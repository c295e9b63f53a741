"""report.tables: the cells and blocks every generated document is written with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from report.tables import (
    capture,
    figure_link,
    finite_mean,
    fixed,
    fmt_ci,
    get,
    load_table,
    md_table,
    num,
    record_table,
    relative_change,
    section_header,
    signed_pct,
)


def test_record_table_formats_each_kind_of_cell() -> None:
    t = record_table([{"a": 1234567, "b": 0.000123, "c": True, "d": float("nan"), "e": 123.4}])
    assert t.splitlines()[:2] == ["| a | b | c | d | e |", "|---|---|---|---|---|"]
    assert t.splitlines()[2] == "| 1,234,567 | 0.000123 | yes | n/a | 123 |"
    assert record_table([{"a": False}], cols=["a", "b"]).splitlines()[2] == "| **no** |  |"
    assert record_table([]) == "(no rows)"


def test_md_table_default_and_right_aligned() -> None:
    assert md_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    assert md_table(["m", "v"], [["e2e", "1.5"]], align="lr").splitlines()[1] == "|---|---:|"


def test_fmt_ci_cells() -> None:
    assert fmt_ci([]) == "n/a"
    assert fmt_ci([0.5]) == "0.5"  # one value: no interval
    assert fmt_ci([0.25, float("nan")], pct=True) == "25.0%"  # NaN dropped
    cell = fmt_ci([1.0, 2.0, 3.0])
    assert cell.startswith("2 [") and cell.endswith("]")
    assert fmt_ci([250.0, 250.0]) == "250 [250, 250]"  # whole numbers from 100 up
    assert num(0.123456, 2) == "0.12" and num(math.inf) == "n/a"


def test_capture_ratio_and_number_cells() -> None:
    assert capture(10.0, 4.0, 2.0) == pytest.approx(0.75)
    assert math.isnan(capture(3.0, 3.0, 3.0))  # no headroom
    assert math.isnan(capture(3.0, 2.0, 3.0 - 1e-12, tol=1e-9))
    assert relative_change(9.0, 10.0) == pytest.approx(-0.1)
    assert math.isnan(relative_change(1.0, 0.0))
    assert signed_pct(0.0153) == "+1.5%" and signed_pct(math.nan) == "n/a"
    assert fixed(0.456, ".2f") == "0.46" and fixed(math.nan, ".2f") == "n/a"
    assert finite_mean([1.0, math.nan, 3.0]) == 2.0 and math.isnan(finite_mean([]))


def test_sections_links_and_lookups() -> None:
    assert section_header("bursty") == ["### bursty", ""]
    lines = load_table(1.1, 3, ["policy"], [["`fifo`"]])
    assert lines[0] == "Utilisation 1.1 (3 seeds):" and lines[-1] == ""
    doc = Path("/x/docs")
    assert figure_link("f", doc / "figures" / "a.png", doc) == "![f](figures/a.png)"
    s = {"latency": {"e2e_s": {"mean": 2.0, "p99": None}}}
    assert get(s, "latency", "e2e_s", "mean") == 2.0
    assert math.isnan(get(s, "latency", "e2e_s", "p99"))
    assert math.isnan(get(s, "slo", "attainment"))
