from data.loaders import load_source
from report.inspect import format_table, main, summarise


def test_inspect_source(capsys):
    assert main(["burstgpt"]) == 0
    out = capsys.readouterr().out
    assert "burstgpt: 51 rows" in out and "out_p90" in out and "rate_rps" in out
    assert "removed 2" in out  # the explicit filter is reported


def test_inspect_workload(capsys):
    assert main(["poisson", "--n", "200"]) == 0
    out = capsys.readouterr().out
    assert "requests=200" in out and "tier=premium" in out and "tenant=chat" in out


def test_table_is_aligned():
    lines = format_table(summarise(load_source("azure_code"), None)).splitlines()
    assert len({len(line) for line in lines}) == 1
