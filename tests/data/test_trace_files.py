"""Bad-input campaign over ``data.loaders.load_trace_file`` (CSV, JSONL, parquet; gzip or not).

Each example is a small trace table that hypothesis corrupts in known places (cells, columns,
the header, the byte stream, the compression), written in one format and loaded. The oracle:

* no corruption (or only benign variants such as ``"12.0"`` or odd unicode): the file loads,
  every row is there in order, and every value is the one written;
* corruption of cells: ``TraceValidationError`` whose column is a corrupted column and whose
  rows are all corrupted rows of it (no innocent row is blamed, none is dropped);
* corruption of the file (bad gzip, bad UTF-8, a row with too many fields, a broken JSON line,
  a duplicate column): ``TraceFileError`` naming the file (and the row where known);
* raw damage (truncated or random bytes): whatever happens, only a documented error escapes.

Anything else (a pandas/numpy/pyarrow/json/gzip/csv exception) fails the test.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data.loaders import load_trace_file
from data.schema import TIERS, TraceFileError, TraceValidationError
from data.tokens import count_tokens
from tests.campaign import assert_toolkit_error, campaign, outcome_of, record

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

LABELS = ("request_id", "tenant", "tier", "category", "source", "model")
TOKENS = ("prompt_tokens", "output_tokens")
REQUIRED = (*LABELS, *TOKENS)
FILLABLE = ("request_id", "tenant", "tier", "category", "source", "model")

# Characters that break naive CSV/JSON handling or text rendering: NUL, bidi overrides, a ZWJ
# emoji sequence, combining marks, BOMs, Unicode line separators (U+2028, NEL), CR/LF, quotes,
# delimiters, escapes, spreadsheet formulas and every spelling pandas reads as "missing".
ODD = (
    "\x00", "\u202e", "\u200f", "\u05d0\u05d1", "\U0001f469\u200d\U0001f4bb", "e\u0301",
    "\ufeff", "\u2028", "\u2029", "\x85", "\r", "\n", "\r\n", '"', "'", ",", ";", "\t", "\\",
    "\\u0000", "\\ud800", "{", "}", "[1]", "=1+1", "\U0010ffff", "\ufffd", "\x1c", "\x1e",
    "<|endoftext|>", "NA", "nan", "NaN", "null", "None", "N/A", "#N/A", " ",
)  # fmt: skip
odd_text = st.lists(
    st.one_of(st.sampled_from(ODD), st.text(max_size=4)), min_size=1, max_size=4
).map("".join)
label = odd_text.filter(lambda s: s != "")

# (raw value written, expected int) for token cells that are valid in another spelling
BENIGN_NUMBERS = ((" 12 ", 12), ("12.0", 12), ("1e1", 10), ("+7", 7), ("0012", 12))
BAD_NUMBERS = (
    "", "0", "-1", "-0", "2.5", "inf", "-inf", "Infinity", "nan", "NA", "ten", "1,000", "0x10",
    "12 tokens", "1e400", str(2**41), "\x00", "\U0001f600", "[1]", "True",
)  # fmt: skip


@dataclass
class Case:
    """A generated table, how it was corrupted, and what loading it must do."""

    fmt: str  # csv | jsonl | parquet
    gz: bool
    cols: dict[str, list]  # column -> values as written (None: empty / null / omitted)
    expect: dict[str, list]  # column -> expected loaded values (for the columns checked)
    fill_defaults: bool = False
    require_arrivals: bool = False
    bad: set[tuple[int, str]] = field(default_factory=set)  # (row, column) that must fail
    missing: set[str] = field(default_factory=set)  # required columns absent from the file
    file_error_row: int | None = None  # a structural corruption at this data row
    file_error: bool = False  # the file as a whole must be rejected (TraceFileError)
    anything: bool = False  # raw byte damage: only "no raw exception" can be asserted
    check_row: bool = True  # whether the structural error must name file_error_row
    dup_column: str | None = None  # a column name written twice (header / JSON key)
    shape_kind: str = "more"  # CSV: a field more/fewer; JSONL: a cut line / a non-object
    cut: float = 0.5  # JSONL "more": where the line is cut (fraction of its length)
    omit_null: bool = False  # JSONL: leave out keys whose value is None
    may_add_rows: bool = False  # damage that inserts bytes could spell a valid extra row

    @property
    def n(self) -> int:
        return len(next(iter(self.cols.values())))


# ----------------------------------------------------------------------------- generation


@st.composite
def tables(draw, fmt: str) -> Case:
    n = draw(st.integers(1, 6))
    cols: dict[str, list] = {
        # the "r<i>:" prefix keeps ids unique whatever the suffix
        "request_id": [f"r{i}:{draw(st.one_of(st.just(''), label))}" for i in range(n)],
        "tenant": [draw(label) for _ in range(n)],
        "tier": [draw(st.sampled_from(TIERS)) for _ in range(n)],
        "category": [draw(label) for _ in range(n)],
        "source": [draw(label) for _ in range(n)],
        "model": [draw(label) for _ in range(n)],
        "prompt_tokens": [draw(st.integers(1, 2**40)) for _ in range(n)],
        "output_tokens": [draw(st.integers(1, 5000)) for _ in range(n)],
    }
    if draw(st.booleans()):
        gaps = [round(draw(st.floats(0, 1e4, allow_nan=False)), 6) for _ in range(n)]
        cols["arrival_s"] = list(itertools.accumulate(gaps))
    if draw(st.booleans()):
        cols["prompt"] = [draw(label) for _ in range(n)]
    if draw(st.booleans()):
        cols["max_tokens"] = [draw(st.integers(1, 8192)) for _ in range(n)]
    if draw(st.booleans()):
        # an extra column the schema does not know: kept, never an error
        name = draw(st.sampled_from(["Output_Tokens", "user_note", "x", "\u05d0", "latency ms"]))
        cols[name] = [draw(st.integers(-5, 5)) for _ in range(n)]
    if fmt == "csv" and draw(st.booleans()):
        # shuffle the column order: nothing depends on it
        order = draw(st.permutations(list(cols)))
        cols = {c: cols[c] for c in order}
    case = Case(
        fmt=fmt,
        gz=draw(st.booleans()),
        cols=cols,
        expect={c: list(v) for c, v in cols.items()},
        require_arrivals="arrival_s" in cols and draw(st.booleans()),
        omit_null=fmt == "jsonl" and draw(st.booleans()),
    )
    for _ in range(draw(st.integers(0, 3))):
        draw(st.sampled_from(CELL_MUTATIONS))(draw, case)
    if draw(st.integers(0, 4)) == 0:
        draw(st.sampled_from(COLUMN_MUTATIONS))(draw, case)
    return case


def _row(draw, case: Case) -> int:
    return draw(st.integers(0, case.n - 1))


def mut_bad_token(draw, case: Case) -> None:
    col = draw(st.sampled_from([c for c in (*TOKENS, "max_tokens") if c in case.cols]))
    r = _row(draw, case)
    if case.fmt == "parquet":
        v = draw(st.sampled_from([0, -1, -(2**40), 2**41, 2.5, math.nan, math.inf, -math.inf]))
    elif case.fmt == "jsonl":
        v = draw(st.sampled_from([*BAD_NUMBERS, 0, -3, 2.5, math.nan, math.inf, 2**41,
                                  10**30, True, False, [1], {"n": 1}, None]))  # fmt: skip
    else:
        v = draw(st.sampled_from(BAD_NUMBERS))
    case.cols[col][r] = v
    case.bad.add((r, col))


def mut_benign_token(draw, case: Case) -> None:
    if case.fmt == "parquet":
        return
    col = draw(st.sampled_from(TOKENS))
    r = _row(draw, case)
    raw, val = draw(st.sampled_from(BENIGN_NUMBERS))
    case.bad.discard((r, col))
    case.cols[col][r] = raw
    case.expect[col][r] = val


def mut_missing_label(draw, case: Case) -> None:
    col = draw(st.sampled_from(LABELS))
    r = _row(draw, case)
    case.cols[col][r] = draw(st.sampled_from([None, ""]))
    case.bad.add((r, col))


def mut_bad_tier(draw, case: Case) -> None:
    r = _row(draw, case)
    case.cols["tier"][r] = draw(
        st.sampled_from(
            ["Premium", " premium", "premium ", "gold", "0", "batch\x00", "\u202ebatch"]
        )
    )
    case.bad.add((r, "tier"))


def mut_duplicate_id(draw, case: Case) -> None:
    if case.n < 2:
        return
    i, j = draw(st.lists(st.integers(0, case.n - 1), min_size=2, max_size=2, unique=True))
    case.cols["request_id"][j] = case.cols["request_id"][i]
    case.bad |= {(i, "request_id"), (j, "request_id")}


def mut_bad_arrival(draw, case: Case) -> None:
    if "arrival_s" not in case.cols:
        return
    r = _row(draw, case)
    a = case.cols["arrival_s"]
    kind = draw(st.sampled_from(["negative", "inf", "text", "nan", "unsorted"]))
    if kind == "unsorted":
        prev = a[r - 1] if r > 0 else None
        if not (isinstance(prev, float) and math.isfinite(prev) and prev > 0):
            return
        # lower than the row above (still >= 0): only a workload needs sorted arrivals
        case.bad.discard((r, "arrival_s"))
        a[r] = prev / 2
        case.expect["arrival_s"][r] = a[r]
        if case.require_arrivals:
            case.bad.add((r, "arrival_s"))
    elif kind == "nan":
        case.bad.discard((r, "arrival_s"))
        a[r] = None if case.fmt != "parquet" else math.nan
        case.expect["arrival_s"][r] = math.nan
        if case.require_arrivals:
            case.bad.add((r, "arrival_s"))
    else:
        if kind == "text" and case.fmt == "parquet":
            return
        a[r] = {"negative": -1.5, "inf": math.inf, "text": "12:00:01"}[kind]
        case.bad.add((r, "arrival_s"))


def mut_odd_prompt(draw, case: Case) -> None:
    if "prompt" not in case.cols:
        return
    r = _row(draw, case)
    case.bad.discard((r, "prompt"))
    if case.fmt == "jsonl" and draw(st.booleans()):
        case.cols["prompt"][r] = draw(st.sampled_from([5, 1.5, ["a"], {"t": "a"}, True]))
        case.bad.add((r, "prompt"))
    else:
        # empty or missing prompt text is allowed (the column is optional per row)
        case.cols["prompt"][r] = None
        case.expect["prompt"][r] = None


def mut_surrogate(draw, case: Case) -> None:
    """A lone UTF-16 surrogate in a text cell: not UTF-8 encodable (a pair may be, in JSON)."""
    col = draw(st.sampled_from(["tenant", "category", "source", "model", "request_id"]))
    r = _row(draw, case)
    if case.cols[col][r] is None:
        return
    s = draw(st.sampled_from(["\ud800", "\udc80", "\udfff", "\ud800\udc80"]))
    case.cols[col][r] = f"{case.cols[col][r]}{s}"
    case.expect[col][r] = case.cols[col][r]


def mut_label_type(draw, case: Case) -> None:
    """JSON and parquet carry types: numbers are stringified labels, containers are errors."""
    if case.fmt != "jsonl":
        return
    col = draw(st.sampled_from(["tenant", "category", "source", "model"]))
    r = _row(draw, case)
    v = draw(st.sampled_from([7, ["a"], {"a": 1}, True]))
    case.bad.discard((r, col))
    case.cols[col][r] = v
    if isinstance(v, int) and not isinstance(v, bool):
        case.expect[col][r] = str(v)
    else:
        case.bad.add((r, col))


CELL_MUTATIONS = (
    mut_bad_token,
    mut_benign_token,
    mut_missing_label,
    mut_bad_tier,
    mut_duplicate_id,
    mut_bad_arrival,
    mut_odd_prompt,
    mut_label_type,
    mut_surrogate,
)


def mut_drop_column(draw, case: Case) -> None:
    col = draw(st.sampled_from(REQUIRED))
    case.fill_defaults = draw(st.booleans())
    del case.cols[col]
    case.expect.pop(col, None)
    case.bad = {(r, c) for r, c in case.bad if c != col}
    if case.fill_defaults and col in FILLABLE:
        return
    if case.fill_defaults and col == "prompt_tokens" and "prompt" in case.cols:
        # counted from the prompt text; rows without text are errors in column 'prompt'
        case.bad |= {(r, "prompt") for r, p in enumerate(case.cols["prompt"]) if p is None}
        return
    case.missing.add(col)


def mut_duplicate_column(draw, case: Case) -> None:
    if case.fmt == "parquet":
        return  # see test_parquet_dtypes
    case.file_error = True
    case.dup_column = draw(st.sampled_from(list(case.cols)))


def mut_row_shape(draw, case: Case) -> None:
    """CSV: a row with one field too many or too few. JSONL: a cut or non-object line."""
    if case.fmt == "parquet":
        return
    case.file_error_row = _row(draw, case)
    case.shape_kind = draw(st.sampled_from(["more", "fewer"]))
    case.cut = draw(st.floats(0, 1))


COLUMN_MUTATIONS = (mut_drop_column, mut_duplicate_column, mut_row_shape)


# ----------------------------------------------------------------------------- writing


def _csv_cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def write_csv(case: Case) -> bytes:
    names = list(case.cols)
    dup = case.dup_column
    buf = io.StringIO()
    # Python's writer quotes a field holding "\r" only if "\r" is in the line terminator; a
    # bare "\r" written unquoted would end the row for every reader (pandas' too)
    if case.n % 2:
        w = csv.writer(buf, lineterminator="\r\n")
    else:
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(names + ([dup] if dup else []))
    for r in range(case.n):
        row = [_csv_cell(case.cols[c][r]) for c in names]
        if dup:
            row.append(_csv_cell(case.cols[dup][r]))
        if r == case.file_error_row:
            row = [*row, "extra"] if case.shape_kind == "more" else row[:-1]
        w.writerow(row)
    return buf.getvalue().encode("utf-8", "surrogatepass")


def write_jsonl(case: Case, ensure_ascii: bool) -> bytes:
    lines = []
    dup = case.dup_column
    for r in range(case.n):
        obj = {c: v[r] for c, v in case.cols.items()}
        if case.omit_null:
            obj = {c: v for c, v in obj.items() if v is not None}
        text = json.dumps(obj, ensure_ascii=ensure_ascii)
        if dup:  # the key twice (a None value may have been omitted from the object)
            text = "{" + f"{json.dumps(dup)}: 1, {json.dumps(dup)}: 2, " + text[1:]
        if r == case.file_error_row:
            if case.shape_kind == "more":
                text = text[: max(1, int(case.cut * (len(text) - 1)))]
            else:
                text = json.dumps(list(obj.values()))
        lines.append(text)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def write_parquet(case: Case) -> bytes:
    df = pd.DataFrame(case.cols)
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


def write(case: Case, tmp: Path, ensure_ascii: bool = True) -> Path:
    if case.fmt == "csv":
        data = write_csv(case)
    elif case.fmt == "jsonl":
        data = write_jsonl(case, ensure_ascii)
    else:
        data = write_parquet(case)
    if case.gz:
        data = gzip.compress(data)
    p = tmp / f"trace.{case.fmt}{'.gz' if case.gz else ''}"
    p.write_bytes(data)
    return p


def _json_roundtrip(case: Case) -> None:
    for table in (case.cols, case.expect):
        for col, vals in table.items():
            table[col] = [json.loads(json.dumps(v)) if isinstance(v, str) else v for v in vals]


def _surrogate(case: Case) -> bool:
    # a lone surrogate cannot be UTF-8 text: the file is not valid UTF-8 or holds a "\ud800"
    # escape that is not text either
    for v in case.cols.values():
        for x in v:
            if isinstance(x, str):
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    return True
    return False


# ----------------------------------------------------------------------------- oracle


def check(case: Case, path: Path, tag: str) -> None:
    try:
        df = load_trace_file(
            path, fill_defaults=case.fill_defaults, require_arrivals=case.require_arrivals
        )
        exc = None
    except Exception as e:  # the oracle decides which exceptions are allowed
        exc = e
        df = None
    record(tag, outcome_of(exc))
    if case.anything:
        if exc is not None:
            assert_toolkit_error(exc, str(path))
        elif not case.may_add_rows:
            assert len(df) <= case.n  # never invents rows
        return
    if case.file_error or case.file_error_row is not None:
        assert exc is not None, f"{tag}: a corrupt file loaded"
        assert type(exc) is TraceFileError, repr(exc)
        assert_toolkit_error(exc, str(path))
        if case.file_error_row is not None and case.check_row:
            assert exc.rows == [case.file_error_row], (str(exc), case.file_error_row)
        return
    if case.missing:
        assert exc is not None, f"{tag}: loaded without required {case.missing}"
        assert type(exc) is TraceValidationError, repr(exc)
        assert_toolkit_error(exc, str(path))
        absent = case.missing | _omitted(case)
        assert exc.column in absent and "missing required column" in str(exc)
        return
    if (
        case.bad
        and case.fill_defaults
        and {c for _, c in case.bad} <= (_omitted(case) & set(FILLABLE))
    ):
        # JSONL with every row's key left out: the column is absent, and fill_defaults fills an
        # absent identity column by design (only present-but-empty cells are errors).
        assert exc is None, f"{tag}: an absent fillable column was not filled: {exc!r}"
        assert len(df) == case.n, f"{path}: {case.n} rows written, {len(df)} loaded"
        return
    if case.bad:
        assert exc is not None, f"{tag}: loaded although {sorted(case.bad)} are invalid"
        assert type(exc) is TraceValidationError, repr(exc)
        assert_toolkit_error(exc, str(path))
        blamed = {r for r, c in case.bad if c == exc.column}
        assert blamed, f"error blames column {exc.column!r}, corrupted: {sorted(case.bad)}: {exc}"
        if case.fmt == "jsonl" and case.omit_null and "missing required column" in str(exc):
            return  # every row's key was omitted: the column is absent
        assert exc.rows and set(exc.rows) <= blamed, (str(exc), sorted(case.bad))
        return
    if exc is not None:
        raise AssertionError(f"{tag}: a valid file was rejected: {exc!r}") from exc
    check_values(case, df, path)


def _omitted(case: Case) -> set[str]:
    """JSONL columns whose key every row left out (all values None): absent from the file."""
    if not (case.fmt == "jsonl" and case.omit_null):
        return set()
    return {c for c, v in case.cols.items() if all(x is None for x in v)}


def check_values(case: Case, df: pd.DataFrame, path: Path) -> None:
    """A file that loads holds every row, in order, with the values written."""
    assert len(df) == case.n, f"{path}: {case.n} rows written, {len(df)} loaded"
    for col, want in case.expect.items():
        if case.omit_null and all(w is None or w != w for w in want):
            continue  # JSONL: every row left the key out, so the file has no such column
        assert col in df.columns, f"column {col!r} lost"
        got = df[col].tolist()
        if col in LABELS:
            assert got == [str(w) for w in want], col
        elif col in (*TOKENS, "max_tokens"):
            assert got == [int(w) for w in want], col
        elif col == "arrival_s":
            np.testing.assert_allclose(
                np.array(got, dtype=float), np.array(want, dtype=float), rtol=1e-12
            )
        elif col == "prompt":
            assert [None if g is pd.NA else g for g in got] == want
    if case.fill_defaults and "prompt_tokens" not in case.cols and "prompt" in case.cols:
        want = count_tokens(list(case.cols["prompt"]))
        assert df["prompt_tokens"].tolist() == want.tolist()
    for col in FILLABLE:
        assert col in df.columns


# ----------------------------------------------------------------------------- tests


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_corrupted_tables(fmt, tmp_path):
    budget = {"csv": 500, "jsonl": 500, "parquet": 200}[fmt]

    @campaign(budget)
    @given(case=tables(fmt), ensure_ascii=st.booleans())
    def run(case: Case, ensure_ascii: bool) -> None:
        if case.fmt == "parquet" and _surrogate(case):
            return  # pyarrow refuses to write it, so no such parquet file exists
        if case.fmt == "jsonl" and ensure_ascii:
            # a surrogate *pair* escaped as "\ud800\udc80" is one valid character in JSON
            _json_roundtrip(case)
        if _surrogate(case):
            # not UTF-8 (CSV, raw JSONL) or a "\ud800" escape (JSONL): the file is rejected,
            # possibly at an earlier row than a structural corruption
            case.file_error = True
            case.check_row = False
            case.bad.clear()
            case.missing.clear()
        if case.fmt == "jsonl" and case.file_error_row is not None:
            # a row that is already bad elsewhere may be reported first only if it comes before
            case.bad = {(r, c) for r, c in case.bad if r < case.file_error_row}
        if case.file_error_row is not None and (case.bad or case.missing):
            case.bad.clear()
            case.missing.clear()
        path = write(case, tmp_path, ensure_ascii)
        check(case, path, f"load_trace_file[{fmt}{'.gz' if case.gz else ''}]")

    run()


@campaign(300)
@given(
    case=st.sampled_from(["csv", "jsonl", "parquet"]).flatmap(tables),
    damage=st.sampled_from(["truncate", "flip", "insert", "garbage", "gz_truncate", "gz_trail"]),
    at=st.floats(0, 1, exclude_max=True),
    junk=st.binary(min_size=1, max_size=64),
)
def test_damaged_bytes(case, damage, at, junk, tmp_path):
    """Truncated, bit-flipped, spliced and random files: only documented errors escape."""
    if _surrogate(case):
        return
    case.gz = damage.startswith("gz_")
    path = write(case, tmp_path)
    data = path.read_bytes()
    k = int(at * len(data))
    if damage == "truncate":
        data = data[:k]
    elif damage == "flip":
        data = data[:k] + bytes([data[k] ^ 0xFF]) + data[k + 1 :]
    elif damage == "insert":
        data = data[:k] + junk + data[k:]
    elif damage == "garbage":
        data = junk
    elif damage == "gz_truncate":
        data = data[: min(k, len(data) - 1)]
    else:
        # gzip allows zero padding after the last member (tape blocks): that is not damage
        junk = junk if junk.strip(b"\x00") else junk + b"x"
        data = data + junk
    path.write_bytes(data)
    case.anything = True
    case.fill_defaults = False
    case.may_add_rows = damage in ("insert", "garbage")  # junk can spell extra valid rows
    if damage in ("gz_truncate", "gz_trail"):
        case.anything = False
        case.file_error = True  # a gzip stream cut short or followed by junk is never read
        case.file_error_row = None
    check(case, path, f"load_trace_file[damaged:{damage}]")


@pytest.mark.parametrize(
    "name,data",
    [
        ("empty.csv", b""),
        ("blank.csv", b"\n\r\n  \n"),
        ("header_only.csv", b"request_id,output_tokens\n"),
        ("empty_header_name.csv", b"request_id,,output_tokens\nr0,1,2\n"),
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n \n\t\n"),
        ("nulls.jsonl", b"null\n"),
        ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        ("array.json", b'[{"prompt": "a", "output_tokens": 1}]'),
        ("empty.parquet", b""),
        ("text.parquet", b"request_id,output_tokens\nr0,1\n"),
        ("empty.csv.gz", gzip.compress(b"")),
        ("plain.csv.gz", b"request_id,output_tokens\nr0,1\n"),
        ("latin1.csv", "prompt,output_tokens\ncaf\u00e9,3\n".encode("latin-1")),
        ("utf16.jsonl", '{"prompt": "a", "output_tokens": 3}\n'.encode("utf-16")),
        ("bad.txt", b"prompt,output_tokens\na,1\n"),
        ("noext", b"prompt,output_tokens\na,1\n"),
        ("unterminated.csv", b'prompt,output_tokens\n"abc,1\n'),
        ("quote_in_field.csv", b'prompt,output_tokens\n"ab"c,1\n'),
    ],
)
def test_unreadable_files(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(TraceFileError) as e:
        load_trace_file(p, fill_defaults=True)
    record("load_trace_file[unreadable]", "TraceFileError")
    assert_toolkit_error(e.value, str(p))


def test_missing_file_names_path(tmp_path):
    p = tmp_path / "nothere.jsonl"
    with pytest.raises(FileNotFoundError) as e:
        load_trace_file(p)
    assert isinstance(e.value, TraceFileError) and str(p) in str(e.value)
    record("load_trace_file[missing]", type(e.value).__name__)


def test_bom_and_line_separators_load(tmp_path):
    """Valid files that naive readers break: a UTF-8 BOM, U+2028 inside JSON strings, CR-only
    line ends, text that spells a pandas "missing" value, ids with leading zeros."""
    p = tmp_path / "bom.csv"
    p.write_bytes(
        "\ufeffrequest_id,tenant,tier,category,source,model,prompt,prompt_tokens,output_tokens\r"
        "007,NA,premium,null,None,n/a,NaN,1,2\r".encode()
    )
    df = load_trace_file(p)
    assert df.iloc[0][["request_id", "tenant", "category", "source", "model", "prompt"]].tolist() == [
        "007", "NA", "null", "None", "n/a", "NaN",
    ]  # fmt: skip
    q = tmp_path / "sep.jsonl"
    q.write_text(
        json.dumps({"prompt": "a\u2028b\x85c\u2029", "output_tokens": 3}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    assert load_trace_file(q, fill_defaults=True)["prompt"].tolist() == ["a\u2028b\x85c\u2029"]
    record("load_trace_file[valid-odd]", "loaded")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_enormous_prompts(tmp_path, fmt):
    """A 4 MiB prompt (beyond the csv module's 128 KiB field limit) loads, and is counted."""
    big = ('lorem ipsum \u202e\U0001f600 dolor, "sit" amet\n' * 100_000)[: 4 * 2**20]
    rows = [{"prompt": big, "output_tokens": 5}, {"prompt": "short", "output_tokens": 6}]
    p = tmp_path / f"big.{fmt}"
    if fmt == "csv":
        pd.DataFrame(rows).to_csv(p, index=False)
    elif fmt == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pd.DataFrame(rows).to_parquet(p)
    df = load_trace_file(p, fill_defaults=True)
    assert df["prompt"].tolist() == [big, "short"]
    assert df["prompt_tokens"].iloc[0] == count_tokens([big])[0] > 500_000
    record(f"load_trace_file[enormous:{fmt}]", "loaded")


# ----------------------------------------------------------------------------- parquet dtypes

N = 4


def _good_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(N)],
            "tenant": ["a", "b", "a", "c"],
            "tier": ["premium", "standard", "batch", "standard"],
            "category": ["chat"] * N,
            "source": ["mine"] * N,
            "model": ["m"] * N,
            "arrival_s": [0.0, 0.5, 1.0, 2.0],
            "prompt_tokens": [10, 11, 12, 13],
            "output_tokens": [20, 21, 22, 23],
        }
    )


