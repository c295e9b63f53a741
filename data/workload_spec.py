"""Workload specs: who the tenants are and what they send (the ``workload`` config group).

A :class:`WorkloadSpec` names its tenants (:class:`TenantSpec`: tier, SLOs, traffic share and
a ``mix`` of :class:`MixItem` sources), its arrival process (:class:`data.arrivals.ArrivalSpec`),
the request count, length caps and optional later :class:`PhaseSpec` phases. Specs check every
field when built; :meth:`WorkloadSpec.from_config` reads a ``conf/workload/*.yaml`` node and
:func:`spec_to_dict` writes one back. :func:`data.workload.build_workload` turns a spec into
requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from data.arrivals import ArrivalSpec, _arrival_from_dict
from data.config_checks import _check_fields, _to_container, check_number
from data.schema import TIER_SLOS, TIERS

DEFAULT_MAX_TOKENS = 2048
"""Default generation cap per request (tokens): with ``DEFAULT_MAX_PROMPT_TOKENS`` a request
needs at most 6,144 KV slots, well inside a 24 GB GPU's cache for an 8B model."""
DEFAULT_MAX_PROMPT_TOKENS = 4096


@dataclass(frozen=True)
class MixItem:
    """One source a tenant draws requests from."""

    source: str  # a name in data.loaders.SOURCES
    weight: float = 1.0  # relative share of the tenant's requests
    models: tuple[str, ...] | None = None  # keep only rows produced by these models
    categories: tuple[str, ...] | None = None  # keep only rows of these categories

    def __post_init__(self) -> None:
        check_number(f"mix item {self.source!r}: weight", self.weight, ge=0)


@dataclass(frozen=True)
class TenantSpec:
    """A tenant: its tier and SLOs, its share of traffic and where its requests come from."""

    name: str
    tier: str  # premium | standard | batch
    weight: float  # share of requests (normalised over tenants); ignored for ServeGen arrivals
    slo_ttft_s: float  # time-to-first-token objective (s)
    slo_e2e_s: float  # end-to-end latency objective (s)
    mix: tuple[MixItem, ...]  # sources to draw (prompt, true length) rows from
    max_tokens: int | None = None  # per-request generation cap; None: the workload's default

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(
                f"tenant {self.name!r}: unknown tier {self.tier!r}; expected one of {list(TIERS)}"
            )
        check_number(f"tenant {self.name!r}: weight", self.weight, ge=0)
        # an SLO may be inf (no objective) but never <= 0 or NaN
        check_number(f"tenant {self.name!r}: slo_ttft_s", self.slo_ttft_s, gt=0, finite=False)
        check_number(f"tenant {self.name!r}: slo_e2e_s", self.slo_e2e_s, gt=0, finite=False)
        check_number(
            f"tenant {self.name!r}: max_tokens", self.max_tokens, ge=1, integer=True, none_ok=True
        )
        if not self.mix:
            raise ValueError(f"tenant {self.name!r}: mix is empty; expected at least one source")
        if not sum(m.weight for m in self.mix) > 0:
            raise ValueError(
                f"tenant {self.name!r}: mix weights sum to 0; expected a positive total"
            )


@dataclass(frozen=True)
class PhaseSpec:
    """From request ``start`` (a fraction of ``n_requests`` in (0, 1)) on, tenants send with
    other weights and/or draw from other mixes (tenants not named keep theirs)."""

    start: float
    weights: Mapping[str, float] = field(default_factory=dict)  # tenant -> weight
    mix: Mapping[str, tuple[MixItem, ...]] = field(default_factory=dict)  # tenant -> sources

    def __post_init__(self) -> None:
        check_number("workload.phases.start", self.start, gt=0)
        if not self.start < 1:
            raise ValueError(
                f"workload.phases.start {self.start!r}: expected a fraction of the requests "
                "in (0, 1)"
            )
        for t, w in self.weights.items():
            check_number(f"workload.phases.weights.{t}", w, ge=0)
        for t, ms in self.mix.items():
            if not ms or not sum(m.weight for m in ms) > 0:
                raise ValueError(
                    f"workload.phases.mix.{t}: expected at least one source with weight > 0"
                )


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    tenants: tuple[TenantSpec, ...]
    arrival: ArrivalSpec = field(default_factory=ArrivalSpec)
    n_requests: int = 3000  # number of requests
    max_tokens: int = DEFAULT_MAX_TOKENS  # default per-request generation cap (tokens)
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS  # longer prompts are filtered out
    sample_outputs: bool = True  # where a source has several sampled lengths per prompt
    # (CASTILLO), the true length is one of them drawn at random, not always the first
    unseen_by: str | None = None  # draw only prompts this predictor never trained or validated
    # on: an artifact root (e.g. "artifacts"; the default data split where none is trained
    # yet), "data:<name>" (the split of conf/data/<name>.yaml) or None (no restriction);
    # see data.holdout
    phases: tuple[PhaseSpec, ...] = ()  # later phases of the run with other tenant weights or
    # mixes (a length mix that shifts mid-run); the first phase is the tenants as given

    def __post_init__(self) -> None:
        check_number("workload.n_requests", self.n_requests, ge=1, integer=True)
        if not self.tenants:
            raise ValueError("a workload needs at least one tenant")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError(f"tenant names must be unique, got {names}")
        if self.arrival.kind != "servegen" and sum(t.weight for t in self.tenants) <= 0:
            raise ValueError(
                f"tenant weights sum to 0 ({ {t.name: t.weight for t in self.tenants} }); "
                "expected a positive total"
            )
        starts = [p.start for p in self.phases]
        if starts != sorted(starts) or len(set(starts)) != len(starts):
            raise ValueError(f"workload.phases: starts {starts} must be strictly increasing")
        names_set = set(names)
        for p in self.phases:
            bad = sorted((set(p.weights) | set(p.mix)) - names_set)
            if bad:
                raise ValueError(
                    f"workload.phases (start {p.start:g}): unknown tenant(s) {bad}; expected "
                    f"names from {names}"
                )
        check_number("workload.max_tokens", self.max_tokens, ge=1, integer=True)
        check_number("workload.max_prompt_tokens", self.max_prompt_tokens, ge=1, integer=True)
        # every source is checked here, before any file is read (a typo fails in milliseconds)
        from data.loaders import SOURCES

        mixes = [(t.name, m) for t in self.tenants for m in t.mix]
        mixes += [(n, m) for p in self.phases for n, ms in p.mix.items() for m in ms]
        for tname, m in mixes:
            if m.source not in SOURCES:
                raise ValueError(
                    f"tenant {tname!r}: unknown source {m.source!r} in mix; expected one "
                    f"of {sorted(SOURCES)}"
                )

    @classmethod
    def from_config(cls, cfg: Any) -> WorkloadSpec:
        """Build from a Hydra/OmegaConf node or a plain dict (conf/workload/*.yaml).

        ``tenants`` may be a mapping name -> fields (overridable as
        ``workload.tenants.chat.weight=0.7``) or a list of dicts with a ``name``.
        """
        d = _to_container(cfg)
        d.pop("_target_", None)
        d.pop("preset", None)
        known = {
            "name",
            "tenants",
            "arrival",
            "n_requests",
            "max_tokens",
            "max_prompt_tokens",
            "sample_outputs",
            "unseen_by",
            "phases",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"workload config: unknown field(s) {unknown}; expected {sorted(known)}"
            )
        tenants_cfg = d.pop("tenants", None)
        if not tenants_cfg:
            raise ValueError("workload config: 'tenants' is missing or empty")
        if isinstance(tenants_cfg, Mapping):
            items = [{"name": k, **v} for k, v in tenants_cfg.items() if v is not None]
        else:
            items = list(tenants_cfg)
        tenants = tuple(_tenant_from_dict(t) for t in items)
        arrival = _arrival_from_dict(d.pop("arrival", {}) or {})
        phases = tuple(_phase_from_dict(p) for p in (d.pop("phases", None) or ()))
        return cls(tenants=tenants, arrival=arrival, phases=phases, **d)


