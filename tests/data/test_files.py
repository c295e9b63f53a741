"""Every kind of bad input gets a clear error naming the file, the row and the column."""

import gzip

import pandas as pd
import pytest

from data.loaders import load_trace_file
from data.schema import TraceValidationError

GOOD = (
    "request_id,tenant,tier,category,source,model,arrival_s,prompt_tokens,output_tokens\n"
    "r0,a,premium,chat,mine,m,0.0,10,20\n"
    "r1,a,standard,chat,mine,m,0.5,11,21\n"
    "r2,b,batch,code,mine,m,1.0,12,22\n"
)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def bad_cell(row: int, col: str, value: str) -> str:
    lines = GOOD.splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(col)] = value
    lines[row + 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def test_good_file_loads(tmp_path):
    df = load_trace_file(write(tmp_path, "ok.csv", GOOD), require_arrivals=True)
    assert len(df) == 3 and df["output_tokens"].tolist() == [20, 21, 22]


@pytest.mark.parametrize(
    "row,col,value,expect",
    [
        (1, "output_tokens", "", "empty cell or NaN"),
        (1, "output_tokens", "NaN", "empty cell or NaN"),
        (2, "output_tokens", "-3", "zero or negative"),
        (0, "prompt_tokens", "0", "zero or negative"),
        (1, "prompt_tokens", "ten", "non-numeric"),
        (2, "output_tokens", "2.5", "whole number"),
        (1, "tier", "gold", "unknown tier 'gold'"),
        (2, "tenant", "", "non-empty label"),
        (2, "request_id", "r0", "duplicates"),
    ],
)
def test_bad_cell_names_file_row_column(tmp_path, row, col, value, expect):
    p = write(tmp_path, "bad.csv", bad_cell(row, col, value))
    with pytest.raises(TraceValidationError) as e:
        load_trace_file(p)
    msg = str(e.value)
    assert str(p) in msg and f"column {col!r}" in msg and expect in msg
    assert row in e.value.rows and e.value.column == col


def test_unsorted_arrivals(tmp_path):
    p = write(tmp_path, "unsorted.csv", bad_cell(2, "arrival_s", "0.2"))
    load_trace_file(p)  # fine as a length corpus
    with pytest.raises(TraceValidationError, match=r"row\(s\) 2: column 'arrival_s'.*sorted"):
        load_trace_file(p, require_arrivals=True)


def test_missing_column(tmp_path):
    text = "\n".join(",".join(line.split(",")[:-1]) for line in GOOD.splitlines()) + "\n"
    p = write(tmp_path, "nocol.csv", text)
    with pytest.raises(TraceValidationError, match=r"nocol.csv: column 'output_tokens': missing"):
        load_trace_file(p)


def test_fill_defaults_needs_only_prompt_and_output(tmp_path):
    p = write(
        tmp_path,
        "mini.jsonl",
        '{"prompt": "hello world", "output_tokens": 5}\n\n{"prompt": "hi", "output_tokens": 7}\n',
    )
    with pytest.raises(TraceValidationError, match="missing required column"):
        load_trace_file(p)
    df = load_trace_file(p, fill_defaults=True)
    assert df["prompt_tokens"].tolist() == [2, 1]  # cl100k counts
    assert df["tier"].tolist() == ["standard"] * 2
    assert set(df["tenant"]) == {"unknown"} and set(df["model"]) == {"unknown"}
    assert df["source"].iloc[0] == "mini" and df["request_id"].tolist() == ["mini:0", "mini:1"]


def test_fill_defaults_keeps_present_columns_strict(tmp_path):
    p = write(tmp_path, "t.csv", "prompt,output_tokens,tier\nhello,5,\n")
    with pytest.raises(TraceValidationError, match=r"row\(s\) 0: column 'tier'"):
        load_trace_file(p, fill_defaults=True)


def test_malformed_jsonl_line(tmp_path):
    p = write(tmp_path, "m.jsonl", '{"prompt": "a", "output_tokens": 1}\n{"prompt": "b", oops}\n')
    with pytest.raises(ValueError, match=r"m.jsonl: line 2 \(data row 1\): malformed JSON"):
        load_trace_file(p, fill_defaults=True)
    p = write(tmp_path, "l.jsonl", "[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 1 .*expected a JSON object"):
        load_trace_file(p, fill_defaults=True)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(GOOD.encode() * 50)
    p = tmp_path / "cut.csv.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.csv.gz: the gzip stream is truncated"):
        load_trace_file(p)
    p = tmp_path / "notgz.csv.gz"
    p.write_text(GOOD)
    with pytest.raises(ValueError, match=r"notgz.csv.gz: not a valid gzip file"):
        load_trace_file(p)


def test_gzip_and_parquet_roundtrip(tmp_path):
    p = tmp_path / "ok.csv.gz"
    p.write_bytes(gzip.compress(GOOD.encode()))
    df = load_trace_file(p)
    q = tmp_path / "ok.parquet"
    df.to_parquet(q)
    pd.testing.assert_frame_equal(load_trace_file(q), df)


@pytest.mark.parametrize(
    "text,expect", [("", "empty"), ("\n\n", "empty"), ("prompt,output_tokens\n", "no data rows")]
)
def test_empty_files(tmp_path, text, expect):
    p = write(tmp_path, "e.csv", text)
    with pytest.raises(ValueError, match=rf"e.csv: .*{expect}"):
        load_trace_file(p, fill_defaults=True)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.csv"):
        load_trace_file(tmp_path / "nothere.csv")
    p = write(tmp_path, "x.txt", GOOD)
    with pytest.raises(ValueError, match=r"x.txt: unsupported trace file type"):
        load_trace_file(p)
