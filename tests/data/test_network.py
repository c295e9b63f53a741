"""Privacy and network: the data pipeline runs with the network blocked and never reaches for it.

The blocker (``tests/netblock.py``) is tested first: a test that blocks nothing
would pass everything. Then the data layer (token counting, every shipped source, the default
and paper workloads, ``python -m report.inspect``) runs in-process and in a subprocess with
non-local sockets and DNS blocked; the recorded attempts must be empty.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.campaign import record
from tests.conftest import REPO_ROOT
from tests.netblock import NetworkBlockedError

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md


def test_blocker_blocks_and_records(no_network):
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("example.com", 443), timeout=1)
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("huggingface.co", 443)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkBlockedError):
            s.connect(("93.184.215.14", 80))
        with pytest.raises(NetworkBlockedError):
            s.connect_ex(("2001:db8::1", 80))
    finally:
        s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(NetworkBlockedError):
            u.sendto(b"x", ("8.8.8.8", 53))
    finally:
        u.close()
    assert len(no_network) == 5, no_network
    assert isinstance(NetworkBlockedError("x"), OSError)  # fails like an offline machine
    record("network[blocker]", "blocked")


def test_blocker_allows_local_sockets(no_network):
    """Loopback TCP and Unix sockets stay usable (local services, multiprocessing)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    t = threading.Thread(target=lambda: srv.accept()[0].close())
    t.start()
    c = socket.create_connection(("localhost", port), timeout=5)
    c.close()
    t.join(5)
    srv.close()
    a, b = socket.socketpair()
    a.sendall(b"ok")
    assert b.recv(2) == b"ok"
    a.close()
    b.close()
    assert no_network == []


def test_blocker_is_undone_after_the_test():
    assert socket.socket.connect.__name__ == "connect"
    assert socket.getaddrinfo.__module__ == "socket"


def test_data_pipeline_offline(no_network, tmp_path):
    """Tokenizer, every shipped source, the default and paper workloads and a user file."""
    from data.loaders import SOURCES, load_source, load_trace_file
    from data.tokens import count_tokens
    from report.presets import load_workload

    assert count_tokens(["offline tokenizer check"]).tolist() == [3]
    for name in SOURCES:
        assert len(load_source(name)) > 0
    w = load_workload("default", seed=0, overrides=["n_requests=300"])
    assert len(w) == 300
    p = load_workload("paper", seed=0, overrides=["phases.learning.n_requests=20",
                                                   "phases.stress.n_requests=20"])  # fmt: skip
    assert len(p) == 40
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "hello there", "output_tokens": 7}\n')
    assert load_trace_file(f, fill_defaults=True)["prompt_tokens"].tolist() == [2]
    assert no_network == [], no_network
    record("network[data pipeline in-process]", "no attempts")


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_subprocess_blocker_works(blocked_subprocess_env):
    """The sitecustomize really blocks in a child (else the next tests prove nothing)."""
    env, log = blocked_subprocess_env
    r = _run(["-c", "import socket; socket.create_connection(('example.com', 80), timeout=2)"], env)
    assert r.returncode != 0 and "NetworkBlockedError" in r.stderr, r.stderr
    assert "create_connection ('example.com', 80)" in log.read_text()


@pytest.mark.slow  # fast tier: bash scripts/test.sh --fast
@pytest.mark.parametrize(
    "args",
    [
        # the paper preset and single sources run in-process above; one CLI run is enough
        ["-m", "report.inspect", "default", "--n", "200"],
    ],
    ids=["inspect-default"],
)
def test_inspect_subprocess_offline(blocked_subprocess_env, args):
    env, log = blocked_subprocess_env
    r = _run(args, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert log.read_text() == "", log.read_text()
    record("network[report.inspect subprocess]", "no attempts")


def test_inspect_bad_file_is_a_clean_error(blocked_subprocess_env, tmp_path: Path):
    """A bad user file: one line naming file, row and column, no traceback, exit code 2."""
    env, log = blocked_subprocess_env
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,output_tokens\nhello,5\nworld,-1\n")
    r = _run(["-m", "report.inspect", str(bad)], env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{bad}: row(s) 1: column 'output_tokens'" in r.stderr
    assert log.read_text() == ""
