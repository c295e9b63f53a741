"""Multi-tenant workloads: who sends what, when.

A :class:`Workload` is a validated request table with sorted ``arrival_s`` plus the tenants
(tier, SLOs) that sent it. :func:`build_workload` composes one from a
:class:`data.workload_spec.WorkloadSpec`:

1. *Arrivals* (:mod:`data.arrivals`): Poisson, Gamma with a given CV, replay of a real trace's
   timestamps (Azure code/conv, Mooncake), or per-tenant ServeGen rate windows.
2. *Tenants* (:mod:`data.tenant_mix`): each request gets a tenant (drawn by ``weight``, or from
   its own ServeGen stream), and each tenant draws (prompt, true output length) rows from its
   ``mix`` of sources (optionally restricted to some models or categories).
3. *Lengths*: prompts longer than ``max_prompt_tokens`` are filtered out of the pools (with a
   FilterReport) and true outputs are capped at the request's ``max_tokens`` (the engine stops
   generating there, as a real server does), so one request always fits the KV cache of the
   default engine (a single 24 GB GPU: low tens of thousands of KV tokens).

Randomness: one ``numpy.random.Generator`` per stream, all spawned from ``SeedSequence(seed)``
in a fixed order (``STREAMS``), so the same seed yields an identical workload and adding a
stream later (append-only) does not change existing ones.

The default workload (:func:`default_spec`, rationale in data/README.md) is defined here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from data.arrivals import ArrivalSpec, arrival_cv
from data.schema import TIER_SLOS, validate_trace
from data.tenant_mix import assign_tenants, draw_requests
from data.workload_spec import MixItem, TenantSpec, WorkloadSpec

STREAMS: tuple[str, ...] = (
    "arrivals",
    "tenants",
    "sources",
    "rows",
    "samples",
    "buckets",
    "prompts",
)
"""Named random streams, spawned in this order from the workload seed (append only)."""


def spawn_streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent Generator per name in ``STREAMS``, derived from ``seed``."""
    if seed is None or int(seed) != seed or seed < 0:
        raise ValueError(f"workload seed {seed!r}: expected an integer >= 0")
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, children)}


