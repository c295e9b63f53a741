"""Client benchmark against a running OpenAI-compatible server: our policies vs vLLM's stock.

    python -m benchmarks.bench_http      # fifo, sjf, drift, vllm_fcfs, vllm_priority; 2 rounds
    python -m benchmarks.bench_http --n 80 --utilisation 1.2 --repeats 2 --out /tmp/bench-http

For each arm a fresh ``python -m scheduler.live.serve --policy <arm>`` server starts on
127.0.0.1 with the same vLLM settings (``--max-num-seqs``, ``--max-model-len``, eager, prefix
caching off); ``vllm_fcfs`` / ``vllm_priority`` are vLLM's stock scheduler (priority = tier
rank sent in the request's ``priority``). The head of the default workload (real prompts,
tenants, tiers; trace-driven output lengths: ``max_tokens`` = the true length,
``ignore_eos``) is replayed open loop over HTTP with streaming
(:func:`scheduler.live.http_client.run_http`) at ``--utilisation`` x the capacity an
in-process engine of the same settings measures (``VllmEngine.capacity_rps``), so every arm
sees the identical request sequence. Each arm's record table (TTFT/TPOT/E2E per request, the
shared schema) goes to ``--out``; the comparison table (``scheduler.metrics``) is printed as
Markdown: per arm the median over ``--repeats`` rounds (fresh servers; the arm order rotates
per round, so drifting background load does not always hit the same arm). Needs
``artifacts/`` (``python train.py``) for the learned policies.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report.tables import record_table


def _warm(url: str, n: int = 2) -> None:
    """A few tiny requests so the first measured one does not pay first-call costs."""
    for i in range(n):
        body = json.dumps(
            {
                "model": "tiny",
                "prompt": f"warm up {i}",
                "max_tokens": 4,
                "ignore_eos": True,
                "vllm_xargs": {"driftsched_request_id": f"warmup-{i}"},
            }
        )
        req = urllib.request.Request(
            url + "/v1/completions", body.encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()


COLS = [
    "e2e_mean", "e2e_p99", "ttft_mean", "ttft_p99", "premium_ttft_p99", "slo_attain",
    "max_wait", "preempt",
]  # fmt: skip


def _rows(summaries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One round's comparison rows (``scheduler.metrics.comparison_table`` + mean TPOT)."""
    from scheduler.metrics import comparison_table

    table = comparison_table(summaries, baseline="vllm_fcfs")
    out = {}
    for arm, r in table.iterrows():
        row = {"arm": arm, **{c: r[c] for c in COLS}}
        row["tpot_mean"] = summaries[arm]["latency"]["tpot_s"]["mean"]
        if "vs_vllm_fcfs" in table.columns:
            row["e2e_vs_stock_fcfs"] = r["vs_vllm_fcfs"]
        out[str(arm)] = row
    return out


@dataclass
class _Setup:
    """What every arm shares: the replayed workload and how to serve and score it."""

    wl: Any  # the workload's head, at the offered rate
    cap: float  # capacity (req/s) an in-process engine of the same settings measured
    slos: Any  # per-tier SLOs of the workload (scheduler.metrics.workload_slos)
    tok: Any  # the tiny model's tokenizer
    out: Path  # records, logs, the table
    server_args: list[str]  # vLLM settings every server starts with


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default="fifo,sjf,drift,vllm_fcfs,vllm_priority")
    ap.add_argument("--n", type=int, default=60, help="requests (the workload's head)")
    ap.add_argument("--utilisation", type=float, default=1.0, help="x measured capacity")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--predictor-dir", default="artifacts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="rounds (fresh servers each)")
    ap.add_argument("--out", default=None, help="directory for records and the table")
    return ap.parse_args(argv)


