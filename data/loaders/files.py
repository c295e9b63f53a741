"""``load_trace_file``: user trace files (CSV, JSONL, parquet; optionally gzip) -> schema table.

Errors always name the file, and where the problem is in the file: the line for malformed
JSONL, the data row (0-based, header not counted) and column for values that break the schema.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from data.loaders._common import DEFAULT_CATEGORY, DEFAULT_MODEL, DEFAULT_TENANT, DEFAULT_TIER
from data.schema import TraceValidationError, validate_trace

FORMATS = (".csv", ".jsonl", ".json", ".parquet")

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
        raise ValueError(
            f"{path}: unsupported trace file type {''.join(path.suffixes)!r}; expected one of "
            f"{list(FORMATS)} (optionally .gz)"
        )
    return ext, gz


def _read_bytes(path: Path, gz: bool) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trace file not found")
    raw = path.read_bytes()
    if not gz:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise ValueError(
            f"{path}: the gzip stream is truncated (the file was cut off while copying or "
            "downloading); re-create or re-download it"
        ) from None
    except (gzip.BadGzipFile, OSError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from None


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: line {lineno} (data row {len(rows)}): malformed JSON ({e.msg} at "
                f"column {e.colno}); expected one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise ValueError(
                f"{path}: line {lineno} (data row {len(rows)}): expected a JSON object, got "
                f"{type(obj).__name__}"
            )
        rows.append(obj)
    return pd.DataFrame(rows)


def _read(path: Path) -> pd.DataFrame:
    ext, gz = _format(path)
    data = _read_bytes(path, gz)
    if not data.strip():
        raise ValueError(f"{path}: the file is empty; expected a header and at least one row")
    if ext == ".parquet":
        import io

        try:
            return pd.read_parquet(io.BytesIO(data))
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    text = data.decode("utf-8", errors="strict")
    if ext == ".csv":
        import io

        try:
            return pd.read_csv(io.StringIO(text), keep_default_na=True)
        except pd.errors.ParserError as e:
            raise ValueError(f"{path}: malformed CSV ({e})") from None
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path}: the file is empty; expected a header row") from None
    return _read_jsonl(path, text)


def fill_missing_columns(df: pd.DataFrame, name: str) -> pd.DataFrame:
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
                name,
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
    """
    path = Path(path)
    df = _read(path)
    if len(df) == 0:
        raise ValueError(f"{path}: the file has a header but no data rows")
    if fill_defaults:
        stem = path.name.split(".")[0]
        df = fill_missing_columns(df, stem)
    return validate_trace(df, where=str(path), require_arrivals=require_arrivals)
