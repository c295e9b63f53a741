"""The DriftSched paper's workload (arXiv 2606.02982) as a preset.

What the paper did, and what we do:

* 4 categories with base token budgets (short_qa 64, summary 256, technical 384, report 512);
  the request's ``max_tokens`` is its category's budget.
* Prompts from 5 templates per category over 59 infrastructure/ML topics
  (``data.paper_templates``), template and topic uniform at random. Each prompt is prefixed
  ``"Request ID {i}. Tenant {tenant}. Job type {category}. "``; ``prefix=False`` drops the
  prefix, which leaks the category label to any text-based predictor.
* 3 tenants, one per tier, each request's tenant uniform at random.
* A learning phase of 1,000 requests with gaps U(0.05, 0.15) s and category mix
  40/25/25/10 (short_qa/summary/technical/report), then a stress phase of 2,000 requests with
  gaps U(0.005, 0.03) s and mix 10/20/40/30. Category counts are exact (e.g. 400/250/250/100),
  in random order; the ``phase`` column says which phase a request belongs to.
* True output lengths: the paper ran Qwen1.5-1.8B-Chat, which we cannot run. Each request's
  true length is one real sampled generation length from CASTILLO for a task of the matching
  type (``CASTILLO_MAPPING``), by default from the Qwen2.5 models (the nearest family in
  CASTILLO), capped at ``max_tokens`` as generation would be. ``output_tokens_uncapped`` keeps
  the drawn length and ``length_source_id`` the CASTILLO row it came from.
* ``prompt_tokens`` counts the prompt (with the prefix, if any) in cl100k tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data.config_checks import _check_fields, _to_container, check_number
from data.loaders import load_source
from data.paper_templates import BASE_BUDGET, CATEGORIES, PREFIX, TEMPLATES, TOPICS
from data.schema import TIER_SLOS
from data.tokens import count_tokens
from data.workload import Workload, spawn_streams
from data.workload_spec import MixItem, TenantSpec

# paper category -> CASTILLO categories whose real lengths stand in for it (data.loaders sets
# CASTILLO ``category`` to the Dolly task label, or "code"/"instruction"/"chat" by dataset)
CASTILLO_MAPPING: dict[str, tuple[str, ...]] = {
    # one-line factual answers: Dolly's short-answer tasks
    "short_qa": ("closed_qa", "classification", "information_extraction"),
    # a paragraph summarising a text
    "summary": ("summarization",),
    # step-by-step technical explanations with code: the code datasets (Apps, MBPP, DS-1000,
    # BigCodeBench)
    "technical": ("code",),
    # long-form reports: Dolly's open-ended long-form tasks
    "report": ("creative_writing", "brainstorming", "general_qa"),
}
QWEN_MODELS: tuple[str, ...] = (
    "Qwen--Qwen2.5-7B-Instruct-1M",
    "Qwen--Qwen2.5-14B-Instruct",
    "Qwen--Qwen2.5-32B-Instruct",
)

# tenant name -> tier, one tenant per tier as in the paper
PAPER_TENANTS: dict[str, str] = {"alpha": "premium", "beta": "standard", "gamma": "batch"}


@dataclass(frozen=True)
class Phase:
    name: str
    n_requests: int
    gap_s: tuple[float, float]  # inter-arrival gap ~ U(low, high) seconds
    mix: tuple[float, float, float, float]  # share of short_qa, summary, technical, report

    def __post_init__(self) -> None:
        # checked when the config is read, before CASTILLO is loaded
        what = f"workload.phases.{self.name}"
        check_number(f"{what}.n_requests", self.n_requests, ge=1, integer=True)
        if len(self.gap_s) != 2:
            raise ValueError(f"{what}.gap_s = {list(self.gap_s)}: expected [low, high] seconds")
        for g in self.gap_s:
            check_number(f"{what}.gap_s", g, ge=0)
        if not self.gap_s[0] <= self.gap_s[1]:
            raise ValueError(f"{what}.gap_s = {list(self.gap_s)}: expected low <= high")
        if len(self.mix) != len(CATEGORIES):
            raise ValueError(
                f"{what}.mix = {list(self.mix)}: expected {len(CATEGORIES)} shares, one per "
                f"category {list(CATEGORIES)}"
            )
        for m in self.mix:
            check_number(f"{what}.mix", m, ge=0)
        if not np.isclose(sum(self.mix), 1.0):
            raise ValueError(f"{what}.mix = {list(self.mix)}: expected shares summing to 1")


@dataclass(frozen=True)
class PaperSpec:
    """The paper's workload; defaults are the paper's numbers."""

    prefix: bool = True  # prepend "Request ID {i}. Tenant {t}. Job type {c}. " (leaks labels)
    phases: tuple[Phase, ...] = (
        Phase("learning", 1000, (0.05, 0.15), (0.40, 0.25, 0.25, 0.10)),
        Phase("stress", 2000, (0.005, 0.03), (0.10, 0.20, 0.40, 0.30)),
    )
    castillo_models: tuple[str, ...] | None = QWEN_MODELS  # None: all 13 CASTILLO models
    mapping: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(CASTILLO_MAPPING))
    name: str = "paper"

    @classmethod
    def from_config(cls, cfg: Any) -> PaperSpec:
        """From conf/workload/paper.yaml (an OmegaConf node) or a dict."""
        d = _to_container(cfg)
        d.pop("_target_", None)
        d.pop("preset", None)
        _check_fields("workload (preset: paper)", d, cls)
        if "phases" in d:
            items = (
                d["phases"].items()
                if isinstance(d["phases"], dict)
                else [(p.get("name", "?"), p) for p in d["phases"]]
            )
            phases = []
            for k, p in items:
                need = {"n_requests", "gap_s", "mix"}
                if not isinstance(p, dict) or not need <= set(p):
                    raise ValueError(
                        f"workload.phases.{k} = {p!r}: expected a mapping with {sorted(need)}"
                    )
                _check_fields(f"workload.phases.{k}", {**p, "name": k}, Phase)
                phases.append(
                    Phase(
                        name=k,
                        n_requests=p["n_requests"],
                        gap_s=tuple(p["gap_s"]),
                        mix=tuple(p["mix"]),
                    )
                )
            if not phases:
                raise ValueError("workload.phases is empty; expected at least one phase")
            d["phases"] = tuple(phases)
        if d.get("castillo_models") is not None:
            d["castillo_models"] = tuple(d["castillo_models"])
        if "mapping" in d:
            d["mapping"] = {k: tuple(v) for k, v in d["mapping"].items()}
        return cls(**d)


def paper_tenants() -> tuple[TenantSpec, ...]:
    return tuple(
        TenantSpec(
            name, tier, 1.0, *TIER_SLOS[tier], mix=(MixItem("paper", 1.0),)
        )  # prompts are generated, not drawn from a source
        for name, tier in PAPER_TENANTS.items()
    )


def _exact_counts(n: int, shares: tuple[float, ...]) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * shares`` (largest remainder)."""
    s = np.asarray(shares, dtype=np.float64)
    if (s < 0).any() or not np.isclose(s.sum(), 1.0):
        raise ValueError(f"category mix {shares}: expected shares >= 0 summing to 1")
    raw = n * s
    c = np.floor(raw).astype(np.int64)
    c[np.argsort(-(raw - c), kind="stable")[: n - c.sum()]] += 1
    return c


