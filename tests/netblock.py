"""Block every network connection and record each attempt (tests only).

``block_network()`` patches the socket layer so that connecting, sending to an address or
resolving a host name raises :class:`NetworkBlockedError` (an ``OSError``, the way an offline
machine fails) and appends the attempt to a list. Code that catches the error and carries on
(e.g. "try the hub, fall back to the cache") still leaves its attempt in the list, so a test
asserts the list is empty rather than relying on a crash.

Unix domain sockets (``AF_UNIX``) and loopback addresses (127.0.0.0/8, ::1, ``localhost``)
stay usable: they never leave the machine, and local services use them (multiprocessing,
wandb's offline service process, a local vLLM server). Every other address is blocked.

The same module is the ``sitecustomize`` of a subprocess (see ``sitecustomize_dir``): with
``DRIFTSCHED_NETLOG=<file>`` set, every attempt in the child is appended to that file.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class NetworkBlockedError(ConnectionRefusedError):
    """Raised instead of opening a network connection while the network is blocked."""


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "", None)


def _is_local_host(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return host in LOCAL_HOSTS or (isinstance(host, str) and host.startswith("127."))


def _is_local(sock: Any, address: Any) -> bool:
    if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
        return True
    return isinstance(address, tuple) and bool(address) and _is_local_host(address[0])


@contextmanager
def block_network(log: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """Within the block, network use raises and is recorded in the yielded list."""
    attempts: list[str] = []

    def note(what: str) -> None:
        # where the attempt came from: the innermost frames outside this module
        frames = [f for f in traceback.extract_stack()[:-2] if f.filename != __file__][-12:]
        what += " via " + " <- ".join(
            f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
        )
        attempts.append(what)
        if log is not None:
            log(what)

    real = {
        "connect": socket.socket.connect,
        "connect_ex": socket.socket.connect_ex,
        "sendto": socket.socket.sendto,
        "sendmsg": socket.socket.sendmsg,
        "getaddrinfo": socket.getaddrinfo,
        "gethostbyname": socket.gethostbyname,
        "gethostbyname_ex": socket.gethostbyname_ex,
        "create_connection": socket.create_connection,
    }

    def connect(self: socket.socket, address: Any) -> None:
        if _is_local(self, address):
            return real["connect"](self, address)
        note(f"connect {address!r}")
        raise NetworkBlockedError(f"network blocked by the test: connect to {address!r}")

    def connect_ex(self: socket.socket, address: Any) -> int:
        if _is_local(self, address):
            return real["connect_ex"](self, address)
        note(f"connect_ex {address!r}")
        raise NetworkBlockedError(f"network blocked by the test: connect to {address!r}")

    def sendto(self: socket.socket, *args: Any) -> int:
        if _is_local(self, args[-1]):
            return real["sendto"](self, *args)
        note(f"sendto {args[-1]!r}")
        raise NetworkBlockedError("network blocked by the test: sendto")

    def sendmsg(self: socket.socket, *args: Any) -> int:
        if len(args) < 4 or args[3] is None or _is_local(self, args[3]):
            return real["sendmsg"](self, *args)
        note(f"sendmsg {args[3]!r}")
        raise NetworkBlockedError("network blocked by the test: sendmsg")

    def resolve(name: str) -> Callable[..., Any]:
        def blocked(host: Any, *args: Any, **kwargs: Any) -> Any:
            if _is_local_host(host):
                return real[name](host, *args, **kwargs)
            note(f"{name} {host!r}")
            raise NetworkBlockedError(f"network blocked by the test: {name}({host!r})")

        return blocked

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if _is_local_host(address[0]):
            return real["create_connection"](address, *args, **kwargs)
        note(f"create_connection {address!r}")
        raise NetworkBlockedError(f"network blocked by the test: connect to {address!r}")

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.socket.sendmsg = sendmsg  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = resolve("getaddrinfo")  # type: ignore[assignment]
    socket.gethostbyname = resolve("gethostbyname")  # type: ignore[assignment]
    socket.gethostbyname_ex = resolve("gethostbyname_ex")  # type: ignore[assignment]
    socket.create_connection = create_connection  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        socket.socket.connect = real["connect"]  # type: ignore[method-assign]
        socket.socket.connect_ex = real["connect_ex"]  # type: ignore[method-assign]
        socket.socket.sendto = real["sendto"]  # type: ignore[method-assign]
        socket.socket.sendmsg = real["sendmsg"]  # type: ignore[method-assign]
        socket.getaddrinfo = real["getaddrinfo"]  # type: ignore[assignment]
        socket.gethostbyname = real["gethostbyname"]  # type: ignore[assignment]
        socket.gethostbyname_ex = real["gethostbyname_ex"]  # type: ignore[assignment]
        socket.create_connection = real["create_connection"]  # type: ignore[assignment]


SITECUSTOMIZE = """\
# Written by tests/netblock.py: block the network in this Python process.
import atexit, os, sys
sys.path.insert(0, {root!r})
from tests.netblock import block_network

_log = os.environ["DRIFTSCHED_NETLOG"]


def _append(what):
    with open(_log, "a", encoding="utf-8") as f:
        f.write(f"{{os.getpid()}} {{what}}\\n")


_ctx = block_network(_append)
_ctx.__enter__()
atexit.register(_ctx.__exit__, None, None, None)
del sys.path[0]
"""


def sitecustomize_dir(tmp: Path, repo_root: Path) -> Path:
    """A directory whose ``sitecustomize.py`` blocks the network in any Python started with
    it first on ``PYTHONPATH`` (with ``DRIFTSCHED_NETLOG`` naming the attempt log)."""
    d = tmp / "netblock_site"
    d.mkdir(parents=True, exist_ok=True)
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE.format(root=str(repo_root)))
    return d


def blocked_env(
    tmp: Path, repo_root: Path, base: dict[str, str] | None = None
) -> tuple[dict[str, str], Path]:
    """Environment for a network-blocked subprocess and the file its attempts go to.

    No library offline switch (``HF_HUB_OFFLINE``, ``WANDB_MODE``) is set: the toolkit's own
    defaults must keep everything local. Only threads are pinned (1) for the 2-core CI box.
    """
    env = dict(os.environ if base is None else base)
    site = sitecustomize_dir(tmp, repo_root)
    log = tmp / "network_attempts.log"
    log.write_text("")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(repo_root), env.get("PYTHONPATH", "")])
    env["DRIFTSCHED_NETLOG"] = str(log)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE"):
        env.pop(k, None)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env, log
