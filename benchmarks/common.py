"""Shared helpers: one-thread environment, whole-process measurement, machine facts, tables.

Every benchmark worker is a separate process run under ``/usr/bin/time -v`` (GNU time: wall
clock and peak resident set size, the public tool the issue asks for). Where GNU time is
missing (``apt-get install -y time``) the fallback is ``resource.getrusage(RUSAGE_CHILDREN)``:
the wall clock from ``time.perf_counter`` and the largest child peak RSS so far (exact for the
first worker, an upper bound for later ones; the report says which source was used).

A worker prints exactly one line ``BENCH_JSON {...}`` on stdout with its in-process figures.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GNU_TIME = "/usr/bin/time"
MARK = "BENCH_JSON "
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


class BenchError(RuntimeError):
    """A benchmark worker failed; the message carries its command and the tail of its output."""


def one_thread_env(threads: int = 1, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for workers: ``threads`` BLAS/OpenMP threads, repo on PYTHONPATH."""
    env = dict(os.environ)
    for k in THREAD_VARS:
        env[k] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["WANDB_MODE"] = "disabled"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def emit(result: dict[str, Any]) -> None:
    """Worker side: print the one result line."""
    print(MARK + json.dumps(result), flush=True)


def have_gnu_time() -> bool:
    if not Path(GNU_TIME).is_file():
        return False
    probe = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True)
    return "Maximum resident set size" in probe.stderr


_GNU_FIELDS = {
    "wall": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)"),
    "rss_kb": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "user": re.compile(r"User time \(seconds\): ([\d.]+)"),
    "sys": re.compile(r"System time \(seconds\): ([\d.]+)"),
}


def _clock(s: str) -> float:
    parts = [float(p) for p in s.split(":")]
    out = 0.0
    for p in parts:
        out = out * 60 + p
    return out


@dataclass
class Measured:
    """One worker process: whole-process figures plus the worker's own JSON."""

    wall_s: float  # whole process, start to exit
    peak_rss_mb: float  # peak resident set size of the process (MiB)
    cpu_s: float  # user + system CPU seconds
    source: str  # "gnu-time" | "getrusage"
    result: dict[str, Any] = field(default_factory=dict)


def run_measured(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout_s: float | None = None
) -> Measured:
    """Run ``cmd`` (a worker) under GNU time; parse its BENCH_JSON line and the resource use."""
    env = env if env is not None else one_thread_env()
    gnu = have_gnu_time()
    full = [GNU_TIME, "-v", *cmd] if gnu else list(cmd)
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            full, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(cmd)}: timed out after {timeout_s:.0f} s") from e
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-2500:]).strip()
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    result = json.loads(lines[-1][len(MARK) :])
    if gnu:
        f = {k: rx.search(proc.stderr) for k, rx in _GNU_FIELDS.items()}
        if all(f.values()):
            return Measured(
                wall_s=_clock(f["wall"].group(1)),
                peak_rss_mb=int(f["rss_kb"].group(1)) / 1024,
                cpu_s=float(f["user"].group(1)) + float(f["sys"].group(1)),
                source="gnu-time",
                result=result,
            )
    return Measured(
        wall_s=wall,
        peak_rss_mb=after.ru_maxrss / 1024,
        cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        source="getrusage",
        result=result,
    )


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if len(xs) else float("nan")


def machine_info() -> dict[str, Any]:
    """Facts for the report header (CPU model, cores, memory, versions, load)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(mem_gb, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "gnu_time": have_gnu_time(),
    }


def python_cmd(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def peers_python() -> Path | None:
    """The peers venv's interpreter (benchmarks/install_peers.sh), if installed."""
    venv = Path(os.environ.get("PEERS_VENV", ROOT / ".venv-peers"))
    py = venv / "bin" / "python"
    return py if py.is_file() else None


def which(name: str) -> str | None:
    return shutil.which(name)