# column -> pyarrow array replacing it; expected: None (loads), "all" or a row (must fail)
PARQUET_COLUMNS = {
    "int8 tokens": ("output_tokens", pa.array([1, 2, 3, 4], pa.int8()), None),
    "uint64 tokens": ("output_tokens", pa.array([1, 2, 3, 4], pa.uint64()), None),
    "string tokens": ("output_tokens", pa.array(["1", "2", "3", "4"]), None),
    "dictionary labels": ("tenant", pa.array(["a", "b", "a", "b"]).dictionary_encode(), None),
    "large_string labels": ("model", pa.array(["m"] * N, pa.large_string()), None),
    "int labels": ("request_id", pa.array([1, 2, 3, 4]), None),
    "float32 arrivals": ("arrival_s", pa.array([0, 1, 2, 3], pa.float32()), None),
    "decimal tokens": ("output_tokens", pa.array([1, 2, 3, 4], pa.decimal128(5, 0)), None),
    "bool tokens": ("output_tokens", pa.array([True, True, False, True]), "all"),
    "null tokens": ("prompt_tokens", pa.array([1, None, 3, 4], pa.int64()), 1),
    "uint64 huge": ("prompt_tokens", pa.array([1, 2, 2**63, 4], pa.uint64()), 2),
    "nan tokens": ("output_tokens", pa.array([1.0, 2.0, 3.0, float("nan")]), 3),
    "fraction tokens": ("output_tokens", pa.array([1.0, 2.5, 3.0, 4.0]), 1),
    "timestamp arrivals": ("arrival_s", pa.array(pd.date_range("2024", periods=N)), "all"),
    "duration arrivals": ("arrival_s", pa.array(pd.to_timedelta([0, 1, 2, 3], "s")), "all"),
    "date32 arrivals": ("arrival_s", pa.array([0, 1, 2, 3], pa.int32()).cast(pa.date32()), "all"),
    "binary labels": ("tenant", pa.array([b"a", b"b", b"a", b"b"]), "all"),
    "list labels": ("category", pa.array([["x"], ["y"], ["x"], ["y"]]), "all"),
    "struct labels": ("source", pa.array([{"s": 1}] * N), "all"),
    "list tokens": ("prompt_tokens", pa.array([[1], [2], [3], [4]]), "all"),
    "null labels": ("tier", pa.array(["premium", None, "batch", "batch"]), 1),
    "all-null column": ("model", pa.nulls(N, pa.string()), "all"),
    "negative arrivals": ("arrival_s", pa.array([0.0, -1.0, 1.0, 2.0]), 1),
    "samples": ("output_samples", pa.array([[1, 2], [3], [4, 5], [6]]), None),
    "bad samples": ("output_samples", pa.array([[1, 2], [0], [4, 5], [6]]), 1),
    "empty samples": ("output_samples", pa.array([[1, 2], [], [4, 5], [6]]), 1),
}


