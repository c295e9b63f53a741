"""The trace schema: the one table every loader, workload, predictor and engine speaks.

A *trace* is one row per request. Length corpora (CASTILLO, AlpacaEval, ShareGPT) have no
arrival times; a *workload* is a trace whose ``arrival_s`` is set and sorted. Validation never
drops or repairs a row: it raises :class:`TraceValidationError` naming the file, the rows and
the column, and what was expected. Filtering is explicit (:func:`filter_rows`) and reports counts.

Units: times in seconds (float64), lengths in tokens (int64). Token counts come from the
source's own tokenizer where it publishes counts, otherwise from tiktoken ``cl100k_base``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1

TIERS: tuple[str, ...] = ("premium", "standard", "batch")
"""Service tiers, highest priority first. The paper's tier base scores are 1, 2, 3."""

# Per-tier SLOs (seconds) used by the default workload. Premium is interactive chat (a user
# waits for the first token), standard is tool/code traffic that tolerates a few seconds,
# batch is offline work judged only on completion within minutes.
TIER_SLOS: dict[str, tuple[float, float]] = {
    "premium": (1.0, 60.0),  # (TTFT s, end-to-end s)
    "standard": (5.0, 120.0),
    "batch": (60.0, 900.0),
}

RUNTIME_CLASSES: tuple[str, ...] = ("short", "medium", "long")
RUNTIME_CLASS_BOUNDS: tuple[int, int] = (128, 512)
"""The paper's runtime classes on prompt + output tokens: short <= 128 < medium <= 512 < long."""


def runtime_class(total_tokens: float) -> str:
    """The paper's runtime class of a request of ``total_tokens`` (prompt + output): one of
    :data:`RUNTIME_CLASSES`. Scalar form of :func:`runtime_classes` (policies call it per
    request; NaN is ``long`` in both)."""
    short, medium = RUNTIME_CLASS_BOUNDS
    if total_tokens <= short:
        return "short"
    if total_tokens <= medium:
        return "medium"
    return "long"


def runtime_classes(total_tokens: Sequence[float]) -> np.ndarray:
    """The runtime class per request as an index into :data:`RUNTIME_CLASSES` (int64, (n,)):
    0 short (<= 128), 1 medium (<= 512), 2 long; the vectorised :func:`runtime_class`."""
    t = np.asarray(total_tokens, dtype=np.float64)
    short, medium = RUNTIME_CLASS_BOUNDS
    return np.where(t <= short, 0, np.where(t <= medium, 1, 2)).astype(np.int64)


UNKNOWN = "unknown"
"""The explicit value for a categorical field the source does not provide."""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype after coercion: "string", "int64", "float64" or "object"
    unit: str  # "tokens", "s" or "" for labels and text
    required: bool  # required in every trace (arrival_s: required in workloads only)
    doc: str


COLUMNS: tuple[Column, ...] = (
    Column("request_id", "string", "", True, "unique id of the request within the table"),
    Column(
        "prompt_id",
        "string",
        "",
        False,
        "id of the prompt text; rows sharing it are samples of one prompt (grouped splits)",
    ),
    Column("tenant", "string", "", True, "tenant (customer, application) that sent the request"),
    Column("tier", "string", "", True, "service tier: one of premium | standard | batch"),
    Column(
        "category",
        "string",
        "",
        True,
        "task category (e.g. short_qa, summary, code, chat); 'unknown' if the source has none",
    ),
    Column("source", "string", "", True, "dataset the row comes from (e.g. castillo, azure_conv)"),
    Column("model", "string", "", True, "the LLM that produced the output; 'unknown' if not known"),
    Column(
        "arrival_s",
        "float64",
        "s",
        False,
        "arrival time since the start of the workload; required and sorted in workloads",
    ),
    Column("prompt", "string", "", False, "prompt text, when the source publishes it"),
    Column("prompt_tokens", "int64", "tokens", True, "prompt length, > 0"),
    Column("output_tokens", "int64", "tokens", True, "true output length, > 0"),
    Column(
        "output_samples",
        "object",
        "tokens",
        False,
        "several sampled output lengths for the same prompt and model (tuple of int > 0)",
    ),
    Column("max_tokens", "int64", "tokens", False, "generation cap sent with the request, > 0"),
    Column(
        "output_text",
        "string",
        "",
        False,
        "the output text, when the source publishes it (replay and drift training read its "
        "first t tokens; never an admission feature)",
    ),
)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
REQUIRED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)
ORDER: tuple[str, ...] = tuple(c.name for c in COLUMNS)