def _length_pools(spec: PaperSpec) -> dict[str, pd.DataFrame]:
    c = load_source("castillo")
    if spec.castillo_models is not None:
        c = c[c["model"].isin(spec.castillo_models)]
    pools = {}
    for cat in CATEGORIES:
        if cat not in spec.mapping:
            raise ValueError(f"paper mapping has no entry for category {cat!r}")
        p = c[c["category"].isin(spec.mapping[cat])].reset_index(drop=True)
        if p.empty:
            raise ValueError(
                f"paper: no CASTILLO rows of categories {spec.mapping[cat]} for "
                f"models {spec.castillo_models}"
            )
        pools[cat] = p
    return pools


def build_paper_workload(spec: PaperSpec, seed: int = 0) -> Workload:
    rngs = spawn_streams(seed)
    pools = _length_pools(spec)
    cats: list[np.ndarray] = []
    gaps: list[np.ndarray] = []
    phases: list[str] = []
    for ph in spec.phases:
        counts = _exact_counts(ph.n_requests, ph.mix)
        k = np.repeat(np.arange(len(CATEGORIES)), counts)
        cats.append(rngs["sources"].permutation(k))
        lo, hi = ph.gap_s
        if not 0 <= lo <= hi:
            raise ValueError(f"phase {ph.name!r}: gap_s {ph.gap_s}: expected 0 <= low <= high")
        gaps.append(rngs["arrivals"].uniform(lo, hi, size=ph.n_requests))
        phases += [ph.name] * ph.n_requests
    cat_idx = np.concatenate(cats)
    n = len(cat_idx)
    gap = np.concatenate(gaps)
    # the first request arrives at 0; request i arrives after the gaps of requests 1..i
    arrival = np.concatenate([[0.0], np.cumsum(gap[1:])])
    tenant_names = list(PAPER_TENANTS)
    ten_idx = rngs["tenants"].integers(0, len(tenant_names), size=n)
    tmpl_idx = rngs["prompts"].integers(0, 5, size=n)
    topic_idx = rngs["prompts"].integers(0, len(TOPICS), size=n)
    u_row = rngs["rows"].random(n)
    u_sample = rngs["samples"].random(n)

    rows = []
    for i in range(n):
        cat = CATEGORIES[cat_idx[i]]
        tenant = tenant_names[ten_idx[i]]
        body = TEMPLATES[cat][tmpl_idx[i]].format(topic=TOPICS[topic_idx[i]])
        prompt = (PREFIX.format(i=i, tenant=tenant, category=cat) if spec.prefix else "") + body
        pool = pools[cat]
        r = int(u_row[i] * len(pool))
        samples = pool["output_samples"].iat[r]
        drawn = int(samples[int(u_sample[i] * len(samples))])
        budget = BASE_BUDGET[cat]
        rows.append(
            {
                "request_id": f"{spec.name}:{i:06d}",
                "prompt_id": f"paper:{cat}:{tmpl_idx[i]}:{topic_idx[i]}",
                "tenant": tenant,
                "tier": PAPER_TENANTS[tenant],
                "category": cat,
                "source": "paper",
                "model": pool["model"].iat[r],
                "prompt": prompt,
                "output_tokens": min(drawn, budget),
                "max_tokens": budget,
                "phase": phases[i],
                "output_tokens_uncapped": drawn,
                "length_source_id": pool["request_id"].iat[r],
                "slo_ttft_s": TIER_SLOS[PAPER_TENANTS[tenant]][0],
                "slo_e2e_s": TIER_SLOS[PAPER_TENANTS[tenant]][1],
            }
        )
    req = pd.DataFrame(rows)
    req["arrival_s"] = arrival
    req["prompt_tokens"] = count_tokens(req["prompt"].tolist())
    desc = "; ".join(
        f"{p.name}: {p.n_requests} x U({p.gap_s[0]:g}, {p.gap_s[1]:g}) s gaps" for p in spec.phases
    )
    clipped = int((req["output_tokens_uncapped"] > req["max_tokens"]).sum())
    reports = (f"capped output_tokens at the category budget for {clipped:,} of {n:,} requests",)
    return Workload(
        requests=req,
        tenants=paper_tenants(),
        name=spec.name,
        seed=int(seed),
        arrival=f"paper ({desc})",
        reports=reports,
        spec=None,
    )


def paper_workload(seed: int = 0, prefix: bool = True, **overrides: Any) -> Workload:
    """The paper's workload (3,000 requests in two phases); ``overrides`` set PaperSpec fields."""
    return build_paper_workload(PaperSpec(prefix=prefix, **overrides), seed)
