"""Request metadata: what a client tells the DriftSched scheduler about a request.

Two channels reach ``SamplingParams.extra_args`` in the engine core:

* **flat keys** (the public convention; the OpenAI server's ``vllm_xargs`` accepts flat
  string/number values only): ``driftsched_tenant``, ``driftsched_tier``,
  ``driftsched_slo_ttft_s``, ... (:data:`FLAT_FIELDS`). Only descriptive fields: nothing a
  remote client sends can choose the policy, the sink path or inject faults.
* **nested** ``extra_args["driftsched"] = {"run", "t0", "sink", "policy", "faults", "row"}``:
  the toolkit's own trusted control channel (in-process ``LLMEngine`` and ``AsyncLLM``
  clients, :mod:`scheduler.live.replay`); the HTTP server rejects it (not flat).

Fallbacks when no flat tier/tenant is given (documented in docs/LIVE.md, "Serving"): the
request's standard ``priority`` field gives the tier (:data:`PRIORITY_TIER`: below 0 premium,
0 (vLLM's default) standard, above 0 batch) and the OpenAI ``user`` field the tenant (the
front end never passes ``user`` on to the engine core, so :class:`DriftMetadataMiddleware`
copies it into ``driftsched_tenant``). The middleware also validates the flat keys, so a bad
value is an HTTP 400 naming the key, never a dead engine.

No vLLM import: the middleware is plain ASGI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from data.schema import TIERS

META_KEY = "driftsched"
"""Key of the nested metadata in ``SamplingParams.extra_args`` (and of ``additional_config``)."""
FLAT_PREFIX = "driftsched_"

# flat key suffix -> (type, meaning); every value is a flat string or number
FLAT_FIELDS: dict[str, tuple[type, str]] = {
    "request_id": (str, "label of the request in the sink's records (default: vLLM's id)"),
    "tenant": (str, "tenant (default: the request's `user`, else 'unknown')"),
    "tier": (str, f"one of {list(TIERS)} (default: from `priority`, else 'standard')"),
    "category": (str, "task category (a predictor feature; default 'unknown')"),
    "source": (str, "dataset/application label (default 'unknown')"),
    "slo_ttft_s": (float, "time-to-first-token target in seconds (> 0)"),
    "slo_tpot_s": (float, "time-per-output-token target in seconds (> 0)"),
    "arrival_s": (float, "the client's arrival time, s since its t0 (benchmarks)"),
}


def tier_of_priority(priority: int) -> str:
    """vLLM's ``priority`` (lower is served sooner, default 0) -> tier."""
    return "premium" if priority < 0 else "standard" if priority == 0 else "batch"


PRIORITY_TIER = {-1: "premium", 0: "standard", 1: "batch"}  # what clients send per tier
TIER_PRIORITY = {t: p for p, t in PRIORITY_TIER.items()}


def parse_flat(extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The flat ``driftsched_*`` keys of ``extra_args`` as a row dict (suffix -> value).

    Raises ``ValueError`` naming the key for an unknown ``driftsched_*`` key, a wrong type, an
    unknown tier or a non-positive SLO. Keys without the prefix are not ours and are ignored.
    """
    out: dict[str, Any] = {}
    for k, v in (extra_args or {}).items():
        if not isinstance(k, str) or not k.startswith(FLAT_PREFIX):
            continue
        name = k[len(FLAT_PREFIX) :]
        if name not in FLAT_FIELDS:
            raise ValueError(
                f"vllm_xargs key {k!r}: unknown DriftSched metadata key; expected some of "
                f"{sorted(FLAT_PREFIX + n for n in FLAT_FIELDS)}"
            )
        typ, meaning = FLAT_FIELDS[name]
        if typ is str:
            if not isinstance(v, str) or not v:
                raise ValueError(f"vllm_xargs {k!r}={v!r}: expected a non-empty string ({meaning})")
            if name == "tier" and v not in TIERS:
                raise ValueError(
                    f"vllm_xargs {k!r}={v!r}: unknown tier; expected one of {list(TIERS)}"
                )
        else:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"vllm_xargs {k!r}={v!r}: expected a finite number ({meaning})")
            v = float(v)
            if name.startswith("slo_") and v <= 0:
                raise ValueError(f"vllm_xargs {k!r}={v!r}: expected seconds > 0 ({meaning})")
        out[name] = v
    return out


def flat_xargs(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row dict (suffix -> value) as flat ``vllm_xargs`` keys (validated)."""
    out = {FLAT_PREFIX + k: v for k, v in row.items() if v is not None}
    parse_flat(out)
    return out


def request_meta(
    extra_args: Mapping[str, Any] | None, priority: Any = 0
) -> tuple[dict[str, Any] | None, str]:
    """The metadata of one request as the driver reads it, and where it came from.

    Returns ``(meta, source)``: the nested trusted form as sent (``source='nested'``); else a
    ``{"row": {...}}`` built from the flat keys (``'flat'``) with the ``priority`` fallback for
    the tier (``'priority'`` when only a non-default priority was given); else ``(None,
    'none')``. Raises ``ValueError`` (see :func:`parse_flat`) for bad flat keys.
    """
    nested = (extra_args or {}).get(META_KEY)
    if isinstance(nested, Mapping):
        return dict(nested), "nested"
    row = parse_flat(extra_args)
    source = "flat" if row else "none"
    if "tier" not in row and isinstance(priority, int) and priority != 0:
        row["tier"] = tier_of_priority(priority)
        source = source if row.keys() - {"tier"} else "priority"
    return ({"row": row} if row else None), source


# ------------------------------------------------------------------------------- HTTP side
_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


def rewrite_body(body: bytes) -> bytes | None:
    """Validate a completions request body's DriftSched metadata and apply the ``user`` ->
    ``driftsched_tenant`` fallback. Returns the new body (``None``: unchanged); raises
    ``ValueError`` with the message for the HTTP 400."""
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        return None  # not JSON: vLLM answers it
    if not isinstance(req, dict):
        return None
    xargs = req.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        return None  # vLLM's own validation answers it
    xargs = dict(xargs or {})
    parse_flat(xargs)
    prio = req.get("priority", 0)
    if prio is not None and not isinstance(prio, int):
        return None
    user = req.get("user")
    if FLAT_PREFIX + "tenant" in xargs or not isinstance(user, str) or not user:
        return None
    xargs[FLAT_PREFIX + "tenant"] = user
    req["vllm_xargs"] = xargs
    return json.dumps(req).encode()


class DriftMetadataMiddleware:
    """ASGI middleware for vLLM's OpenAI server (``--middleware``; ``scheduler.live.serve``
    adds it): bad DriftSched metadata -> HTTP 400 naming the key; ``user`` -> tenant."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if scope.get("path") not in _PATHS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the client left before sending its body
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            new = rewrite_body(body)
        except ValueError as e:
            await _send_400(send, str(e))
            return
        if new is not None:
            body = new
            scope = dict(scope)
            scope["headers"] = [
                (k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                for k, v in scope.get("headers", [])
            ]
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later reads see the client's disconnect (aborts)

        await self.app(scope, replay, send)


async def _send_400(send: Callable, message: str) -> None:
    payload = json.dumps(
        {
            "error": {
                "message": message,
                "type": "BadRequestError",
                "param": "vllm_xargs",
                "code": 400,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