@pytest.mark.parametrize("name", sorted(PARQUET_COLUMNS))
def test_parquet_dtypes(tmp_path, name):
    col, arr, expect = PARQUET_COLUMNS[name]
    # without pandas metadata: the file holds only the arrow type under test
    t = pa.Table.from_pandas(_good_frame(), preserve_index=False).replace_schema_metadata(None)
    if col in t.column_names:
        t = t.set_column(t.column_names.index(col), col, arr)
    else:
        t = t.append_column(col, arr)
    p = tmp_path / "t.parquet"
    pq.write_table(t, p)
    if expect is None:
        df = load_trace_file(p, require_arrivals=True)
        assert len(df) == N
        assert df[col].notna().all()
        record("load_trace_file[parquet-dtype]", "loaded")
        return
    with pytest.raises(TraceValidationError) as e:
        load_trace_file(p, require_arrivals=True)
    record("load_trace_file[parquet-dtype]", type(e.value).__name__)
    assert type(e.value) is TraceValidationError
    assert_toolkit_error(e.value, str(p))
    assert e.value.column == col
    assert e.value.rows == (list(range(N)) if expect == "all" else [expect])


def test_parquet_duplicate_columns(tmp_path):
    t = pa.Table.from_pandas(_good_frame(), preserve_index=False)
    t = t.append_column("output_tokens", pa.array([1, 2, 3, 4]))
    p = tmp_path / "dup.parquet"
    pq.write_table(t, p)
    with pytest.raises(TraceFileError) as e:
        load_trace_file(p)
    record("load_trace_file[parquet-dtype]", type(e.value).__name__)
    assert_toolkit_error(e.value, str(p))
    assert e.value.column == "output_tokens" and "more than once" in str(e.value)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_unsorted_arrivals_name_the_row(tmp_path, fmt):
    df = _good_frame()
    df.loc[2, "arrival_s"] = 0.25
    p = tmp_path / f"u.{fmt}"
    if fmt == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_json(p, orient="records", lines=True)
    assert len(load_trace_file(p)) == N  # fine as a length corpus
    with pytest.raises(TraceValidationError) as e:
        load_trace_file(p, require_arrivals=True)
    assert e.value.rows == [2] and e.value.column == "arrival_s" and "sorted" in str(e.value)
    record(f"load_trace_file[{fmt}]", "TraceValidationError")