@dataclass(frozen=True)
class Workload:
    """A request table with sorted arrivals, plus the tenants that produced it."""

    requests: pd.DataFrame  # validated with require_arrivals=True (data/schema.py)
    tenants: tuple[TenantSpec, ...]
    name: str
    seed: int
    arrival: str  # human-readable description of the arrival process
    reports: tuple[str, ...] = ()  # explicit filters/caps applied while building
    spec: WorkloadSpec | None = None

    def __post_init__(self) -> None:
        req = validate_trace(self.requests, where=f"workload {self.name!r}", require_arrivals=True)
        object.__setattr__(self, "requests", req)
        known = {t.name for t in self.tenants}
        unknown = sorted(set(req["tenant"].unique()) - known)
        if unknown:
            raise ValueError(
                f"workload {self.name!r}: requests name tenants {unknown} that are "
                f"not in tenants {sorted(known)}"
            )

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        a = self.requests["arrival_s"].to_numpy()
        return float(a[-1] - a[0]) if len(a) > 1 else 0.0

    @property
    def rate_rps(self) -> float:
        """Empirical mean rate: (n - 1) gaps over the span from first to last arrival."""
        d = self.duration_s
        return (len(self) - 1) / d if d > 0 else math.inf

    @property
    def cv(self) -> float:
        """Coefficient of variation of the inter-arrival gaps (1 for Poisson)."""
        return arrival_cv(self.requests["arrival_s"].to_numpy())

    def tenant(self, name: str) -> TenantSpec:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(
            f"workload {self.name!r} has no tenant {name!r}; "
            f"expected one of {[t.name for t in self.tenants]}"
        )

    def tenant_table(self) -> pd.DataFrame:
        """One row per tenant: tier, weight, SLOs and request count."""
        counts = self.requests["tenant"].value_counts()
        return pd.DataFrame(
            [
                {
                    "tenant": t.name,
                    "tier": t.tier,
                    "weight": t.weight,
                    "slo_ttft_s": t.slo_ttft_s,
                    "slo_e2e_s": t.slo_e2e_s,
                    "requests": int(counts.get(t.name, 0)),
                    "mix": ", ".join(f"{m.source}:{m.weight:g}" for m in t.mix),
                }
                for t in self.tenants
            ]
        )

    def at_rate(self, rate_rps: float) -> Workload:
        """The same requests with arrival times scaled so that ``rate_rps`` is the mean rate.

        Only the time axis stretches: order, tenants, lengths and the burstiness (CV) are
        unchanged, so two policies compared at one rate see the identical request sequence.
        """
        if not (rate_rps > 0 and math.isfinite(rate_rps)):
            raise ValueError(f"at_rate: rate_rps {rate_rps!r}: expected a finite rate > 0")
        if len(self) < 2 or self.duration_s == 0:
            raise ValueError("at_rate: need at least two distinct arrival times to rescale")
        req = self.requests.copy()
        req["arrival_s"] = req["arrival_s"].to_numpy() * (self.rate_rps / rate_rps)
        return replace(self, requests=req, arrival=f"{self.arrival} at {rate_rps:g} req/s")

    def at_utilisation(self, utilisation: float, capacity_rps: float) -> Workload:
        """``at_rate(utilisation * capacity_rps)``; the engine supplies ``capacity_rps``."""
        if not utilisation > 0:
            raise ValueError(f"utilisation {utilisation!r}: expected > 0")
        return self.at_rate(utilisation * capacity_rps)

    def distinct_prompts(self) -> int:
        """Number of distinct prompts (``data.holdout`` prompt keys) among the requests."""
        from data.holdout import prompt_keys

        return len(np.unique(prompt_keys(self.requests)))

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (for smoke tests)."""
        return replace(self, requests=self.requests.iloc[:n].reset_index(drop=True))


def build_workload(spec: WorkloadSpec, seed: int = 0) -> Workload:
    """Compose the workload ``spec`` describes; the same (spec, seed) gives identical output."""
    from data.holdout import resolve_seen

    rngs = spawn_streams(seed)
    reports: list[str] = []
    seen = resolve_seen(spec.unseen_by, reports)
    arrivals, owner = assign_tenants(spec, rngs)
    req = draw_requests(spec, owner, rngs, reports, seen)
    req = _finish_lengths(req, spec.sample_outputs, rngs["samples"], reports)
    req = _identify(req, spec.name, arrivals)
    w = Workload(
        requests=req,
        tenants=spec.tenants,
        name=spec.name,
        seed=int(seed),
        arrival=spec.arrival.describe(),
        reports=tuple(dict.fromkeys(reports)),
        spec=spec,
    )
    n = spec.n_requests
    return replace(
        w, reports=(*w.reports, f"{w.distinct_prompts():,} distinct prompts in {n:,} requests")
    )


def _identify(req: pd.DataFrame, name: str, arrivals: np.ndarray) -> pd.DataFrame:
    """Workload request ids (``<name>:<position>``), prompt ids and arrival times.

    The source's own id moves to ``source_request_id``; a row without a ``prompt_id`` is its
    own prompt.
    """
    req["source_request_id"] = req["request_id"]
    req["request_id"] = [f"{name}:{i:06d}" for i in range(len(req))]
    if "prompt_id" in req.columns:
        req["prompt_id"] = req["prompt_id"].fillna(req["source_request_id"])
    else:
        req["prompt_id"] = req["source_request_id"]
    req["arrival_s"] = arrivals
    return req


def _finish_lengths(
    req: pd.DataFrame, sample_outputs: bool, rng: np.random.Generator, reports: list[str]
) -> pd.DataFrame:
    """Pick each request's true length (a random sample where several exist), cap at max_tokens.

    ``output_tokens_uncapped`` keeps the drawn length; ``output_tokens`` is what the engine
    generates: min(drawn, max_tokens), since generation stops at max_tokens.
    """
    out = req["output_tokens"].to_numpy(dtype=np.int64).copy()
    if sample_outputs and "output_samples" in req.columns:
        samples = req["output_samples"].tolist()
        u = rng.random(len(req))  # one draw per request, used only where samples exist
        for i, s in enumerate(samples):
            if isinstance(s, tuple) and s:
                out[i] = s[int(u[i] * len(s))]
    cap = req["max_tokens"].to_numpy(dtype=np.int64)
    clipped = out > cap
    if clipped.any():
        reports.append(
            f"capped output_tokens at max_tokens for {int(clipped.sum()):,} of "
            f"{len(out):,} requests (output_tokens_uncapped keeps the drawn length)"
        )
    req["output_tokens_uncapped"] = out
    req["output_tokens"] = np.minimum(out, cap)
    return req


# --------------------------------------------------------------------------------------------
# the default multi-tenant workload (rationale: data/README.md, "Default workload")

DEFAULT_TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec(
        "chat",
        "premium",
        0.5,
        *TIER_SLOS["premium"],
        mix=(
            MixItem("sharegpt", 0.8),
            MixItem("alpaca_eval", 0.2, models=("Meta-Llama-3.1-8B-Instruct-Turbo",)),
        ),
    ),
    TenantSpec(
        "code",
        "standard",
        0.3,
        *TIER_SLOS["standard"],
        mix=(
            MixItem(
                "castillo", 1.0, models=("meta-llama--Llama-3.1-8B-Instruct",), categories=("code",)
            ),
        ),
    ),
    TenantSpec(
        "batch",
        "batch",
        0.2,
        *TIER_SLOS["batch"],
        mix=(
            MixItem(
                "castillo",
                0.5,
                models=("meta-llama--Llama-3.1-8B-Instruct",),
                categories=(
                    "instruction",
                    "creative_writing",
                    "brainstorming",
                    "general_qa",
                    "summarization",
                    "information_extraction",
                ),
            ),
            MixItem("vidur_arxiv", 0.5),
        ),
    ),
)


def default_spec(n_requests: int = 3000) -> WorkloadSpec:
    """The default shared-cluster workload: chat (premium), code (standard), batch (batch) on
    replayed Azure conversation arrivals."""
    return WorkloadSpec(
        name="default",
        tenants=DEFAULT_TENANTS,
        arrival=ArrivalSpec(kind="replay", trace="azure_conv"),
        n_requests=n_requests,
        unseen_by="artifacts",
    )


def default_workload(seed: int = 0, n_requests: int = 3000) -> Workload:
    return build_workload(default_spec(n_requests), seed)
