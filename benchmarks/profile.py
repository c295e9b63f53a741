"""Sampling profiles (py-spy) of the hot paths the targets point at; text summaries.

    python -m benchmarks.profile sim       # SimEngine.run, fifo, 10k-request trace
    python -m benchmarks.profile drift     # drift policy steps, 1,000 waiting + 256 running
    python -m benchmarks.profile wfq       # weighted_fair policy steps, same queue
    python -m benchmarks.profile lgbm      # LightGBM admission + re-prediction, batch 64

Needs ``py-spy`` (``pip install py-spy``; a dev tool, not a dependency). Each target runs in a
child process sampled at 1 kHz; the summary lists functions by inclusive and self share of the
samples (sampling shares are unbiased under CPU contention, unlike wall-clock timers); for the
policies, ``step_times``' own self share is the benchmark's untimed engine-progress loop and its
clock calls, not policy time. Written
to ``outputs/benchmarks/profiles/<target>.txt`` and printed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.common import ROOT, one_thread_env

OUT = ROOT / "outputs" / "benchmarks" / "profiles"

TARGETS = {
    "sim": """
import pandas as pd
from benchmarks.traces import sim_trace
from benchmarks.bench_sim import make_policy
from scheduler.sim.engine import SimEngine
df = pd.read_parquet(sim_trace(10_000))
SimEngine().run(df, make_policy("fifo", "artifacts"))
""",
    "drift": """
import pandas as pd
from benchmarks.traces import sim_trace
from benchmarks.bench_policy import step_times
from benchmarks.bench_sim import make_policy
from scheduler.engine import requests_from_frame
frame = pd.read_parquet(sim_trace(12_000))
pol = make_policy("drift", "artifacts")
pol.prepare(requests_from_frame(frame.iloc[: 1000 + 256 + 960]))  # featurise first (cached)
step_times(pol, frame, 1000, steps=960)
""",
    "wfq": """
import pandas as pd
from benchmarks.traces import sim_trace
from benchmarks.bench_policy import step_times
from benchmarks.bench_sim import make_policy
frame = pd.read_parquet(sim_trace(12_000))
step_times(make_policy("weighted_fair", "artifacts"), frame, 1000, steps=3000)
""",
    "lgbm": """
import numpy as np
from benchmarks.bench_predictor import _frame
from predictor.serving import frame_from_requests, load_predictor
from scheduler.engine import requests_from_frame
p = load_predictor("artifacts")
X = p.featurize(frame_from_requests(requests_from_frame(_frame(64))))
for _ in range(3000):
    a = p.predict_admission(X)
    p.predict_remaining(X, a, np.full(64, 64.0))
""",
}


FOCUS = {  # only samples inside these frames count (the harness around them is not the target)
    "sim": "SimEngine.run",
    "drift": "step_times",
    "wfq": "step_times",
    "lgbm": "ServingPredictor.predict",
}


def summarize(raw: str, focus: str = "", top: int = 25) -> str:
    """Inclusive and self shares per function from py-spy's collapsed ('raw') stacks, over the
    samples with a frame containing ``focus`` (frames above the first such frame dropped)."""
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        hit = next((i for i, f in enumerate(frames) if focus in f), None)
        if hit is None:
            continue
        frames = frames[hit:]
        k = int(n)
        total += k
        for f in set(frames):
            incl[f] += k
        self_[frames[-1]] += k
    if not total:
        return "(no samples)"
    lines = [f"{total} samples inside {focus!r}", "", "inclusive %  function"]
    lines += [f"{100 * v / total:10.1f}   {f}" for f, v in incl.most_common(top)]
    lines += ["", "self %       function"]
    lines += [f"{100 * v / total:10.1f}   {f}" for f, v in self_.most_common(top)]
    return "\n".join(lines)


def profile(target: str, rate: int = 1000) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy (a dev tool, not a dependency)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        subprocess.run(
            [
                spy,
                "record",
                "-r",
                str(rate),
                "-f",
                "raw",
                "-o",
                str(raw),
                "--",
                sys.executable,
                "-c",
                TARGETS[target],
            ],
            cwd=ROOT,
            env=one_thread_env(),
            check=True,
            capture_output=True,
        )
        text = summarize(raw.read_text(), FOCUS[target])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{target}.txt").write_text(text + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    for t in ap.parse_args().targets:
        print(f"== {t}\n{profile(t)}\n", flush=True)


if __name__ == "__main__":
    main()
