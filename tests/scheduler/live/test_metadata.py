"""Request metadata convention and the serve command line (pure: no vLLM engine runs)."""

from __future__ import annotations

import asyncio
import json
import math
from argparse import Namespace

import pytest

from scheduler.live.metadata import (
    DriftMetadataMiddleware,
    flat_xargs,
    parse_flat,
    request_meta,
    rewrite_body,
    tier_of_priority,
)


def test_parse_flat_reads_our_keys_and_ignores_others():
    row = parse_flat(
        {
            "driftsched_tenant": "acme",
            "driftsched_tier": "premium",
            "driftsched_slo_ttft_s": 2,
            "session_id": "x",  # not ours
        }
    )
    assert row == {"tenant": "acme", "tier": "premium", "slo_ttft_s": 2.0}
    assert parse_flat(None) == {} and parse_flat({}) == {}


@pytest.mark.parametrize(
    "xargs, match",
    [
        ({"driftsched_tier": "gold"}, "unknown tier 'gold'|'gold': unknown tier"),
        ({"driftsched_colour": "red"}, "unknown DriftSched metadata key"),
        ({"driftsched_tenant": 3}, "expected a non-empty string"),
        ({"driftsched_tenant": ""}, "expected a non-empty string"),
        ({"driftsched_slo_ttft_s": "fast"}, "expected a finite number"),
        ({"driftsched_slo_ttft_s": -1}, "expected seconds > 0"),
        ({"driftsched_slo_tpot_s": math.nan}, "expected a finite number"),
        ({"driftsched_slo_ttft_s": True}, "expected a finite number"),
    ],
)
def test_parse_flat_rejects_bad_values_naming_the_key(xargs, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_flat(xargs)
    assert next(iter(xargs)) in str(e.value)


def test_priority_fallback_and_sources():
    assert [tier_of_priority(p) for p in (-5, -1, 0, 1, 7)] == [
        "premium",
        "premium",
        "standard",
        "batch",
        "batch",
    ]
    assert request_meta(None, 0) == (None, "none")
    assert request_meta({}, -1) == ({"row": {"tier": "premium"}}, "priority")
    meta, src = request_meta({"driftsched_tenant": "a"}, 1)
    assert src == "flat" and meta == {"row": {"tenant": "a", "tier": "batch"}}
    meta, src = request_meta({"driftsched_tier": "standard"}, -1)  # explicit tier wins
    assert meta["row"]["tier"] == "standard"
    nested = {"driftsched": {"run": "r", "row": {"index": 3}}}
    assert request_meta(nested, 0) == ({"run": "r", "row": {"index": 3}}, "nested")


def test_flat_xargs_validates():
    assert flat_xargs({"tier": "batch", "tenant": None}) == {"driftsched_tier": "batch"}
    with pytest.raises(ValueError, match="unknown tier"):
        flat_xargs({"tier": "vip"})


def test_rewrite_body_maps_user_to_tenant_and_validates():
    out = rewrite_body(json.dumps({"prompt": "x", "user": "alice"}).encode())
    assert json.loads(out)["vllm_xargs"] == {"driftsched_tenant": "alice"}
    # an explicit tenant wins; no user; not JSON: unchanged
    body = {"prompt": "x", "user": "alice", "vllm_xargs": {"driftsched_tenant": "bob"}}
    assert rewrite_body(json.dumps(body).encode()) is None
    assert rewrite_body(b'{"prompt": "x"}') is None
    assert rewrite_body(b"not json") is None
    with pytest.raises(ValueError, match="unknown tier"):
        rewrite_body(b'{"prompt": "x", "vllm_xargs": {"driftsched_tier": "gold"}}')


def _call(mw, path: str, body: bytes, method: str = "POST") -> tuple[list[dict], list[bytes]]:
    """Run the middleware on one request; returns what was sent and the bodies the app read."""
    sent: list[dict] = []
    seen: list[bytes] = []

    async def app(scope, receive, send):
        msg = await receive()
        seen.append(msg["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [body[:5], body[5:]]

    async def receive():
        c = chunks.pop(0)
        return {"type": "http.request", "body": c, "more_body": bool(chunks)}

    async def send(msg):
        sent.append(msg)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-length", str(len(body)).encode())],
    }
    asyncio.run(DriftMetadataMiddleware(app)(scope, receive, send))
    return sent, seen


def test_middleware_answers_400_or_forwards_the_rewritten_body():
    sent, seen = _call(
        None, "/v1/completions", b'{"prompt":"x","vllm_xargs":{"driftsched_tier":"gold"}}'
    )
    assert sent[0]["status"] == 400 and not seen
    err = json.loads(sent[1]["body"])["error"]
    assert err["code"] == 400 and "driftsched_tier" in err["message"]
    sent, seen = _call(None, "/v1/chat/completions", b'{"messages":[],"user":"carol"}')
    assert sent[0]["status"] == 200
    assert json.loads(seen[0])["vllm_xargs"] == {"driftsched_tenant": "carol"}
    sent, seen = _call(None, "/v1/models", b'{"user":"carol"}')  # not a completions path
    assert seen == [b'{"use']  # passed through untouched, unread by the middleware


def test_serve_command(tmp_path):
    from scheduler.live.serve import build_command, policy_spec_for

    spec = policy_spec_for("sjf", str(tmp_path / "arts"))
    assert spec["_target_"] == "scheduler.policies.sjf.SJFPolicy"
    assert spec["predictor_dir"] == str((tmp_path / "arts").resolve())
    with pytest.raises(ValueError, match="expected one of"):
        policy_spec_for("nope", "artifacts")
    ns = Namespace(
        policy="fifo",
        predictor_dir="artifacts",
        sink=str(tmp_path / "s"),
        fallback=None,
        cache_dir=None,
    )
    cmd = build_command(ns, ["--model", str(tmp_path), "--port", "9"])
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--no-enable-prefix-caching" in cmd
    i = cmd.index("--additional-config")
    cfg = json.loads(cmd[i + 1])["driftsched"]
    assert cfg["policy"]["_target_"] == "scheduler.policies.fifo.FIFOPolicy"
    assert cmd[cmd.index("--scheduler-cls") + 1] == "scheduler.live.adapter.drift_scheduler"
    assert cmd[cmd.index("--scheduling-policy") + 1] == "priority"
    assert "scheduler.live.metadata.DriftMetadataMiddleware" in cmd
    # the user's prefix-caching choice is kept; flags we own are refused
    assert "--no-enable-prefix-caching" not in build_command(
        ns, ["--model", str(tmp_path), "--enable-prefix-caching"]
    )
    with pytest.raises(ValueError, match="--scheduler-cls"):
        build_command(ns, ["--model", str(tmp_path), "--scheduler-cls", "x.Y"])
    with pytest.raises(ValueError, match="no --model"):
        build_command(ns, ["--port", "9"])
    ns.policy = "vllm_priority"
    stock = build_command(ns, ["--model", str(tmp_path)])
    assert "--scheduler-cls" not in stock and "--additional-config" not in stock
    assert stock[stock.index("--scheduling-policy") + 1] == "priority"
