"""Tenant mixes: which tenant sends each request, and which source rows it sends.

Each arrival gets a tenant: drawn by the tenants' ``weight`` (per phase), or, for ServeGen
arrivals, the client stream it came from. Each tenant then draws its requests' (prompt, true
output length) rows from its ``mix`` of sources: a source per request by mix weight, then rows
of that source's pool (filtered to some models or categories, to prompts within
``max_prompt_tokens`` and optionally to prompts the predictor never saw; every filter is
reported). Streams used, in this order: ``arrivals``/``buckets`` (via :mod:`data.arrivals`),
``tenants``, ``sources``, ``rows``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from data.arrivals import process_arrivals, servegen_arrivals
from data.loaders import load_source
from data.loaders.servegen import top_clients
from data.schema import filter_rows
from data.workload_spec import MixItem, PhaseSpec, TenantSpec, WorkloadSpec


def _pool(
    item: MixItem,
    max_prompt_tokens: int,
    reports: list[str],
    seen: Any = None,
    unseen_by: Any = None,
) -> pd.DataFrame:
    df = load_source(item.source)
    if item.models is not None:
        df = _keep_values(df, "model", "models", item, reports, known_cap=30)
    if item.categories is not None:
        df = _keep_values(df, "category", "categories", item, reports)
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


def _keep_values(
    df: pd.DataFrame,
    col: str,
    label: str,
    item: MixItem,
    reports: list[str],
    known_cap: int | None = None,
) -> pd.DataFrame:
    """The rows of ``df`` whose ``col`` is one of the mix item's ``label`` (its ``models`` or
    ``categories``), the filter reported; none left is a config error naming the known values."""
    values = list(getattr(item, label))
    keep = df[col].isin(values).to_numpy()
    if not keep.any():
        known = sorted(df[col].unique())[:known_cap]
        where = " in the source" if col == "model" else ""
        raise ValueError(
            f"mix item {item.source!r}: none of {label} {values}{where}; known: {known}"
        )
    df, rep = filter_rows(df, keep, f"{item.source}: {label} {values}")
    reports.append(str(rep))
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


def assign_tenants(
    spec: WorkloadSpec, rngs: dict[str, np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times (n,), tenant position (n,)) according to the arrival process."""
    a, n = spec.arrival, spec.n_requests
    if a.kind == "servegen":
        t, owner = _servegen_assignment(spec, rngs)
    else:
        t = process_arrivals(a, n, rngs)
        owner = _weighted_assignment(spec, rngs["tenants"])
    if a.kind in ("replay", "servegen") and a.rate_rps is not None and n > 1 and t[-1] > t[0]:
        t = t * (((n - 1) / (t[-1] - t[0])) / a.rate_rps)
    return t, owner


def _servegen_assignment(
    spec: WorkloadSpec, rngs: dict[str, np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """ServeGen arrivals: tenant i is client stream i, so arrivals come with their owner."""
    a = spec.arrival
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
    return servegen_arrivals(
        spec.n_requests,
        a.servegen_model,
        clients,
        a.window_s,
        a.start_s,
        rngs["arrivals"],
        a.rate_scale,
    )


def _weighted_assignment(spec: WorkloadSpec, rng: np.random.Generator) -> np.ndarray:
    """Tenant position (n,) of each request, drawn by the weights in force in its phase."""
    parts = []
    for lo, hi, phase in _phase_bounds(spec):
        w = _phase_weights(spec, phase)
        if not w.sum() > 0:
            raise ValueError(f"workload.phases: tenant weights sum to 0 from request {lo}")
        parts.append(rng.choice(len(w), size=hi - lo, p=w / w.sum()))
    return np.concatenate(parts)


def draw_requests(
    spec: WorkloadSpec,
    owner: np.ndarray,
    rngs: dict[str, np.random.Generator],
    reports: list[str],
    seen: Any = None,
) -> pd.DataFrame:
    """The source rows of every request, in request order (n rows, tenant columns set).

    Tenants draw in tenant order and, within a tenant, phase by phase: this order fixes how
    the ``sources`` and ``rows`` streams are consumed. A pool is loaded and filtered once, the
    first time a mix item is drawn from.
    """
    pools: dict[MixItem, pd.DataFrame] = {}
    parts: list[pd.DataFrame] = []
    for pos, ten in enumerate(spec.tenants):
        for lo, hi, phase in _phase_bounds(spec):
            idx = lo + np.flatnonzero(owner[lo:hi] == pos)  # this tenant's positions, sorted
            if len(idx) == 0:
                continue
            mix = _phase_mix(spec, ten, phase)
            parts += _draw_tenant(spec, ten, mix, idx, rngs, pools, reports, seen)
    req = pd.concat(parts, ignore_index=True).sort_values("_pos", kind="stable")
    req = req.reset_index(drop=True)
    if len(req) != spec.n_requests:  # every position was assigned exactly once above
        raise AssertionError(f"built {len(req)} requests, expected {spec.n_requests}")
    return req.drop(columns=["_pos"])


def _draw_tenant(
    spec: WorkloadSpec,
    ten: TenantSpec,
    mix: tuple[MixItem, ...],
    idx: np.ndarray,
    rngs: dict[str, np.random.Generator],
    pools: dict[MixItem, pd.DataFrame],
    reports: list[str],
    seen: Any,
) -> list[pd.DataFrame]:
    """Rows for one tenant's requests at positions ``idx`` (sorted), drawn from ``mix``; each
    frame carries ``_pos`` (the request position) for the final ordering."""
    mw = np.array([m.weight for m in mix], dtype=np.float64)
    if not mw.sum() > 0:
        raise ValueError(f"tenant {ten.name!r}: mix weights sum to 0")
    pick = rngs["sources"].choice(len(mw), size=len(idx), p=mw / mw.sum())
    parts = []
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
    return parts


def _draw_rows(n_pool: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` row positions of a pool of ``n_pool``: without replacement while the pool lasts;
    beyond it whole shuffled passes over the pool, so every row is used ``k // n_pool`` or
    one more times (as few repeats as possible, never a few rows many times)."""
    if k <= n_pool:
        return rng.choice(n_pool, size=k, replace=False)
    reps = [rng.permutation(n_pool) for _ in range(-(-k // n_pool))]
    return np.concatenate(reps)[:k]
