"""Differential campaign over ``data.schema.validate_trace`` with hypothesis-built DataFrames.

Cells are drawn from every Python/pandas kind a DataFrame can hold (str, int, float, NaN, None,
``pd.NA``, bool, bytes, lists, dicts, timestamps, numeric strings), whole columns are sometimes
cast to typed dtypes (int8, float32, nullable Int64, string, category, bool), the index is
scrambled, and columns are dropped, duplicated or added. An independent per-cell reference
(written here, not copied from the validator) says which cells break the schema; the
validator must agree:

* the reference finds nothing: ``validate_trace`` returns every row, in order, with canonical
  dtypes and the same values, and validating the result again changes nothing;
* otherwise: ``TraceValidationError`` (exactly that class) whose column is a broken column and
  whose rows are all broken cells of that column.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data.schema import TIERS, TraceValidationError, validate_trace
from tests.campaign import assert_toolkit_error, campaign, outcome_of, record

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

LABELS = ("request_id", "tenant", "tier", "category", "source", "model")
TOKENS = ("prompt_tokens", "output_tokens", "max_tokens")
MAX = 2**40

NUMERIC_STRINGS = ("12", " 12 ", "1e3", "12.0", "2.5", "-3", "0", "nan", "inf", "1_000", "\u0663")
OTHER_STRINGS = ("abc", "", "1,000", "12 tokens", "\x00", "\u202e5", "\U0001f600", "premium")

cells = st.one_of(
    st.integers(-5, 20),
    st.integers(2**39, 2**41),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([1.0, 2.0, 0.5, -1.0, math.nan, math.inf]),
    st.sampled_from(list(NUMERIC_STRINGS) + list(OTHER_STRINGS)),
    st.text(max_size=6),
    st.sampled_from(TIERS),
    st.sampled_from([None, pd.NA, np.nan, True, False, np.int64(7), np.float32(3.0)]),
    st.sampled_from([b"x", [1, 2], (3,), [], {"a": 1}, [0], [1.5], ["x"], [math.inf]]),
    st.sampled_from([pd.Timestamp("2024-01-01"), pd.Timedelta(seconds=1), complex(3, 1)]),
)
DTYPES = ("int64", "int8", "float32", "float64", "Int64", "string", "category", "bool",
          "complex128")  # fmt: skip


def _num(v: object) -> float | None:
    """The number a cell means, NaN for a missing cell, None for a non-number."""
    if v is None or v is pd.NA:
        return math.nan
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, int | np.integer):
        return float(v)
    if isinstance(v, float | np.floating):
        return float(v)
    if isinstance(v, str):
        # text is a number if pandas reads it as one ("12", " 12 ", "1e3"); "nan" is not
        x = pd.to_numeric(pd.Series([v], dtype=object), errors="coerce").iloc[0]
        return None if pd.isna(x) else float(x)
    return None


def _is_missing(v: object) -> bool:
    # NaN of any kind (pandas counts a complex NaN as missing too)
    return v is None or v is pd.NA or (isinstance(v, float | np.floating | complex) and v != v)


def bad_label(v: object) -> bool:
    if _is_missing(v) or isinstance(v, bool | np.bool_):
        return True
    if isinstance(v, str):
        return v == ""
    return not isinstance(v, int | np.integer | float | np.floating)


def bad_token(v: object) -> bool:
    x = _num(v)
    return x is None or not math.isfinite(x) or x != round(x) or x <= 0 or x > MAX


def bad_arrival(v: object, required: bool) -> bool:
    x = _num(v)
    if x is None:
        return True
    if math.isnan(x):
        return required
    return not math.isfinite(x) or x < 0


def bad_prompt(v: object) -> bool:
    return not (_is_missing(v) or isinstance(v, str))


def bad_samples(v: object) -> bool:
    if _is_missing(v):
        return False
    if not isinstance(v, list | tuple | np.ndarray) or len(v) == 0:
        return True
    numbers = all(
        isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)
        for x in v
    )
    return not numbers or any(bad_token(x) for x in v)


def _label_str(v: object) -> str:
    if isinstance(v, float | np.floating):
        return str(float(v))
    return str(v)


def reference(df: pd.DataFrame, require_arrivals: bool) -> tuple[str | None, dict[str, set]]:
    """(first structural problem, {column: rows that break the schema})."""
    if df.columns.duplicated().any():
        return "duplicate", {}
    required = [*LABELS[:6], "prompt_tokens", "output_tokens"]
    if require_arrivals:
        required.append("arrival_s")
    missing = [c for c in required if c not in df.columns]
    if missing:
        return "missing", {missing[0]: set()}
    bad: dict[str, set] = {}

    def rows(col: str, pred) -> None:
        vals = df[col].tolist()
        b = {i for i, v in enumerate(vals) if pred(v)}
        if b:
            bad[col] = b

    for col in LABELS:
        if pd.api.types.is_bool_dtype(df[col].dtype) or pd.api.types.is_complex_dtype(
            df[col].dtype
        ):
            bad[col] = set(range(len(df)))
        else:
            rows(col, bad_label)
    if "request_id" not in bad:
        ids = [_label_str(v) for v in df["request_id"].tolist()]
        dup = {i for i, s in enumerate(ids) if ids.count(s) > 1}
        if dup:
            bad["request_id"] = dup
    if "tier" not in bad:
        rows("tier", lambda v: _label_str(v) not in TIERS)
    if "prompt_id" in df.columns:
        dt = df["prompt_id"].dtype
        if pd.api.types.is_bool_dtype(dt) or pd.api.types.is_complex_dtype(dt):
            bad["prompt_id"] = set(range(len(df)))
        else:
            rows("prompt_id", bad_label)
    for col in TOKENS:
        if col in df.columns:
            rows(col, bad_token)
    if "prompt" in df.columns:
        rows("prompt", bad_prompt)
    if "output_samples" in df.columns:
        rows("output_samples", bad_samples)
    if "arrival_s" in df.columns:
        rows("arrival_s", lambda v: bad_arrival(v, require_arrivals))
        if require_arrivals and "arrival_s" not in bad:
            a = [_num(v) for v in df["arrival_s"].tolist()]
            uns = {i for i in range(1, len(a)) if a[i] < a[i - 1]}
            if uns:
                bad["arrival_s"] = uns
    return None, bad


@st.composite
def good_column(draw, col: str, n: int) -> list:
    if col == "request_id":
        return [f"r{i}" for i in range(n)]
    if col == "tier":
        return [draw(st.sampled_from(TIERS)) for _ in range(n)]
    if col in LABELS or col == "prompt_id":
        return [draw(st.text(min_size=1, max_size=5)) for _ in range(n)]
    if col in TOKENS:
        return [draw(st.integers(1, 5000)) for _ in range(n)]
    if col == "arrival_s":
        return sorted(draw(st.floats(0, 1e6)) for _ in range(n))
    if col == "prompt":
        return [draw(st.one_of(st.none(), st.text(max_size=8))) for _ in range(n)]
    if col == "output_samples":
        return [draw(st.lists(st.integers(1, 100), min_size=1, max_size=3)) for _ in range(n)]
    return [draw(cells) for _ in range(n)]


@st.composite
def frames(draw) -> tuple[pd.DataFrame, bool]:
    n = draw(st.integers(1, 6))
    cols = [*LABELS, "prompt_tokens", "output_tokens"]
    for opt in ("max_tokens", "arrival_s", "prompt", "output_samples", "prompt_id", "extra"):
        if draw(st.booleans()):
            cols.append(opt)
    data: dict[str, pd.Series] = {}
    for col in cols:
        vals = draw(good_column(col, n))
        for _ in range(draw(st.integers(1, 2)) if draw(st.integers(0, 9)) == 0 else 0):
            vals[draw(st.integers(0, n - 1))] = draw(cells)
        s = pd.Series(vals, dtype=object)
        if draw(st.integers(0, 5)) == 0:
            dtype = draw(st.sampled_from(DTYPES))
            # not representable in that dtype: keep the objects
            with (
                contextlib.suppress(TypeError, ValueError, OverflowError),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore", RuntimeWarning)  # int8 overflow: the point
                s = s.astype(dtype)
        data[col] = s
    df = pd.DataFrame(data)
    df.index = draw(
        st.sampled_from(
            [
                pd.RangeIndex(n),
                pd.Index([7] * n),
                pd.Index([f"i{k}" for k in range(n)][::-1]),
                pd.RangeIndex(100, 100 + 2 * n, 2),
            ]
        )
    )
    shape = draw(st.integers(0, 9))
    if shape == 0:
        df = df.drop(columns=[draw(st.sampled_from(list(df.columns)))])
    elif shape == 1:
        c = draw(st.sampled_from(list(df.columns)))
        df = pd.concat([df, df[[c]]], axis=1)
    elif shape == 2:
        df[draw(st.sampled_from([0, 1.5, ("a", "b"), "Output_Tokens", ""]))] = 1
    return df, draw(st.booleans())


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@campaign(800)
@given(case=frames())
def test_validate_trace_agrees_with_reference(case):
    df, require_arrivals = case
    before = df.copy()
    problem, bad = reference(df, require_arrivals)
    try:
        out = validate_trace(df, "frame.parquet", require_arrivals=require_arrivals)
        exc = None
    except Exception as e:  # the oracle decides which exceptions are allowed
        exc = e
    record("validate_trace", outcome_of(exc))
    pd.testing.assert_frame_equal(df, before)  # the input is never modified
    if problem is None and not bad:
        if exc is not None:
            raise AssertionError(f"valid frame rejected: {exc!r}") from exc
        check_output(df, out, require_arrivals)
        return
    assert exc is not None, f"accepted a frame the reference rejects: {problem} {bad}"
    assert type(exc) is TraceValidationError, f"raw {type(exc).__name__}: {exc!r}"
    assert_toolkit_error(exc, "frame.parquet")
    if problem == "duplicate":
        assert "more than once" in str(exc)
        return
    assert exc.column in bad, f"blamed {exc.column!r}; broken: {bad}; {exc}"
    if problem == "missing":
        assert "missing required column" in str(exc)
        return
    assert exc.rows and set(exc.rows) <= bad[exc.column], (str(exc), bad)


def check_output(df: pd.DataFrame, out: pd.DataFrame, require_arrivals: bool) -> None:
    assert len(out) == len(df)
    assert isinstance(out.index, pd.RangeIndex) and out.index.start == 0
    for col in LABELS:
        assert out[col].dtype == "string"
        assert out[col].tolist() == [_label_str(v) for v in df[col].tolist()]
    for col in TOKENS:
        if col in df.columns:
            assert out[col].dtype == np.int64
            assert out[col].tolist() == [int(_num(v)) for v in df[col].tolist()]
    if "arrival_s" in df.columns:
        want = np.array([_num(v) for v in df["arrival_s"].tolist()], dtype=np.float64)
        np.testing.assert_array_equal(out["arrival_s"].to_numpy(), want)
        if require_arrivals:
            assert (np.diff(want) >= 0).all()
    assert [c for c in df.columns if c not in out.columns] == []
    again = validate_trace(out, "again", require_arrivals=require_arrivals)
    pd.testing.assert_frame_equal(again, out)


@pytest.mark.parametrize("obj", [None, [], {"request_id": ["r0"]}, np.zeros((2, 2)), "x.csv"])
def test_non_frames_are_a_type_error(obj):
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        validate_trace(obj, "thing")  # type: ignore[arg-type]
    record("validate_trace[non-frame]", "TypeError")


def test_empty_frame_is_valid_and_empty():
    df = pd.DataFrame({c: pd.Series([], dtype=object) for c in (*LABELS, *TOKENS[:2])})
    out = validate_trace(df, "empty")
    assert len(out) == 0 and out["output_tokens"].dtype == np.int64
    record("validate_trace[empty]", "loaded")