def _setup(a: argparse.Namespace) -> _Setup:
    """Draw the workload, measure capacity in process, set the rate; load the tokenizer."""
    from transformers import AutoTokenizer

    from data.presets import workload_from_config
    from report.fidelity import compose_config
    from scheduler.live.engine import VllmEngine
    from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model
    from scheduler.metrics import workload_slos

    cfg = compose_config("fifo", [f"seed={a.seed}"])
    wl = workload_from_config(cfg.workload, seed=a.seed).head(a.n)
    settings = dict(max_num_seqs=a.max_num_seqs, max_model_len=a.max_model_len, kv_cache_gib=1.0)
    cap = VllmEngine(progress=False, **settings).capacity_rps(wl)
    wl = wl.at_rate(a.utilisation * cap)
    slos = workload_slos(wl)
    model_dir = ensure_tiny_model(TinyModelSpec())
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench-http-"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "--model", "tiny", "--max-num-seqs", str(a.max_num_seqs),
        "--max-model-len", str(a.max_model_len), "--enforce-eager",
        "--distributed-executor-backend", "uni", "--seed", str(a.seed),
    ]  # fmt: skip
    return _Setup(wl, cap, slos, tok, out, args)


def _run_arm(a: argparse.Namespace, s: _Setup, arm: str, tag: str) -> tuple[Any, dict[str, Any]]:
    """One arm on a fresh server: (its record table, its server facts)."""
    from scheduler.live.http_client import ServerProcess, run_http

    stock = arm if arm.startswith("vllm_") else None
    t = time.monotonic()
    with ServerProcess(
        policy=arm,
        args=s.server_args,
        sink=None if stock else s.out / f"sink-{tag}",
        predictor_dir=a.predictor_dir,
        log=s.out / f"server-{tag}.log",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    ) as srv:
        start_s = time.monotonic() - t
        _warm(srv.url)
        run = run_http(
            srv.url,
            s.wl,
            model="tiny",
            tokenizer=s.tok,
            max_model_len=a.max_model_len,
            vocab_size=int(s.tok.vocab_size),
            sink=srv.sink,
            name=arm,
            stock=stock,
            seed=a.seed,
            timeout_s=900.0,
        )
    ss = run.meta["server_summary"]
    meta = {
        "server_start_s": round(start_s, 1),
        "wall_s": round(run.meta["wall_s"], 1),
        "policy_faults": ss.get("faults"),
        "decode_us_per_prompt": ss.get("decode_us_per_prompt"),
        "n_without_metadata": ss.get("n_without_metadata"),
    }
    return run.records, meta


def _round(
    a: argparse.Namespace, s: _Setup, arms: list[str], rnd: int, metas: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Every arm once (fresh servers); its comparison rows. Server facts go into ``metas``."""
    from scheduler.metrics import summarize

    # Rotate the order each round: on a shared machine the load drifts over minutes, and
    # a fixed order would hand one arm the same slot every time.
    order = arms[rnd % len(arms) :] + arms[: rnd % len(arms)]
    summaries: dict[str, Any] = {}
    for arm in order:
        tag = f"{arm}-r{rnd}"
        records, metas[tag] = _run_arm(a, s, arm, tag)
        records.to_parquet(s.out / f"records-{tag}.parquet")
        summaries[arm] = summarize(records, s.slos)
        print(f"{tag}: {metas[tag]}", flush=True)
    return _rows(summaries)


def _median_rows(arms: list[str], rounds: list[dict[str, dict[str, Any]]]) -> list[dict]:
    """Per arm, the median over rounds of each column."""
    import numpy as np

    rows = []
    for arm in arms:
        per = [r[arm] for r in rounds]
        row: dict[str, Any] = {"arm": arm}
        for c in per[0]:
            if c != "arm":
                row[c] = float(np.nanmedian([float(x[c]) for x in per]))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    a = _parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    s = _setup(a)
    arms = a.policies.split(",")
    rounds: list[dict[str, Any]] = []  # per round: arm -> its comparison row
    metas: dict[str, Any] = {}
    for rnd in range(a.repeats):
        rounds.append(_round(a, s, arms, rnd, metas))
        print(record_table(list(rounds[-1].values())), flush=True)
    md = record_table(_median_rows(arms, rounds))
    info = (
        f"{a.n} requests of the default workload at {a.utilisation} x capacity "
        f"({s.cap:.2f} req/s, {a.utilisation * s.cap:.2f} req/s), tiny model on CPU, "
        f"max_num_seqs={a.max_num_seqs}, seed {a.seed}; median of {a.repeats} round(s), "
        "arm order rotated per round"
    )
    print(info)
    print(md)
    (s.out / "table.md").write_text(info + "\n\n" + md + "\n")
    (s.out / "meta.json").write_text(
        json.dumps(
            {"arms": metas, "rounds": rounds, "capacity_rps": s.cap, "info": info},
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
