"""Multi-tenant workloads: who sends what, when.

A :class:`Workload` is a validated request table with sorted ``arrival_s`` plus the tenants
(tier, SLOs) that sent it. :func:`build_workload` composes one from a :class:`WorkloadSpec`:

1. *Arrivals* (``ArrivalSpec``): Poisson, Gamma with a given CV, replay of a real trace's
   timestamps (Azure code/conv, Mooncake), or per-tenant ServeGen rate windows.
2. *Tenants*: each request gets a tenant (drawn by ``weight``, or from its own ServeGen
   stream), and each tenant draws (prompt, true output length) rows from its ``mix`` of
   sources (optionally restricted to some models or categories).
3. *Lengths*: prompts longer than ``max_prompt_tokens`` are filtered out of the pools (with a
   FilterReport) and true outputs are capped at the request's ``max_tokens`` (the engine stops
   generating there, as a real server does), so one request always fits the KV cache of the
   default engine (a single 24 GB GPU: low tens of thousands of KV tokens).

Randomness: one ``numpy.random.Generator`` per stream, all spawned from ``SeedSequence(seed)``
in a fixed order (``STREAMS``), so the same seed yields an identical workload and adding a
stream later (append-only) does not change existing ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from data.loaders import load_source
from data.loaders.servegen import WINDOW_S, load_servegen_windows, top_clients
from data.schema import TIER_SLOS, TIERS, filter_rows, validate_trace

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

ARRIVAL_KINDS = ("poisson", "gamma", "replay", "servegen")
REPLAY_TRACES = (
    "azure_code",
    "azure_conv",
    "mooncake_conversation",
    "mooncake_synthetic",
    "burstgpt",
)
MOONCAKE_BUCKET_S = 3.0
"""The Mooncake conversation trace's timestamps are 3 s buckets (see ``replay_arrivals``)."""

DEFAULT_MAX_TOKENS = 2048
"""Default generation cap per request (tokens): with ``DEFAULT_MAX_PROMPT_TOKENS`` a request
needs at most 6,144 KV slots, well inside a 24 GB GPU's cache for an 8B model."""
DEFAULT_MAX_PROMPT_TOKENS = 4096


def check_number(
    what: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    integer: bool = False,
    none_ok: bool = False,
    finite: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``value`` is a number in range.

    Config values arrive from YAML and command-line overrides, so a string ("fast"), a bool,
    NaN or inf must fail here, when the spec is built, not deep inside numpy minutes later.
    """
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a number"
    bounds = f" > {gt:g}" if gt is not None else (f" >= {ge:g}" if ge is not None else "")
    expected = f"expected {kind}{bounds}" + (" or null" if none_ok else "")
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok and integer and not isinstance(value, int | np.integer):
        ok = False  # 2.0 too: a float size would fail later inside numpy
    if ok and math.isnan(value):
        ok = False
    if ok and finite and math.isinf(value):
        ok = False
    if ok and gt is not None and not value > gt:
        ok = False
    if ok and ge is not None and not value >= ge:
        ok = False
    if not ok:
        raise ValueError(f"{what} = {value!r}: {expected}")


def _check_fields(what: str, given: Mapping[str, Any], cls: type) -> None:
    """Unknown keys in a config mapping: a ValueError listing the valid ones (not TypeError)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; expected some of {sorted(known)}")


def spawn_streams(seed: int) -> dict[str, np.random.Generator]:
    """One independent Generator per name in ``STREAMS``, derived from ``seed``."""
    if seed is None or int(seed) != seed or seed < 0:
        raise ValueError(f"workload seed {seed!r}: expected an integer >= 0")
    children = np.random.SeedSequence(int(seed)).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, children)}