class TraceValidationError(ValueError):
    """A trace violates the schema. The message names file, rows, column and the expectation."""

    def __init__(self, where: str, column: str | None, rows: Sequence[int] | None, expected: str):
        self.where = where
        self.column = column
        self.rows = list(rows) if rows is not None else []
        self.expected = expected
        parts = [where]
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" (+{len(self.rows) - 10} more)" if len(self.rows) > 10 else ""
            parts.append(f"row(s) {shown}{more}")
        if column is not None:
            parts.append(f"column {column!r}")
        super().__init__(": ".join(parts) + f": {expected}")


class TraceFileError(TraceValidationError):
    """A trace *file* cannot be read as a table: unsupported type, empty, bad gzip stream, not
    UTF-8, malformed CSV/JSON Lines/parquet, a header with duplicate names, a row with the wrong
    number of fields. Raised by ``data.loaders.load_trace_file``; a subclass of
    :class:`TraceValidationError` (so of ``ValueError``): one ``except`` catches every bad trace.

    ``line`` is the 1-based line of the file where the problem is (CSV/JSONL), ``rows`` the
    0-based data row (the header and blank lines not counted), when known.
    """

    def __init__(
        self,
        where: str,
        expected: str,
        *,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
    ):
        self.where = where
        self.column = column
        self.rows = [row] if row is not None else []
        self.expected = expected
        self.line = line
        parts = [where]
        if line is not None:
            parts.append(f"line {line}" + (f" (data row {row})" if row is not None else ""))
        elif row is not None:
            parts.append(f"row(s) {row}")
        if column is not None:
            parts.append(f"column {column!r}")
        ValueError.__init__(self, ": ".join(parts) + f": {expected}")


class TraceFileNotFoundError(TraceFileError, FileNotFoundError):
    """The trace file does not exist (also a ``FileNotFoundError``)."""


def _bad_rows(mask: np.ndarray, index: pd.Index) -> list[int]:
    # Rows are reported as 0-based data row numbers of the table as loaded (not the header).
    pos = np.flatnonzero(mask)
    return [int(p) for p in pos]


_MAX_TOKENS = 2**40  # a token count above this is a unit or parsing error, not a length


def _reject_non_numbers(raw: pd.Series, name: str, where: str, what: str) -> None:
    """Booleans and timestamps convert to numbers silently (True -> 1, a date -> ns since
    1970); in a length or time column they are always a mistake, so name them instead."""
    dt = raw.dtype
    if pd.api.types.is_bool_dtype(dt):
        raise TraceValidationError(
            where, name, list(range(len(raw))), f"expected {what}, got booleans (column dtype {dt})"
        )
    if pd.api.types.is_complex_dtype(dt):  # numpy would drop the imaginary part silently
        raise TraceValidationError(
            where, name, list(range(len(raw))), f"expected {what}, got complex numbers"
        )
    if pd.api.types.is_datetime64_any_dtype(dt) or pd.api.types.is_timedelta64_dtype(dt):
        raise TraceValidationError(
            where,
            name,
            list(range(len(raw))),
            f"expected {what} as a plain number, got {dt} values; "
            "convert them (e.g. seconds since the first request)",
        )
    if pd.api.types.is_object_dtype(dt):
        bad = raw.map(
            lambda v: (
                isinstance(v, bool | np.bool_ | complex | pd.Timestamp | pd.Timedelta)
                or hasattr(v, "isoformat")
            )
        ).to_numpy(dtype=bool)
        if bad.any():
            first = raw[bad].iloc[0]
            raise TraceValidationError(
                where,
                name,
                _bad_rows(bad, raw.index),
                f"expected {what}, got {type(first).__name__} values such as {first!r}",
            )


