"""QoS metrics: pure functions over the record table (``scheduler.records``).

Per-request quantities (seconds): ``ttft = first_token_s - arrival_s``; ``e2e = finish_s -
arrival_s``; ``tpot = (finish_s - first_token_s) / (output_tokens - 1)`` (requests with more
than one output token); ``queue_wait = admitted_s - arrival_s`` (the first wait; preemptions add
later waits that show in e2e). Aborted requests are excluded from latency statistics and counted.

``summarize(records, slos, ...)`` returns the ``summary.json`` dict. Its keys are stable
(``SUMMARY_VERSION``); every latency block is ``{"mean", "p50", "p95", "p99", "max"}``:

```
summary_version, policy, engine, n_requests, n_finished, n_aborted, makespan_s
latency: {ttft_s, tpot_s, e2e_s, queue_wait_s}                         overall
per_tier: {tier: {n, latency: {...}, slo: {ttft, e2e, both}, max_wait_s}}
per_tenant: {tenant: {n, tier, latency: {...}, slo: {ttft, e2e, both}, normalised_service}}
slo: {attainment: fraction of finished requests meeting both TTFT and E2E SLOs of their
      tenant/tier, goodput_rps: such requests per second of makespan}
throughput: {output_tokens_per_s, total_tokens_per_s, requests_per_s}
fairness: {jain_tenants: Jain index of normalised service across tenants}
starvation: {max_wait_s, max_wait_tier, p99_wait_s}
preemptions: {total, policy, requests_preempted_frac, max_per_request, recomputed_tokens,
             computed_tokens, recompute_tax: recomputed / computed (NaN: no engine counts)}
estimation: {n, mae, rmse, mae_final, rmse_final, misclass_rate, misclass_rate_final,
             reclassified_frac}  (the paper's estimation metrics; NaN without estimates)
```

*Normalised service* of a tenant is the mean over its finished requests of
``output_tokens / e2e`` (tokens delivered per second of the request's time in the system): equal
service for equal work gives equal values, and Jain's index ``(sum x)^2 / (n sum x^2)`` is 1 when
every tenant gets the same, ``1/n`` when one tenant gets everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from data.schema import TIER_SLOS, runtime_class

SUMMARY_VERSION = 1
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def request_latencies(records: pd.DataFrame) -> pd.DataFrame:
    """Per finished request: ttft_s, tpot_s (NaN for 1-token outputs), e2e_s, queue_wait_s."""
    r = records[records["status"] == "finished"]
    out = r["output_tokens"].to_numpy(dtype=np.float64)
    decode = (r["finish_s"] - r["first_token_s"]).to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(out > 1, decode / np.maximum(out - 1, 1), np.nan)
    return pd.DataFrame(
        {
            "ttft_s": (r["first_token_s"] - r["arrival_s"]).to_numpy(dtype=np.float64),
            "tpot_s": tpot,
            "e2e_s": (r["finish_s"] - r["arrival_s"]).to_numpy(dtype=np.float64),
            "queue_wait_s": (r["admitted_s"] - r["arrival_s"]).to_numpy(dtype=np.float64),
        },
        index=r.index,
    )


def dist(values: np.ndarray | pd.Series) -> dict[str, float]:
    """mean, p50, p95, p99, max of the finite values (NaN for none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {
            "mean": float("nan"),
            **{k: float("nan") for k, _ in QUANTILES},
            "max": float("nan"),
        }
    qs = np.quantile(v, [q for _, q in QUANTILES])
    return {
        "mean": float(v.mean()),
        **{k: float(x) for (k, _), x in zip(QUANTILES, qs)},
        "max": float(v.max()),
    }


def latency_block(lat: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {c: dist(lat[c]) for c in ("ttft_s", "tpot_s", "e2e_s", "queue_wait_s")}


def slo_table(
    tenants: Iterable[tuple[str, float, float]] = (),
) -> dict[str, tuple[float, float]]:
    """The ``slos`` mapping :func:`slo_flags` reads: (TTFT s, E2E s) per tier
    (``data.schema.TIER_SLOS``), then one entry per ``(tenant, ttft_s, e2e_s)`` (a tenant entry
    wins over its tier's)."""
    slos: dict[str, tuple[float, float]] = dict(TIER_SLOS)
    for name, ttft, e2e in tenants:
        slos[str(name)] = (float(ttft), float(e2e))
    return slos


def workload_slos(workload: Any) -> dict[str, tuple[float, float]]:
    """(TTFT s, E2E s) per tenant of a ``data.workload.Workload``, per tier as a fallback."""
    return slo_table((t.name, t.slo_ttft_s, t.slo_e2e_s) for t in getattr(workload, "tenants", ()))


def slo_flags(
    records: pd.DataFrame, lat: pd.DataFrame, slos: Mapping[str, tuple[float, float]]
) -> pd.DataFrame:
    """Per finished request: met_ttft, met_e2e, met (both), from ``slos[tenant or tier]``.

    ``slos`` maps a tenant name or a tier to ``(ttft_s, e2e_s)``; a tenant entry wins.
    """
    r = records.loc[lat.index]
    keys_t = r["tenant"].astype(str).to_numpy()
    keys_tier = r["tier"].astype(str).to_numpy()
    ttft_lim = np.empty(len(r))
    e2e_lim = np.empty(len(r))
    for i, (t, tier) in enumerate(zip(keys_t, keys_tier)):
        lim = slos.get(t, slos.get(tier))
        if lim is None:
            raise ValueError(
                f"no SLO for tenant {t!r} or tier {tier!r}; expected a (ttft_s, "
                "e2e_s) entry per tier or tenant"
            )
        ttft_lim[i], e2e_lim[i] = lim
    met_ttft = lat["ttft_s"].to_numpy() <= ttft_lim
    met_e2e = lat["e2e_s"].to_numpy() <= e2e_lim
    return pd.DataFrame(
        {"met_ttft": met_ttft, "met_e2e": met_e2e, "met": met_ttft & met_e2e}, index=lat.index
    )


def _slo_block(flags: pd.DataFrame) -> dict[str, float]:
    if len(flags) == 0:
        return {"ttft": float("nan"), "e2e": float("nan"), "both": float("nan")}
    return {
        "ttft": float(flags["met_ttft"].mean()),
        "e2e": float(flags["met_e2e"].mean()),
        "both": float(flags["met"].mean()),
    }


def jain_index(x: np.ndarray | list[float]) -> float:
    """Jain's fairness index of non-negative values: 1 = equal, 1/n = one gets all."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or not (v**2).sum() > 0:
        return float("nan")
    return float(v.sum() ** 2 / (v.size * (v**2).sum()))


def normalised_service(records: pd.DataFrame, lat: pd.DataFrame) -> pd.Series:
    """Per tenant: mean of output_tokens / e2e_s over its finished requests (tokens/s)."""
    r = records.loc[lat.index]
    rate = r["output_tokens"].to_numpy(dtype=np.float64) / np.maximum(lat["e2e_s"].to_numpy(), 1e-9)
    return pd.Series(rate, index=r.index).groupby(r["tenant"].astype(str)).mean()


def estimation_metrics(records: pd.DataFrame) -> dict[str, float]:
    """The paper's estimation error: MAE/RMSE of the admission estimate (and the last
    estimate) against the true output length, and the runtime-class misclassification rate
    (classes on prompt + output tokens, ``data.schema.runtime_class``)."""
    r = records[(records["status"] == "finished") & records["est_output_tokens"].notna()]
    nan = float("nan")
    if len(r) == 0:
        return {
            "n": 0,
            "mae": nan,
            "rmse": nan,
            "mae_final": nan,
            "rmse_final": nan,
            "misclass_rate": nan,
            "misclass_rate_final": nan,
            "reclassified_frac": nan,
        }
    true = r["output_tokens"].to_numpy(dtype=np.float64)
    prompt = r["prompt_tokens"].to_numpy(dtype=np.float64)
    est = r["est_output_tokens"].to_numpy(dtype=np.float64)
    fin = r["est_final_total"].fillna(r["est_output_tokens"]).to_numpy(dtype=np.float64)
    true_cls = [runtime_class(p + t) for p, t in zip(prompt, true)]

    def miss(e: np.ndarray) -> float:
        return float(np.mean([runtime_class(p + x) != c for p, x, c in zip(prompt, e, true_cls)]))

    return {
        "n": len(r),
        "mae": float(np.abs(est - true).mean()),
        "rmse": float(np.sqrt(((est - true) ** 2).mean())),
        "mae_final": float(np.abs(fin - true).mean()),
        "rmse_final": float(np.sqrt(((fin - true) ** 2).mean())),
        "misclass_rate": miss(est),
        "misclass_rate_final": miss(fin),
        "reclassified_frac": float((r["n_reclassified"] > 0).mean()),
    }


def recompute_tax(recomputed_tokens: float, computed_tokens: float) -> float:
    """Share of all computed tokens that preemptions threw away (vLLM RFC #54644's "recompute
    tax": KV computed, evicted by recompute, computed again); NaN without a count."""
    if not computed_tokens > 0:
        return float("nan")
    return float(recomputed_tokens) / float(computed_tokens)


def summarize(
    records: pd.DataFrame,
    slos: Mapping[str, tuple[float, float]],
    extra: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every metric of a run under the stable keys documented in the module docstring.
    ``tokens``: the engine's ``recomputed_tokens`` and ``computed_tokens`` (its run meta)."""
    tok = tokens or {}
    recomputed = float(tok.get("recomputed_tokens", float("nan")))
    computed = float(tok.get("computed_tokens", float("nan")))
    lat = request_latencies(records)
    flags = slo_flags(records, lat, slos)
    fin = records.loc[lat.index]
    start = float(records["arrival_s"].min()) if len(records) else 0.0
    end = float(records["finish_s"].max()) if len(records) else 0.0
    makespan = max(end - start, 1e-9)
    per_tier: dict[str, Any] = {}
    for tier, idx in fin.groupby(fin["tier"].astype(str)).groups.items():
        sub = lat.loc[idx]
        per_tier[str(tier)] = {
            "n": len(sub),
            "latency": latency_block(sub),
            "slo": _slo_block(flags.loc[idx]),
            "max_wait_s": float(np.nanmax(sub["queue_wait_s"])),
        }
    service = normalised_service(records, lat)
    per_tenant: dict[str, Any] = {}
    for ten, idx in fin.groupby(fin["tenant"].astype(str)).groups.items():
        sub = lat.loc[idx]
        per_tenant[str(ten)] = {
            "n": len(sub),
            "tier": str(fin.loc[idx, "tier"].iloc[0]),
            "latency": latency_block(sub),
            "slo": _slo_block(flags.loc[idx]),
            "normalised_service": float(service[ten]),
        }
    waits = lat["queue_wait_s"].to_numpy()
    worst = int(np.nanargmax(waits)) if np.isfinite(waits).any() else None
    pre = records["num_preemptions"].to_numpy()
    out_tok = float(fin["output_tokens"].sum())
    return {
        "summary_version": SUMMARY_VERSION,
        **{k: v for k, v in (extra or {}).items()},
        "n_requests": len(records),
        "n_finished": len(lat),
        "n_aborted": int((records["status"] == "aborted").sum()),
        "makespan_s": makespan,
        "latency": latency_block(lat),
        "per_tier": per_tier,
        "per_tenant": per_tenant,
        "slo": {
            "attainment": float(flags["met"].mean()) if len(flags) else float("nan"),
            "goodput_rps": float(flags["met"].sum()) / makespan,
        },
        "throughput": {
            "output_tokens_per_s": out_tok / makespan,
            "total_tokens_per_s": (out_tok + float(fin["prompt_tokens"].sum())) / makespan,
            "requests_per_s": len(lat) / makespan,
        },
        "fairness": {"jain_tenants": jain_index(service.to_numpy())},
        "starvation": {
            "max_wait_s": float(waits[worst]) if worst is not None else float("nan"),
            "max_wait_tier": str(fin["tier"].iloc[worst]) if worst is not None else "",
            "p99_wait_s": dist(waits)["p99"],
        },
        "preemptions": {
            "total": int(pre.sum()),
            "policy": int(records["n_policy_preemptions"].sum()),
            "requests_preempted_frac": float((pre > 0).mean()) if len(pre) else 0.0,
            "max_per_request": int(pre.max()) if len(pre) else 0,
            "recomputed_tokens": recomputed,
            "computed_tokens": computed,
            "recompute_tax": recompute_tax(recomputed, computed),
        },
        "estimation": estimation_metrics(records),
    }


def comparison_table(
    summaries: Mapping[str, Mapping[str, Any]], baseline: str = "fifo", reference: str = "oracle"
) -> pd.DataFrame:
    """One row per policy: key metrics, ratios of mean E2E to ``baseline`` and ``reference``,
    and headroom capture ``(E2E_fifo - E2E_policy) / (E2E_fifo - E2E_oracle)``."""
    rows = []
    for name, s in summaries.items():
        lat = s["latency"]
        prem = s["per_tier"].get("premium", {})
        rows.append(
            {
                "policy": name,
                "e2e_mean": lat["e2e_s"]["mean"],
                "e2e_p99": lat["e2e_s"]["p99"],
                "ttft_mean": lat["ttft_s"]["mean"],
                "ttft_p99": lat["ttft_s"]["p99"],
                "premium_ttft_p99": prem.get("latency", {}).get("ttft_s", {}).get("p99", np.nan),
                "premium_ttft_slo": prem.get("slo", {}).get("ttft", np.nan),
                "slo_attain": s["slo"]["attainment"],
                "goodput_rps": s["slo"]["goodput_rps"],
                "max_wait": s["starvation"]["max_wait_s"],
                "jain": s["fairness"]["jain_tenants"],
                "preempt": s["preemptions"]["total"],
                # share of requests whose prompt the policy's predictor trained on (NaN: the
                # policy has no predictor); > 0 only with allow_train_overlap=true
                "train_overlap": np.nan
                if s.get("train_overlap") is None
                else float(s["train_overlap"]),
            }
        )
    df = pd.DataFrame(rows).set_index("policy")
    e2e = df["e2e_mean"]
    if baseline in df.index:
        df[f"vs_{baseline}"] = e2e / e2e[baseline]
    if reference in df.index:
        df[f"vs_{reference}"] = e2e / e2e[reference]
    if baseline in df.index and reference in df.index:
        gap = e2e[baseline] - e2e[reference]
        df["headroom_capture"] = (e2e[baseline] - e2e) / gap if abs(gap) > 1e-12 else np.nan
    return df


def comparison_reading(
    table: pd.DataFrame,
    baseline: str = "fifo",
    reference: str = "oracle",
    oracles: tuple[str, ...] = ("oracle", "srpt_oracle"),
) -> list[str]:
    """Plain-language lines for a :func:`comparison_table`: which non-oracle policy has the
    lowest mean E2E, by how much against ``baseline``, at what tail and premium-TTFT cost."""
    cands = table.drop(index=[p for p in oracles if p in table.index])
    if cands.empty or baseline not in table.index:
        return []
    best = str(cands["e2e_mean"].idxmin())
    b, f = table.loc[best], table.loc[baseline]
    out = [
        f"lowest mean E2E without true lengths: {best} ({b['e2e_mean']:.1f} s = "
        f"{b['e2e_mean'] / f['e2e_mean']:.2f}x {baseline}'s {f['e2e_mean']:.1f} s"
        + (
            f"; headroom capture {b['headroom_capture']:.2f} of the {baseline}-{reference} gap"
            if "headroom_capture" in table.columns and np.isfinite(b["headroom_capture"])
            else ""
        )
        + ")",
        f"its tail: P99 E2E {b['e2e_p99']:.1f} s vs {baseline} {f['e2e_p99']:.1f} s "
        f"({b['e2e_p99'] / f['e2e_p99']:.2f}x); premium TTFT P99 {b['premium_ttft_p99']:.2f} s "
        f"vs {f['premium_ttft_p99']:.2f} s; SLO attainment {b['slo_attain']:.3f} vs "
        f"{f['slo_attain']:.3f}",
    ]
    tail = str(table["e2e_p99"].idxmin())
    if tail != best:
        out.append(f"lowest P99 E2E: {tail} ({table.loc[tail, 'e2e_p99']:.1f} s)")
    ov = table["train_overlap"].dropna() if "train_overlap" in table.columns else pd.Series()
    if len(ov):
        out.append(
            "learned policies ran on prompts their predictor never trained on"
            if (ov == 0).all()
            else f"WARNING: train_overlap up to {ov.max():.1%} (allow_train_overlap=true): "
            "learned-policy numbers partly measure memorised prompts"
        )
    return out