# --------------------------------------------------------------------------------------------
# specs


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
class ArrivalSpec:
    """How arrival times are generated."""

    kind: str = "poisson"  # poisson | gamma | replay | servegen
    rate_rps: float | None = None  # mean rate (req/s); required for poisson/gamma, optional
    # rescale for replay/servegen (None: keep the trace's own rate)
    cv: float = 1.0  # gamma: coefficient of variation of the gaps (1 = Poisson, > 1 bursty)
    trace: str = "azure_conv"  # replay: which trace's timestamps to replay
    start_s: float = 0.0  # replay/servegen: offset into the trace (s) where the replay starts
    servegen_model: str = "m-large"  # servegen: which ServeGen workload's clients to use
    servegen_clients: tuple[int, ...] | None = None  # servegen: one client per tenant, in
    # tenant order; None: the busiest clients of that workload
    window_s: float = WINDOW_S  # servegen: wall-clock length of one published 600 s window
    # (smaller compresses a day of rate changes into a short run; rates scale by 600/window_s)
    rate_scale: float = 1.0  # servegen: multiplies every published client rate (< 1 thins the
    # traffic so that a few thousand requests span many windows of the rate profile)

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(
                f"unknown arrival kind {self.kind!r}; expected one of {list(ARRIVAL_KINDS)}"
            )
        if self.kind in ("poisson", "gamma") and self.rate_rps is None:
            raise ValueError(
                f"{self.kind} arrivals need rate_rps > 0 (workload.arrival.rate_rps, requests per second)"
            )
        check_number("workload.arrival.rate_rps", self.rate_rps, gt=0, none_ok=True)
        check_number("workload.arrival.cv", self.cv, gt=0)
        if self.kind == "replay" and self.trace not in REPLAY_TRACES:
            raise ValueError(f"replay trace {self.trace!r}: expected one of {list(REPLAY_TRACES)}")
        check_number("workload.arrival.start_s", self.start_s, ge=0)
        check_number("workload.arrival.window_s", self.window_s, gt=0)
        check_number("workload.arrival.rate_scale", self.rate_scale, gt=0)
        if self.kind == "servegen":
            from data.loaders.servegen import SERVEGEN_MODELS

            if self.servegen_model not in SERVEGEN_MODELS:
                raise ValueError(
                    f"workload.arrival.servegen_model {self.servegen_model!r}: expected one of "
                    f"{list(SERVEGEN_MODELS)}"
                )

    def describe(self) -> str:
        if self.kind == "poisson":
            return f"poisson({self.rate_rps:g} req/s)"
        if self.kind == "gamma":
            return f"gamma({self.rate_rps:g} req/s, cv={self.cv:g})"
        rate = f", rescaled to {self.rate_rps:g} req/s" if self.rate_rps else ""
        if self.kind == "replay":
            return f"replay({self.trace} from {self.start_s:g} s{rate})"
        return (
            f"servegen({self.servegen_model}, clients={self.servegen_clients}, "
            f"window={self.window_s:g} s, rate x{self.rate_scale:g}{rate})"
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


def _to_container(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


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


def _arrival_from_dict(a: Mapping[str, Any]) -> ArrivalSpec:
    if not isinstance(a, Mapping):
        raise ValueError(f"workload.arrival {a!r}: expected a mapping (kind, rate_rps, ...)")
    a = dict(a)
    _check_fields("workload.arrival", a, ArrivalSpec)
    if a.get("kind", "poisson") not in ARRIVAL_KINDS:
        raise ValueError(
            f"unknown arrival kind {a.get('kind')!r}; expected one of {list(ARRIVAL_KINDS)}"
        )
    if a.get("servegen_clients") is not None:
        a["servegen_clients"] = tuple(int(c) for c in a["servegen_clients"])
    return ArrivalSpec(**a)


# --------------------------------------------------------------------------------------------
# arrival processes (pure: rng in, sorted times out)


def poisson_arrivals(n: int, rate_rps: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` Poisson arrival times (s), shape (n,): exponential gaps of mean 1/rate."""
    return np.cumsum(rng.exponential(1.0 / rate_rps, size=n))


def gamma_arrivals(n: int, rate_rps: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` renewal arrivals with Gamma gaps of mean 1/rate and coefficient of variation ``cv``.

    Gamma(shape k, scale θ) has mean kθ and CV 1/sqrt(k): k = 1/cv², θ = cv²/rate.
    """
    k = 1.0 / cv**2
    return np.cumsum(rng.gamma(k, cv**2 / rate_rps, size=n))


def trace_times(trace: str, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of a shipped trace, sorted, shape (rows,).

    The Mooncake conversation trace publishes 3 s buckets (timestamps are multiples of 3,000 ms
    up to a few ms of jitter). A replay that kept them would send ~10 requests in the same
    instant every 3 s, a burst the real service never saw. We spread each request uniformly at
    random within its bucket, ``bucket * 3 + U(0, 3)`` s, with the workload's ``buckets`` stream,
    and sort; bucket counts (the published information) are preserved exactly.
    """
    t = load_source(trace)["arrival_s"].to_numpy(dtype=np.float64)
    if trace == "mooncake_conversation":
        bucket = np.round(t / MOONCAKE_BUCKET_S)
        t = np.sort(bucket * MOONCAKE_BUCKET_S + rng.uniform(0.0, MOONCAKE_BUCKET_S, len(t)))
    return t


def replay_arrivals(n: int, times: np.ndarray, start_s: float = 0.0) -> np.ndarray:
    """The first ``n`` arrivals of a trace at or after ``start_s``, shifted to start at 0.

    If the trace runs out, it is tiled: repeated back to back, each copy shifted by the trace
    span plus one mean gap (so the seam looks like an ordinary gap).
    """
    t = np.sort(np.asarray(times, dtype=np.float64))
    t = t[t >= start_s] - start_s
    if len(t) < 2:
        raise ValueError(f"replay: fewer than 2 arrivals after start_s={start_s} s")
    period = (t[-1] - t[0]) + (t[-1] - t[0]) / (len(t) - 1)
    reps = -(-n // len(t))
    tiled = np.concatenate([t + r * period for r in range(reps)])[:n]
    return tiled - tiled[0]


def servegen_arrivals(
    n: int,
    model: str,
    clients: Sequence[int],
    window_s: float,
    start_s: float,
    rng: np.random.Generator,
    rate_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Merged arrivals of several ServeGen clients: (times s (n,), client position (n,)).

    Each client follows its published piecewise-constant rate: inside each 600 s window (played
    in ``window_s`` wall seconds, rate scaled by 600/window_s) gaps are Gamma with that window's
    rate and CV (ServeGen fits Gamma or Weibull per window; we keep its rate and burstiness).
    The renewal process restarts at each window boundary. Windows absent from the file have rate
    0. ``rate_scale`` multiplies every published rate. Windows are generated in time order until ``n`` arrivals exist; if the clients' traces
    end first, the rate profile repeats.
    """
    scale = window_s / WINDOW_S
    frames = []
    for pos, c in enumerate(clients):
        w = load_servegen_windows(model, [c])
        if w.empty:
            raise ValueError(f"ServeGen model {model!r} has no client {c}")
        frames.append(w.assign(pos=pos))
    win = pd.concat(frames, ignore_index=True).sort_values(["window_start_s", "pos"])
    horizon = float(win["window_start_s"].max()) + WINDOW_S
    ws_all = win["window_start_s"].to_numpy(dtype=np.float64)
    rate_all = win["rate_rps"].to_numpy(dtype=np.float64)
    cv_all = np.maximum(win["cv"].to_numpy(dtype=np.float64), 1e-3)
    pos_all = win["pos"].to_numpy(dtype=np.int64)
    times: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    total = 0
    for cycle in range(1000):
        first = ws_all >= start_s if cycle == 0 else np.ones(len(ws_all), dtype=bool)
        # windows in time order; stop after the window in which the n-th arrival fell
        for ws in np.unique(ws_all[first]):
            for i in np.flatnonzero(first & (ws_all == ws)):
                r = rate_all[i] * rate_scale / scale  # req/s in wall time
                t0 = (cycle * horizon + ws - start_s) * scale
                k = 1.0 / cv_all[i] ** 2
                t = _gamma_until(t0, t0 + window_s, r, k, n, rng)
                times.append(t)
                owner.append(np.full(len(t), pos_all[i], dtype=np.int64))
                total += len(t)
            if total >= n:
                break
        if total >= n:
            break
    else:
        raise ValueError("servegen arrivals: the selected clients produce too few requests")
    all_t = np.concatenate(times)
    all_o = np.concatenate(owner)
    order = np.argsort(all_t, kind="stable")[:n]
    t = all_t[order]
    return t - t[0], all_o[order]


def _gamma_until(
    t0: float, t1: float, rate: float, shape: float, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """Renewal arrivals in [t0, t1) with Gamma(shape, 1/(rate*shape)) gaps, at most ``limit``."""
    out: list[np.ndarray] = []
    t, count = t0, 0
    while t < t1 and count < limit:
        m = min(limit - count, int(rate * (t1 - t) * 1.2) + 16)
        pts = t + np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), size=m))
        t = float(pts[-1])
        pts = pts[pts < t1]
        out.append(pts)
        count += len(pts)
    return np.concatenate(out)[:limit] if out else np.zeros(0)


# --------------------------------------------------------------------------------------------
# workload


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


def arrival_cv(arrivals: np.ndarray) -> float:
    """CV (std / mean) of the gaps between sorted arrival times; NaN if fewer than 3."""
    gaps = np.diff(np.asarray(arrivals, dtype=np.float64))
    if len(gaps) < 2 or gaps.mean() <= 0:
        return math.nan
    return float(gaps.std() / gaps.mean())


def _pool(
    item: MixItem,
    max_prompt_tokens: int,
    reports: list[str],
    seen: Any = None,
    unseen_by: Any = None,
) -> pd.DataFrame:
    df = load_source(item.source)
    if item.models is not None:
        keep = df["model"].isin(item.models).to_numpy()
        if not keep.any():
            raise ValueError(
                f"mix item {item.source!r}: none of models {list(item.models)} "
                f"in the source; known: {sorted(df['model'].unique())[:30]}"
            )
        df, rep = filter_rows(df, keep, f"{item.source}: models {list(item.models)}")
        reports.append(str(rep))
    if item.categories is not None:
        keep = df["category"].isin(item.categories).to_numpy()
        if not keep.any():
            raise ValueError(
                f"mix item {item.source!r}: none of categories "
                f"{list(item.categories)}; known: {sorted(df['category'].unique())}"
            )
        df, rep = filter_rows(df, keep, f"{item.source}: categories {list(item.categories)}")
        reports.append(str(rep))
    df, rep = filter_rows(
        df,
        (df["prompt_tokens"] <= max_prompt_tokens).to_numpy(),
        f"{item.source}: prompt_tokens <= max_prompt_tokens={max_prompt_tokens}",
    )
    if rep.removed:
        reports.append(str(rep))
    if seen is not None and not df.empty:
        from data.holdout import seen_filter_reason

        keep, why = seen_filter_reason(
            seen,
            df,
            f"{item.source}: prompts the predictor never trained or validated on "
            f"(unseen_by={unseen_by})",
        )
        df, rep = filter_rows(df, keep, why)
        reports.append(str(rep))
    if df.empty:
        raise ValueError(f"mix item {item.source!r}: no rows left after filtering ({rep})")
    return df


def _phase_bounds(spec: WorkloadSpec) -> list[tuple[int, int, PhaseSpec | None]]:
    """(first request, end, phase) of each phase; the first phase (None) is the base tenants."""
    n = spec.n_requests
    cuts = [0, *(math.floor(p.start * n) for p in spec.phases), n]
    phases: list[PhaseSpec | None] = [None, *spec.phases]
    return [(cuts[i], cuts[i + 1], phases[i]) for i in range(len(phases))]


def _phase_weights(spec: WorkloadSpec, phase: PhaseSpec | None) -> np.ndarray:
    """Tenant weights in force during ``phase``: a phase inherits what it does not set."""
    w = {t.name: t.weight for t in spec.tenants}
    for p in spec.phases if phase is not None else ():
        w.update(p.weights)
        if p is phase:
            break
    return np.array([w[t.name] for t in spec.tenants], dtype=np.float64)


def _phase_mix(spec: WorkloadSpec, tenant: TenantSpec, phase: PhaseSpec | None) -> tuple:
    mix = tenant.mix
    if phase is None:
        return mix
    for p in spec.phases:
        mix = p.mix.get(tenant.name, mix)
        if p is phase:
            break
    return mix


def _tenant_assignment(
    spec: WorkloadSpec, rngs: dict[str, np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times (n,), tenant position (n,)) according to the arrival process."""
    a, n = spec.arrival, spec.n_requests
    if a.kind == "servegen":
        if spec.phases and any(p.weights for p in spec.phases):
            raise ValueError(
                "workload.phases: weights do not apply to servegen arrivals (each tenant is "
                "its own ServeGen client stream); change mixes only"
            )
        clients = (
            list(a.servegen_clients)
            if a.servegen_clients is not None
            else top_clients(a.servegen_model, len(spec.tenants))
        )
        if len(clients) != len(spec.tenants):
            raise ValueError(
                f"servegen arrivals: {len(clients)} clients for "
                f"{len(spec.tenants)} tenants; expected one client per tenant"
            )
        t, owner = servegen_arrivals(
            n, a.servegen_model, clients, a.window_s, a.start_s, rngs["arrivals"], a.rate_scale
        )
    else:
        t = process_arrivals(a, n, rngs)
        parts = []
        for lo, hi, phase in _phase_bounds(spec):
            w = _phase_weights(spec, phase)
            if not w.sum() > 0:
                raise ValueError(f"workload.phases: tenant weights sum to 0 from request {lo}")
            parts.append(rngs["tenants"].choice(len(w), size=hi - lo, p=w / w.sum()))
        owner = np.concatenate(parts)
    if a.kind in ("replay", "servegen") and a.rate_rps is not None and n > 1 and t[-1] > t[0]:
        t = t * (((n - 1) / (t[-1] - t[0])) / a.rate_rps)
    return t, owner


def process_arrivals(a: ArrivalSpec, n: int, rngs: dict[str, np.random.Generator]) -> np.ndarray:
    """``n`` sorted arrival times (s) of a poisson, gamma or replay arrival spec."""
    if a.kind == "poisson":
        return poisson_arrivals(n, a.rate_rps, rngs["arrivals"])  # type: ignore[arg-type]
    if a.kind == "gamma":
        return gamma_arrivals(n, a.rate_rps, a.cv, rngs["arrivals"])  # type: ignore[arg-type]
    if a.kind == "replay":
        return replay_arrivals(n, trace_times(a.trace, rngs["buckets"]), a.start_s)
    raise ValueError(
        f"arrival kind {a.kind!r}: expected poisson, gamma or replay here (servegen arrivals "
        "come with their own tenant streams)"
    )


def _draw_rows(n_pool: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` row positions of a pool of ``n_pool``: without replacement while the pool lasts;
    beyond it whole shuffled passes over the pool, so every row is used ``k // n_pool`` or
    one more times (as few repeats as possible, never a few rows many times)."""
    if k <= n_pool:
        return rng.choice(n_pool, size=k, replace=False)
    reps = [rng.permutation(n_pool) for _ in range(-(-k // n_pool))]
    return np.concatenate(reps)[:k]


def build_workload(spec: WorkloadSpec, seed: int = 0) -> Workload:
    """Compose the workload ``spec`` describes; the same (spec, seed) gives identical output."""
    from data.holdout import resolve_seen

    rngs = spawn_streams(seed)
    reports: list[str] = []
    seen = resolve_seen(spec.unseen_by, reports)
    arrivals, owner = _tenant_assignment(spec, rngs)
    n = spec.n_requests
    pools: dict[MixItem, pd.DataFrame] = {}
    bounds = _phase_bounds(spec)
    parts: list[pd.DataFrame] = []
    for pos, ten in enumerate(spec.tenants):
        for lo, hi, phase in bounds:
            idx = lo + np.flatnonzero(owner[lo:hi] == pos)  # this tenant's positions, sorted
            if len(idx) == 0:
                continue
            mix = _phase_mix(spec, ten, phase)
            mw = np.array([m.weight for m in mix], dtype=np.float64)
            if not mw.sum() > 0:
                raise ValueError(f"tenant {ten.name!r}: mix weights sum to 0")
            pick = rngs["sources"].choice(len(mw), size=len(idx), p=mw / mw.sum())
            for j, item in enumerate(mix):
                sel = idx[pick == j]
                if len(sel) == 0:
                    continue
                if item not in pools:
                    pools[item] = _pool(item, spec.max_prompt_tokens, reports, seen, spec.unseen_by)
                pool = pools[item]
                k = len(sel)
                rows = _draw_rows(len(pool), k, rngs["rows"])
                if k > len(pool):
                    reports.append(
                        f"{ten.name}/{item.source}: drew {k} requests from a pool of "
                        f"{len(pool)} rows (each row at most {-(-k // len(pool))} times)"
                    )
                got = pool.iloc[rows].reset_index(drop=True)
                got["_pos"] = sel
                got["tenant"] = ten.name
                got["tier"] = ten.tier
                got["max_tokens"] = ten.max_tokens or spec.max_tokens
                got["slo_ttft_s"] = ten.slo_ttft_s
                got["slo_e2e_s"] = ten.slo_e2e_s
                parts.append(got)
    req = pd.concat(parts, ignore_index=True).sort_values("_pos", kind="stable")
    req = req.reset_index(drop=True)
    if len(req) != n:  # every position was assigned exactly once above
        raise AssertionError(f"built {len(req)} requests, expected {n}")
    req = _finish_lengths(req, spec.sample_outputs, rngs["samples"], reports)
    req["source_request_id"] = req["request_id"]
    req["request_id"] = [f"{spec.name}:{i:06d}" for i in range(n)]
    if "prompt_id" in req.columns:
        req["prompt_id"] = req["prompt_id"].fillna(req["source_request_id"])
    else:
        req["prompt_id"] = req["source_request_id"]
    req["arrival_s"] = arrivals
    req = req.drop(columns=["_pos"])
    w = Workload(
        requests=req,
        tenants=spec.tenants,
        name=spec.name,
        seed=int(seed),
        arrival=spec.arrival.describe(),
        reports=tuple(dict.fromkeys(reports)),
        spec=spec,
    )
    return replace(
        w, reports=(*w.reports, f"{w.distinct_prompts():,} distinct prompts in {n:,} requests")
    )


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