def _tup(v: Any) -> tuple | None:
    return None if v is None else tuple(v)


def _tenant_from_dict(t: Mapping[str, Any]) -> TenantSpec:
    if not isinstance(t, Mapping):
        raise ValueError(f"workload tenant {t!r}: expected a mapping of tenant fields")
    t = dict(t)
    name = t.get("name", "?")
    _check_fields(f"tenant {name!r}", t, TenantSpec)
    tier = t.get("tier")
    slo_ttft, slo_e2e = TIER_SLOS.get(tier, (None, None)) if isinstance(tier, str) else (None, None)
    mix = _mix_from_config(t.pop("mix", None), f"tenant {name!r}")
    t.setdefault("slo_ttft_s", slo_ttft)
    t.setdefault("slo_e2e_s", slo_e2e)
    if t["slo_ttft_s"] is None or t["slo_e2e_s"] is None:
        raise ValueError(
            f"tenant {name!r}: set slo_ttft_s and slo_e2e_s (no default for tier {tier!r})"
        )
    return TenantSpec(mix=mix, **t)


def _mix_from_config(mix_cfg: Any, what: str) -> tuple[MixItem, ...]:
    if not mix_cfg:
        raise ValueError(f"{what}: 'mix' is missing or empty")
    if isinstance(mix_cfg, Mapping):  # {source: weight} shorthand
        return tuple(MixItem(source=s, weight=w) for s, w in mix_cfg.items())
    items = []
    for m in mix_cfg:
        if not isinstance(m, Mapping) or "source" not in m:
            raise ValueError(
                f"{what}: mix item {m!r}: expected a mapping with a 'source' "
                "(and optional weight, models, categories)"
            )
        _check_fields(f"{what}: mix item {m['source']!r}", m, MixItem)
        items.append(
            MixItem(
                source=m["source"],
                weight=m.get("weight", 1.0),
                models=_tup(m.get("models")),
                categories=_tup(m.get("categories")),
            )
        )
    return tuple(items)


def _phase_from_dict(p: Any) -> PhaseSpec:
    if not isinstance(p, Mapping) or "start" not in p:
        raise ValueError(
            f"workload.phases item {p!r}: expected a mapping with 'start' (a fraction of the "
            "requests) and optional 'weights' {tenant: w} and 'mix' {tenant: [sources]}"
        )
    _check_fields("workload.phases item", p, PhaseSpec)
    mixes = {
        str(t): _mix_from_config(m, f"workload.phases (start {p['start']}) tenant {t!r}")
        for t, m in (p.get("mix") or {}).items()
    }
    return PhaseSpec(start=p["start"], weights=dict(p.get("weights") or {}), mix=mixes)


def spec_to_dict(spec: WorkloadSpec) -> dict[str, Any]:
    """A plain dict (JSON/YAML-able) of a spec; ``WorkloadSpec.from_config`` reads it back."""
    d = asdict(spec)
    d["tenants"] = {t.pop("name"): t for t in d["tenants"]}
    for t in d["tenants"].values():
        t["mix"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.items()} for m in t["mix"]
        ]
    if d["arrival"]["servegen_clients"] is not None:
        d["arrival"]["servegen_clients"] = list(d["arrival"]["servegen_clients"])
    return d