def _to_numeric(raw: pd.Series) -> pd.Series:
    # pd.to_numeric(errors="coerce") still raises TypeError on some objects (dicts, sets):
    # fall back to one value at a time so every non-number becomes NaN and is reported.
    try:
        return pd.to_numeric(raw, errors="coerce")
    except (TypeError, ValueError):

        def one(v: object) -> float:
            try:
                return float(pd.to_numeric(v, errors="coerce"))
            except (TypeError, ValueError):
                return np.nan

        return raw.map(one).astype(np.float64)


def _coerce_int(df: pd.DataFrame, name: str, where: str, positive: bool) -> pd.Series:
    raw = df[name]
    _reject_non_numbers(raw, name, where, "a number of tokens")
    num = _to_numeric(raw)
    nonnum = num.isna().to_numpy() & raw.notna().to_numpy()
    if nonnum.any():
        raise TraceValidationError(
            where,
            name,
            _bad_rows(nonnum, df.index),
            f"expected a number of tokens, got non-numeric values such as {raw[nonnum].iloc[0]!r}",
        )
    missing = num.isna().to_numpy()
    if missing.any():
        raise TraceValidationError(
            where, name, _bad_rows(missing, df.index), "expected a value, got an empty cell or NaN"
        )
    vals = num.to_numpy(dtype=np.float64)
    nonfinite = ~np.isfinite(vals)
    if nonfinite.any():
        raise TraceValidationError(
            where,
            name,
            _bad_rows(nonfinite, df.index),
            "expected a finite number of tokens, got inf",
        )
    frac = vals != np.round(vals)
    if frac.any():
        raise TraceValidationError(
            where, name, _bad_rows(frac, df.index), "expected a whole number of tokens"
        )
    if positive:
        bad = vals <= 0
        if bad.any():
            raise TraceValidationError(
                where,
                name,
                _bad_rows(bad, df.index),
                "expected a length > 0 tokens, got zero or negative",
            )
    if (np.abs(vals) > _MAX_TOKENS).any():
        raise TraceValidationError(
            where,
            name,
            _bad_rows(np.abs(vals) > _MAX_TOKENS, df.index),
            "expected a plausible token count (< 2^40)",
        )
    return pd.Series(vals.astype(np.int64), index=df.index, name=name)


def _label_text(v: object) -> object:
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, np.integer):
        return str(int(v))
    return v


def _coerce_label(df: pd.DataFrame, name: str, where: str) -> pd.Series:
    col = df[name]
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_complex_dtype(col.dtype):
        raise TraceValidationError(
            where, name, list(range(len(col))), f"expected a text label, got {col.dtype} values"
        )
    # all-text object columns (the common case) skip the per-value checks below
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if pd.api.types.is_object_dtype(col.dtype) and kind not in ("string", "empty"):
        # a list, dict or bytes value would be stringified into a label nobody wrote
        bad = col.map(
            lambda v: (
                not (v is None or isinstance(v, str | int | float | np.integer | np.floating))
                or isinstance(v, bool | np.bool_)
            )
        ).to_numpy(dtype=bool)
        if bad.any():
            first = col[bad].iloc[0]
            raise TraceValidationError(
                where,
                name,
                _bad_rows(bad, df.index),
                f"expected a text label, got {type(first).__name__} values such as {first!r}",
            )
    missing = col.isna().to_numpy()
    if missing.any():
        raise TraceValidationError(
            where,
            name,
            _bad_rows(missing, df.index),
            "expected a non-empty label, got an empty cell or NaN",
        )
    if pd.api.types.is_float_dtype(col.dtype) or kind not in ("string", "empty", "integer"):
        # astype("string") prints floats with 7 significant digits: ids 549755813888.0 and
        # 549755813889.0 would both become "5.497558e+11" (two tenants merged silently)
        col = col.map(_label_text)
    out = col.astype("string")
    empty = (out.str.len() == 0).to_numpy()
    if empty.any():
        raise TraceValidationError(
            where,
            name,
            _bad_rows(empty, df.index),
            "expected a non-empty label, got an empty string",
        )
    return out


