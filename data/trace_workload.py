"""Bring your own trace: a user's CSV/JSONL/parquet file as a workload (``workload=trace``).

    python evaluate.py workload=trace workload.path=my_trace.jsonl
    python evaluate.py workload=trace workload.path=log.parquet +policy=sjf \\
        workload.tiers.alice=premium workload.slos.premium='[0.5,30]'

The file is read by :func:`data.loaders.load_trace_file` (the schema of ``data/README.md``;
with ``fill_defaults`` only ``output_tokens`` and ``prompt`` or ``prompt_tokens`` are needed),
so a bad file fails with the same errors as the loaders: file, row(s), column, expectation.

* Arrivals: the file's ``arrival_s`` when it has them (sorted stably; the order change is
  reported), else ``arrival`` (an arrival process as in the tenant workloads: poisson, gamma or
  the replay of a shipped trace). ``evaluate.py`` rescales time to the requested load as for
  every workload (``Workload.at_rate``): the shape (order, gaps, burstiness) is the file's, and
  ``rate_rps=<the file's mean rate>`` replays it at its own speed.
* Tenants and tiers: the file's ``tenant`` and ``tier`` columns, where ``tiers`` (tenant ->
  tier) overrides or supplies the tier of a tenant. A tenant must end with one tier.
* SLOs: ``slos`` per tier (``[ttft_s, e2e_s]``; defaults ``data.schema.TIER_SLOS``), and
  ``tenant_slos`` per tenant.
* Lengths: ``max_tokens`` from the file where set, else the config's ``max_tokens`` (null: no
  cap beyond the true length); true outputs above it are capped (reported), as a server stops
  generating there.
* ``unseen_by``: as in the tenant workloads, keep only prompts the predictor never trained on
  (an explicit, reported filter); null by default: the file is used whole and ``evaluate.py``'s
  overlap check refuses a learned policy on prompts its predictor trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.arrivals import ArrivalSpec, _arrival_from_dict, process_arrivals
from data.config_checks import _check_fields, _to_container, check_number
from data.schema import TIER_SLOS, TIERS, filter_rows
from data.workload import Workload, spawn_streams
from data.workload_spec import MixItem, TenantSpec


@dataclass(frozen=True)
class TraceSpec:
    """``conf/workload/trace.yaml``: a user trace file as a workload."""

    path: str | None = None  # the trace file (CSV/JSONL/parquet, .gz ok); required
    name: str = "trace"
    fill_defaults: bool = True  # fill absent identity columns (see load_trace_file)
    arrival: ArrivalSpec = field(default_factory=lambda: ArrivalSpec("poisson", rate_rps=1.0))
    tiers: Mapping[str, str] = field(default_factory=dict)  # tenant -> tier
    slos: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(TIER_SLOS))
    tenant_slos: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    max_tokens: int | None = None  # cap where the file has no max_tokens (None: no cap)
    n_requests: int | None = None  # the first n requests (by arrival); None: all
    unseen_by: str | None = None  # as WorkloadSpec.unseen_by (None: the whole file)

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError(
                "workload=trace needs workload.path=FILE (a CSV, JSONL or parquet trace in "
                "the schema of data/README.md)"
            )
        for t, tier in self.tiers.items():
            if tier not in TIERS:
                raise ValueError(
                    f"workload.tiers.{t}: unknown tier {tier!r}; expected one of {list(TIERS)}"
                )
        for what, table in (("slos", self.slos), ("tenant_slos", self.tenant_slos)):
            for k, v in table.items():
                if what == "slos" and k not in TIERS:
                    raise ValueError(
                        f"workload.slos.{k}: unknown tier; expected keys from {list(TIERS)}"
                    )
                if not (isinstance(v, tuple) and len(v) == 2):
                    raise ValueError(f"workload.{what}.{k} = {v!r}: expected [ttft_s, e2e_s]")
                for x, part in zip(v, ("ttft_s", "e2e_s")):
                    check_number(f"workload.{what}.{k}.{part}", x, gt=0, finite=False)
        check_number("workload.max_tokens", self.max_tokens, ge=1, integer=True, none_ok=True)
        check_number("workload.n_requests", self.n_requests, ge=1, integer=True, none_ok=True)

    @classmethod
    def from_config(cls, cfg: Any) -> TraceSpec:
        d = _to_container(cfg)
        d.pop("preset", None)
        _check_fields("workload (preset: trace)", d, cls)
        if "arrival" in d:
            d["arrival"] = _arrival_from_dict(d["arrival"] or {})
        for k in ("slos", "tenant_slos"):
            if k in d:
                table = d[k] or {}
                if not isinstance(table, Mapping):
                    raise ValueError(f"workload.{k}: expected a mapping name -> [ttft_s, e2e_s]")
                d[k] = {
                    str(n): tuple(v) if isinstance(v, list | tuple) else v for n, v in table.items()
                }
        if k := d.get("tiers"):
            if not isinstance(k, Mapping):
                raise ValueError("workload.tiers: expected a mapping tenant -> tier")
            d["tiers"] = {str(t): v for t, v in k.items()}
        elif "tiers" in d:
            d["tiers"] = {}
        return cls(**d)


def build_trace_workload(spec: TraceSpec, seed: int = 0) -> Workload:
    """The workload of a user trace file (see the module doc); deterministic in ``seed``."""
    from data.loaders import load_trace_file

    path = Path(spec.path)  # type: ignore[arg-type]
    where = str(path)
    df = load_trace_file(path, fill_defaults=spec.fill_defaults)
    reports: list[str] = [f"{where}: {len(df):,} requests read"]
    rngs = spawn_streams(seed)
    df = _arrivals(df, spec, where, rngs, reports)
    if spec.n_requests is not None and spec.n_requests < len(df):
        reports.append(f"{where}: the first {spec.n_requests:,} of {len(df):,} requests")
        df = df.iloc[: spec.n_requests].reset_index(drop=True)
    df = _tiers(df, spec, where, reports)
    if spec.unseen_by:
        df = _drop_seen(df, spec, where, reports)
    df = _cap_outputs(df, spec, where, reports)
    tenants = _tenant_specs(df, spec, where)
    by = {t.name: t for t in tenants}
    df["slo_ttft_s"] = [by[t].slo_ttft_s for t in df["tenant"]]
    df["slo_e2e_s"] = [by[t].slo_e2e_s for t in df["tenant"]]
    df["source_request_id"] = df["request_id"]
    w = Workload(
        requests=df.reset_index(drop=True),
        tenants=tenants,
        name=spec.name,
        seed=int(seed),
        arrival=f"trace file {where}",
        reports=tuple(reports),
        spec=None,
    )
    return replace(w, reports=(*w.reports, f"{w.distinct_prompts():,} distinct prompts"))


def _arrivals(
    df: pd.DataFrame,
    spec: TraceSpec,
    where: str,
    rngs: dict[str, np.random.Generator],
    reports: list[str],
) -> pd.DataFrame:
    """Rows in arrival order with ``arrival_s`` from 0: the file's own times (sorted stably)
    where every row has one, else times drawn from ``spec.arrival``."""
    if "arrival_s" in df.columns and df["arrival_s"].notna().all():
        t = df["arrival_s"].to_numpy(dtype=np.float64)
        order = np.argsort(t, kind="stable")
        if (order != np.arange(len(t))).any():
            reports.append(f"{where}: rows sorted by arrival_s (the file was not in time order)")
        df = df.iloc[order].reset_index(drop=True)
        df["arrival_s"] = df["arrival_s"] - float(df["arrival_s"].iat[0])
        return df
    if "arrival_s" in df.columns and df["arrival_s"].notna().any():
        bad = np.flatnonzero(df["arrival_s"].isna().to_numpy())[:10].tolist()
        raise ValueError(
            f"{where}: column 'arrival_s' is set on some rows but missing on row(s) {bad}; "
            "expected it on every row (or on none: then workload.arrival generates them)"
        )
    if spec.arrival.kind == "servegen":
        raise ValueError(
            "workload.arrival.kind 'servegen': a trace without arrival_s takes poisson, "
            "gamma or replay arrivals"
        )
    df["arrival_s"] = process_arrivals(spec.arrival, len(df), rngs)
    reports.append(f"{where}: no arrival_s; arrivals {spec.arrival.describe()}")
    return df


def _drop_seen(df: pd.DataFrame, spec: TraceSpec, where: str, reports: list[str]) -> pd.DataFrame:
    """Only the prompts the predictor ``spec.unseen_by`` never trained on (a reported filter)."""
    from data.holdout import resolve_seen, seen_filter_reason

    seen = resolve_seen(spec.unseen_by, reports)
    if seen is None:
        return df
    keep, why = seen_filter_reason(
        seen,
        df,
        f"{where}: prompts the predictor never trained on (unseen_by={spec.unseen_by})",
    )
    df, rep = filter_rows(df, keep, why)
    reports.append(str(rep))
    if df.empty:
        raise ValueError(
            f"{where}: every prompt was seen by the predictor ({spec.unseen_by}); "
            "nothing is left to evaluate"
        )
    return df


def _cap_outputs(df: pd.DataFrame, spec: TraceSpec, where: str, reports: list[str]) -> pd.DataFrame:
    """Fill ``max_tokens`` where the file has none (the config's cap, else the longest output)
    and cap true outputs there; ``output_tokens_uncapped`` keeps the true length."""
    if "max_tokens" not in df.columns or df["max_tokens"].isna().all():
        cap = spec.max_tokens or int(df["output_tokens"].max())
        df["max_tokens"] = cap
    elif df["max_tokens"].isna().any():
        df["max_tokens"] = df["max_tokens"].fillna(
            spec.max_tokens or int(df["output_tokens"].max())
        )
    out = df["output_tokens"].to_numpy(dtype=np.int64)
    cap = df["max_tokens"].to_numpy(dtype=np.int64)
    if (out > cap).any():
        reports.append(
            f"{where}: capped output_tokens at max_tokens for {int((out > cap).sum()):,} "
            "requests (output_tokens_uncapped keeps the true length)"
        )
    df["output_tokens_uncapped"] = out
    df["output_tokens"] = np.minimum(out, cap)
    return df


def _tiers(df: pd.DataFrame, spec: TraceSpec, where: str, reports: list[str]) -> pd.DataFrame:
    """Apply ``spec.tiers`` and require one tier per tenant (rows named on conflict)."""
    known = set(df["tenant"].astype(str))
    missing = sorted(set(spec.tiers) - known)
    if missing:
        raise ValueError(
            f"workload.tiers names tenant(s) {missing} that are not in {where}; tenants there: "
            f"{sorted(known)[:20]}"
        )
    if spec.tiers:
        mapped = df["tenant"].astype(str).map(dict(spec.tiers))
        changed = mapped.notna() & (mapped != df["tier"].astype(str))
        if changed.any():
            reports.append(f"{where}: workload.tiers set the tier of {int(changed.sum()):,} rows")
        df = df.copy()
        df["tier"] = mapped.fillna(df["tier"].astype(str)).astype("string")
    per = df.groupby("tenant", observed=True)["tier"].unique()
    for tenant, tiers in per.items():
        if len(tiers) > 1:
            rows = np.flatnonzero((df["tenant"] == tenant).to_numpy())[:10].tolist()
            raise ValueError(
                f"{where}: tenant {tenant!r} has rows of tiers {sorted(map(str, tiers))} (e.g. "
                f"rows {rows}); expected one tier per tenant: map it with "
                f"workload.tiers.{tenant}=<tier>"
            )
    return df


def _tenant_specs(df: pd.DataFrame, spec: TraceSpec, where: str) -> tuple[TenantSpec, ...]:
    counts = df["tenant"].astype(str).value_counts()
    missing = sorted(set(spec.tenant_slos) - set(counts.index))
    if missing:
        raise ValueError(
            f"workload.tenant_slos names tenant(s) {missing} that are not in {where}; tenants "
            f"there: {sorted(counts.index)[:20]}"
        )
    tier_of = df.groupby("tenant", observed=True)["tier"].first()
    stem = Path(where).name.split(".")[0]
    out = []
    for tenant in sorted(counts.index):
        tier = str(tier_of[tenant])
        ttft, e2e = spec.tenant_slos.get(tenant, spec.slos.get(tier, TIER_SLOS[tier]))
        out.append(
            TenantSpec(
                name=tenant,
                tier=tier,
                weight=float(counts[tenant]) / len(df),
                slo_ttft_s=float(ttft),
                slo_e2e_s=float(e2e),
                mix=(MixItem(source=f"trace:{stem}"),),
            )
        )
    return tuple(out)
