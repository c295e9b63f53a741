"""``load_trace_file``: user trace files (CSV, JSONL, parquet; optionally gzip) -> schema table.

Errors always name the file, and where the problem is in the file: the line for malformed
CSV/JSONL, the data row (0-based, header and blank lines not counted) and column for values that
break the schema. File-level problems raise ``TraceFileError``, values ``TraceValidationError``
(its base class); no pandas, csv, json, gzip or pyarrow exception escapes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from data.loaders._common import DEFAULT_CATEGORY, DEFAULT_MODEL, DEFAULT_TENANT, DEFAULT_TIER
from data.schema import (
    TraceFileError,
    TraceFileNotFoundError,
    TraceValidationError,
    validate_trace,
)

FORMATS = (".csv", ".jsonl", ".json", ".parquet")

# Columns whose CSV cells are kept as the exact text in the file. Left to pandas' type guessing
# an id "007" became the integer 7 and a tenant called "NA" or a prompt "null" became missing.
TEXT_COLUMNS = (
    "request_id",
    "prompt_id",
    "tenant",
    "tier",
    "category",
    "source",
    "model",
    "prompt",
)
# Cells that mean "no value" in a CSV (pandas' defaults): only in columns that hold numbers.
NA_STRINGS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)

# What ``fill_defaults=True`` puts in columns the file lacks. ``request_id`` defaults to
# "<file stem>:<row>", ``source`` to the file stem, ``prompt_tokens`` to the cl100k count of
# ``prompt`` (so a file with only ``prompt`` and ``output_tokens`` is enough for scoring).
FILL_DEFAULTS: dict[str, str] = {
    "tenant": DEFAULT_TENANT,
    "tier": DEFAULT_TIER,
    "category": DEFAULT_CATEGORY,
    "model": DEFAULT_MODEL,
}


def _format(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    ext = suffixes[-2] if gz and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
    if ext not in FORMATS:
        raise TraceFileError(
            str(path),
            f"unsupported trace file type {''.join(path.suffixes)!r}; expected one of "
            f"{list(FORMATS)} (optionally .gz)",
        )
    return ext, gz


def _read_bytes(path: Path, gz: bool) -> bytes:
    if not path.is_file():
        raise TraceFileNotFoundError(str(path), "trace file not found")
    raw = path.read_bytes()
    if not gz:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise TraceFileError(
            str(path),
            "the gzip stream is truncated (the file was cut off while copying or "
            "downloading); re-create or re-download it",
        ) from None
    except (gzip.BadGzipFile, OSError, zlib.error) as e:
        raise TraceFileError(str(path), f"not a valid gzip file ({e})") from None


def _decode(path: Path, data: bytes) -> str:
    try:
        # utf-8-sig: a byte-order mark (Excel, Notepad) is not part of the first column's name
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TraceFileError(
            str(path),
            f"not valid UTF-8 (byte {data[e.start : e.start + 1]!r} at offset {e.start}: "
            f"{e.reason}); save the file as UTF-8",
            line=line,
        ) from None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of two equal keys silently; which one the user meant is unknown
    d = dict(pairs)
    if len(d) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _DuplicateKeys(sorted({k for k in keys if keys.count(k) > 1}))
    return d


class _DuplicateKeys(Exception):
    def __init__(self, keys: list[str]):
        self.keys = keys


# one decoder for the whole file (json.loads with a hook builds a new one per line)
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _has_lone_surrogate(obj: object) -> bool:
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    rows = []
    # split on \n only: str.splitlines() also splits on U+2028, U+0085, ... which JSON allows
    # unescaped inside strings, and would cut a valid line in two
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = dict(line=lineno, row=len(rows))
        try:
            obj = _DECODER.decode(line)
        except json.JSONDecodeError as e:
            raise TraceFileError(
                str(path),
                f"malformed JSON ({e.msg} at column {e.colno}); expected one JSON object per "
                "line (JSON Lines)",
                **where,
            ) from None
        except _DuplicateKeys as e:
            raise TraceFileError(
                str(path),
                f"key(s) {e.keys} appear more than once in the object",
                **where,
                column=e.keys[0],
            ) from None
        except RecursionError:
            raise TraceFileError(str(path), "JSON nested too deeply", **where) from None
        if not isinstance(obj, dict):
            raise TraceFileError(
                str(path), f"expected a JSON object, got {type(obj).__name__}", **where
            )
        # "\ud800" escapes decode to lone surrogates, which no UTF-8 writer (parquet, wandb,
        # the tokenizer) accepts later; only lines with an escape can hold one
        if "\\u" in line and _has_lone_surrogate(obj):
            raise TraceFileError(
                str(path),
                'a string holds an unpaired UTF-16 surrogate escape (e.g. "\\ud800"), which '
                "is not text; fix the escape",
                **where,
            )
        rows.append(obj)
    return pd.DataFrame(rows)


def _read_csv(path: Path, text: str) -> pd.DataFrame:
    """Parse with the csv module, check the shape, then build typed columns.

    One parser decides both the data row numbers used in error messages and the table
    (pandas' C parser and a separate row count could disagree), and nothing is guessed: a row
    with more fields than the header is an error (pandas would have made the first column the
    index and shifted every value), as is a row with fewer fields.
    """
    # the csv module refuses fields over 128 KiB by default; a long prompt is not an error
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header is not None and _blank(header):
            header = next(reader, None)
        if header is None:
            raise TraceFileError(str(path), "the file is empty; expected a header row")
        names = [h.strip() for h in header]
        empty = [i for i, n in enumerate(names) if not n]
        if empty:
            raise TraceFileError(
                str(path),
                f"header field {empty[0] + 1} has no name; expected a name for every column",
                line=reader.line_num,
            )
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TraceFileError(
                str(path),
                f"column name(s) {dup} appear more than once in the header; expected unique names",
                line=reader.line_num,
                column=dup[0],
            )
        cells: list[list[str]] = []
        for rec in reader:
            if _blank(rec):
                continue  # blank lines are not rows (as in pandas)
            if len(rec) != len(names):
                raise TraceFileError(
                    str(path),
                    f"{len(rec)} field(s) where the header has {len(names)}; expected one "
                    "value per column (quote values that contain commas)",
                    line=reader.line_num,
                    row=len(cells),
                )
            cells.append(rec)
    except csv.Error as e:
        raise TraceFileError(
            str(path), f"malformed CSV ({e})", line=reader.line_num, row=None
        ) from None
    cols = list(zip(*cells)) if cells else [()] * len(names)
    data: dict[str, pd.Series] = {}
    for name, col in zip(names, cols):
        if name in TEXT_COLUMNS:
            # an empty cell is missing; any other text is kept exactly
            values = pd.Series(col, dtype="string")
            data[name] = values.mask(values == "")
        else:
            data[name] = _infer(pd.Series(col, dtype=object))
    return pd.DataFrame(data, columns=names)


def _blank(rec: list[str]) -> bool:
    return not rec or (len(rec) == 1 and not rec[0].strip())


def _infer(values: pd.Series) -> pd.Series:
    """Numbers where every present cell is a number, else the text (validated later)."""
    stripped = values.map(str.strip)
    missing = stripped.isin(NA_STRINGS)
    num = pd.to_numeric(stripped.where(~missing, None), errors="coerce")
    if (num.notna() | missing).all():
        return num
    return values.where(~missing, None)


def _read_parquet(path: Path, data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(io.BytesIO(data)).schema_arrow.names
    except Exception as e:  # pyarrow raises many types (ArrowInvalid, OSError, ...)
        raise TraceFileError(str(path), f"not a readable parquet file ({e})") from None
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TraceFileError(
            str(path),
            f"column name(s) {dup} appear more than once; expected unique names",
            column=dup[0],
        )
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as e:
        raise TraceFileError(str(path), f"not a readable parquet file ({e})") from None


def _read(path: Path) -> pd.DataFrame:
    ext, gz = _format(path)
    data = _read_bytes(path, gz)
    if not data.strip():
        raise TraceFileError(str(path), "the file is empty; expected a header and at least one row")
    if ext == ".parquet":
        return _read_parquet(path, data)
    text = _decode(path, data)
    if ext == ".csv":
        return _read_csv(path, text)
    return _read_jsonl(path, text)


def fill_missing_columns(df: pd.DataFrame, name: str, where: str | None = None) -> pd.DataFrame:
    """Add absent identity/optional columns with the documented defaults (``FILL_DEFAULTS``).

    Only absent columns are filled; a present column with empty cells is still an error.
    """
    df = df.copy()
    if "request_id" not in df.columns:
        df["request_id"] = [f"{name}:{i}" for i in range(len(df))]
    if "source" not in df.columns:
        df["source"] = name
    for col, val in FILL_DEFAULTS.items():
        if col not in df.columns:
            df[col] = val
    if "prompt_tokens" not in df.columns and "prompt" in df.columns:
        from data.tokens import count_tokens

        texts = df["prompt"]
        if texts.isna().any():
            bad = [int(i) for i in np.flatnonzero(texts.isna().to_numpy())]
            raise TraceValidationError(
                where or name,
                "prompt",
                bad,
                "expected prompt text to count prompt_tokens from "
                "(the file has no prompt_tokens column)",
            )
        df["prompt_tokens"] = count_tokens(texts.astype(str).tolist())
    return df


def load_trace_file(
    path: str | Path, *, fill_defaults: bool = False, require_arrivals: bool = False
) -> pd.DataFrame:
    """Read a user trace (CSV, JSONL or parquet, optionally ``.gz``) and validate it.

    With ``fill_defaults`` only ``output_tokens`` and either ``prompt_tokens`` or ``prompt`` are
    needed: missing ``request_id``, ``tenant`` (unknown), ``tier`` (standard), ``category``
    (unknown), ``source`` (the file stem), ``model`` (unknown) and ``prompt_tokens`` (cl100k
    count of ``prompt``) are filled. Without it every required schema column must be present.
    Errors name the file, the data row(s) (0-based, not counting a CSV header) and the column.

    Raises :class:`~data.schema.TraceFileError` when the file cannot be read as a table
    (:class:`~data.schema.TraceFileNotFoundError` when it does not exist) and
    :class:`~data.schema.TraceValidationError` when a value breaks the schema; both are
    ``ValueError`` subclasses. Every row of the file is either in the result or named in the
    error: nothing is dropped or repaired.
    """
    path = Path(path)
    df = _read(path)
    if len(df) == 0:
        raise TraceFileError(str(path), "the file has a header but no data rows")
    if fill_defaults:
        stem = path.name.split(".")[0]
        df = fill_missing_columns(df, stem, str(path))
    return validate_trace(df, where=str(path), require_arrivals=require_arrivals)