def _coerce_samples(df: pd.DataFrame, where: str) -> pd.Series:
    out = []
    for pos, v in enumerate(df["output_samples"].tolist()):
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
            continue
        # a flat list of numbers: not a scalar, a string, nested lists or booleans, which
        # numpy would silently turn into samples
        flat = isinstance(v, list | tuple | np.ndarray) and all(
            isinstance(x, int | float | np.integer | np.floating)
            and not isinstance(x, bool | np.bool_)
            for x in v
        )
        if not flat:
            raise TraceValidationError(
                where, "output_samples", [pos], f"expected a list of token counts, got {v!r}"
            )
        arr = np.asarray(v, dtype=np.float64).reshape(-1)
        if (
            arr.size == 0
            or not np.isfinite(arr).all()
            or (arr <= 0).any()
            or (arr != np.round(arr)).any()
            or (arr > _MAX_TOKENS).any()
        ):
            raise TraceValidationError(
                where,
                "output_samples",
                [pos],
                "expected a non-empty list of whole token counts > 0",
            )
        out.append(tuple(int(x) for x in arr))
    return pd.Series(out, index=df.index, name="output_samples", dtype=object)


def validate_trace(
    df: pd.DataFrame, where: str = "<table>", *, require_arrivals: bool = False
) -> pd.DataFrame:
    """Check ``df`` against the schema and return a copy with canonical dtypes and column order.

    ``where`` names the file (or table) in error messages. Extra columns are kept after the
    schema's columns (a loader may carry source-specific fields). With ``require_arrivals``
    the table must be a workload: ``arrival_s`` present, finite, >= 0 and sorted.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    _check_columns(df, where, require_arrivals)
    df = _decategorize(df.reset_index(drop=True))
    out = pd.DataFrame(index=df.index)
    _coerce_labels(df, out, where)
    if "prompt_id" in df.columns:
        out["prompt_id"] = _coerce_label(df, "prompt_id", where)
    for name in ("prompt_tokens", "output_tokens"):
        out[name] = _coerce_int(df, name, where, positive=True)
    if "max_tokens" in df.columns:
        out["max_tokens"] = _coerce_int(df, "max_tokens", where, positive=True)
    for name in ("prompt", "output_text"):
        if name in df.columns:
            out[name] = _coerce_text(df, name, where)
    if "output_samples" in df.columns:
        out["output_samples"] = _coerce_samples(df, where)
    if "arrival_s" in df.columns:
        out["arrival_s"] = _coerce_arrivals(df, where, require_arrivals)
    extras = [c for c in df.columns if c not in COLUMN_BY_NAME]
    for c in extras:
        out[c] = df[c]
    ordered = [c for c in ORDER if c in out.columns] + extras
    return out[ordered]


def _check_columns(df: pd.DataFrame, where: str, require_arrivals: bool) -> None:
    """Column names unique; every required column present."""
    dup_cols = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
    if dup_cols:
        # df[name] would be a table, not a column: which of the two is meant is ambiguous
        raise TraceValidationError(
            where,
            dup_cols[0],
            None,
            f"column name(s) {dup_cols} appear more than once; expected unique column names",
        )
    required = list(REQUIRED) + (["arrival_s"] if require_arrivals else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TraceValidationError(
            where,
            missing[0],
            None,
            f"missing required column(s) {missing}; the schema requires "
            f"{required} (see data/schema.py)",
        )


def _decategorize(df: pd.DataFrame) -> pd.DataFrame:
    """Schema columns stored as categoricals, as object columns of their values."""
    cats = [
        c
        for c in df.columns
        if c in COLUMN_BY_NAME and isinstance(df[c].dtype, pd.CategoricalDtype)
    ]
    if cats:
        # a categorical hides its values' types (bytes, bools) behind the category dtype:
        # check the values themselves
        df = df.astype({c: object for c in cats})
    return df


def _coerce_labels(df: pd.DataFrame, out: pd.DataFrame, where: str) -> None:
    """The required label columns into ``out``; request ids unique, tiers known."""
    for name in ("request_id", "tenant", "tier", "category", "source", "model"):
        out[name] = _coerce_label(df, name, where)
    dup = out["request_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise TraceValidationError(
            where,
            "request_id",
            _bad_rows(dup, df.index),
            "expected unique request ids, got duplicates",
        )
    bad_tier = ~out["tier"].isin(TIERS).to_numpy()
    if bad_tier.any():
        first = out["tier"][bad_tier].iloc[0]
        raise TraceValidationError(
            where,
            "tier",
            _bad_rows(bad_tier, df.index),
            f"unknown tier {first!r}; expected one of {list(TIERS)}",
        )


def _coerce_text(df: pd.DataFrame, name: str, where: str) -> pd.Series:
    """An optional text column (``prompt``, ``output_text``): text or empty cells only."""
    col = df[name]
    nonstr = ~(col.isna().to_numpy() | col.map(lambda x: isinstance(x, str)).to_numpy())
    if nonstr.any():
        raise TraceValidationError(
            where, name, _bad_rows(nonstr, df.index), "expected text or an empty cell"
        )
    return col.astype("string")


def _coerce_arrivals(df: pd.DataFrame, where: str, require_arrivals: bool) -> np.ndarray:
    """``arrival_s`` as float64 seconds, shape (n,): finite and >= 0 (NaN allowed unless
    ``require_arrivals``, which also requires them sorted)."""
    raw = df["arrival_s"]
    _reject_non_numbers(raw, "arrival_s", where, "an arrival time in seconds")
    a = _to_numeric(raw).to_numpy(dtype=np.float64)
    # a trace without arrivals may leave cells empty (NaN); a value that is present must
    # be a time, never silently turned into NaN
    nonnum = np.isnan(a) & raw.notna().to_numpy()
    if nonnum.any():
        raise TraceValidationError(
            where,
            "arrival_s",
            _bad_rows(nonnum, df.index),
            "expected an arrival time in seconds, got non-numeric "
            f"values such as {raw[nonnum].iloc[0]!r}",
        )
    bad = ~np.isfinite(a) | (a < 0)
    if not require_arrivals:
        bad &= ~np.isnan(a)
    if bad.any():
        raise TraceValidationError(
            where,
            "arrival_s",
            _bad_rows(bad, df.index),
            "expected a finite arrival time >= 0 seconds",
        )
    if require_arrivals:
        unsorted = np.zeros(len(a), dtype=bool)
        unsorted[1:] = a[1:] < a[:-1]
        if unsorted.any():
            raise TraceValidationError(
                where,
                "arrival_s",
                _bad_rows(unsorted, df.index),
                "expected arrival times sorted ascending (a row arrives before the row above it)",
            )
    return a


@dataclass(frozen=True)
class FilterReport:
    """What an explicit filter removed: nothing is dropped without one of these."""

    reason: str
    rows_in: int
    rows_out: int

    @property
    def removed(self) -> int:
        return self.rows_in - self.rows_out

    def __str__(self) -> str:
        return (
            f"{self.reason}: kept {self.rows_out:,} of {self.rows_in:,} rows "
            f"(removed {self.removed:,})"
        )


def filter_rows(
    df: pd.DataFrame, mask: np.ndarray | pd.Series, reason: str
) -> tuple[pd.DataFrame, FilterReport]:
    """Keep rows where ``mask`` is true and report how many were removed and why."""
    m = np.asarray(mask, dtype=bool)
    if m.shape != (len(df),):
        raise ValueError(f"filter {reason!r}: mask has shape {m.shape}, expected ({len(df)},)")
    kept = df.loc[m].reset_index(drop=True)
    return kept, FilterReport(reason, len(df), len(kept))


def describe_schema() -> str:
    """The schema as a Markdown table (used by the README and ``python -m report.inspect``)."""
    lines = ["| column | dtype | unit | required | meaning |", "|---|---|---|---|---|"]
    for c in COLUMNS:
        req = "yes" if c.required else ("workloads" if c.name == "arrival_s" else "no")
        doc = c.doc.replace("|", "\\|")  # a literal | would split the Markdown cell
        lines.append(f"| `{c.name}` | {c.dtype} | {c.unit or '-'} | {req} | {doc} |")
    return "\n".join(lines)
