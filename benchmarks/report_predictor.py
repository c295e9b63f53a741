"""Section 3 of docs/BENCHMARKS.md: predictor cost (LightGBM and the transformer: latency,
memory, accuracy of the serving variants; their targets)."""

from __future__ import annotations

from benchmarks.report_format import NA, section_error
from report.tables import record_table


def predictor_section(sec: dict | None, targets: list) -> list[str]:
    out = ["## 3. Predictor cost", ""]
    err = section_error(sec, "predictor")
    if err:
        targets.append(("LightGBM: <= 20 us/request at batch 64", "n/a", None))
        return [*out, err, ""]
    out += _lightgbm_part(sec.get("lightgbm", {}), targets)
    tr = sec.get("transformer", {})
    if "rows" in tr:
        out += _transformer_part(tr, sec.get("transformer_accuracy"), targets)
    else:
        out += [f"Transformer could not run: `{tr.get('error', 'no result')}`", ""]
    return out


def _lightgbm_part(lg: dict, targets: list) -> list[str]:
    """LightGBM cost per batch size, its load and compile cost; the 20 us target."""
    out = [
        "LightGBM (`artifacts/`), one thread, distinct real prompts from the benchmark trace per",
        "call, median of 7 calls, CPU time per request (wall beside it). `admission` runs the",
        "compiled tree walker (`predictor/fast_trees.py`: the LightGBM text model walked by a",
        "numba kernel, predictions equal bit for bit); `admission LightGBM` is",
        "`Booster.predict` on the same rows, side by side. `per-step` = admission + drift",
        "re-prediction; featurising (prompt text -> features) runs once per request at",
        "arrival, or for the whole trace up front (`Policy.prepare`).",
        "",
    ]
    if "rows" not in lg:
        return [*out, f"LightGBM failed: `{lg.get('error', 'no result')}`", ""]
    out += [
        record_table(
            [
                {
                    "batch": r["batch"],
                    "featurize us": r["featurize_us"],
                    "admission us": r["admission_us"],
                    "admission LightGBM us": r.get("admission_lightgbm_us", NA),
                    "re-prediction us": r["remaining_us"],
                    "per-step CPU us": r["per_step_us"],
                    "per-step wall us": r.get("per_step_wall_us", NA),
                }
                for r in lg["rows"]
            ]
        ),
        "",
        f"Loaded artifact (length + drift): +{lg['load_rss_mb']:.0f} MiB RSS, loaded in "
        f"{lg['load_s']:.2f} s; the benchmark process peaked at {lg['peak_rss_mb']:.0f} MiB.",
    ]
    if "fast_path" in lg:
        out.append(
            f"Tree walker: {'on' if lg['fast_path'] else 'off (numba missing)'}; its first "
            f"call compiles it ({lg['fast_compile_s']:.1f} s, "
            f"+{lg['fast_compile_rss_mb']:.0f} MiB RSS of which "
            f"{lg.get('fast_compile_anon_mb', NA):.0f} MiB private, the rest numba's "
            f"shared LLVM library; once per process); length model "
            f"trees (p50, p90): {lg.get('length_trees')}."
        )
    out.append("")
    r64 = next((r for r in lg["rows"] if r["batch"] == 64), None)
    if r64:
        targets.append(
            (
                "LightGBM: <= 20 us/request at batch 64 (admission)",
                f"{r64['admission_us']:.0f} us admission "
                f"(LightGBM predict {r64.get('admission_lightgbm_us', NA):.0f}); "
                f"+ re-prediction {r64['remaining_us']:.0f} = {r64['per_step_us']:.0f} us "
                f"per step; featurising {r64['featurize_us']:.0f} us once per request",
                r64["admission_us"] <= 20,
            )
        )
    return out


def _transformer_part(tr: dict, acc: dict | None, targets: list) -> list[str]:
    """Transformer cost per batch size, the variants at batch 64, their accuracy; the 5 ms
    target."""
    how = tr.get("artifact") or "the trained `artifacts/transformer/length`"
    dtype = tr["rows"][0].get("dtype", "float32")
    out = [
        "Transformer (`predictor/transformer.py`, all-MiniLM-L6-v2 + quantile head), CPU,",
        f"one thread, artifact: {how}. Fresh prompts every call (the featuriser caches",
        "embeddings by prompt), encode + predict per request, default serving path",
        f"(length-bucketed batches, encoder in {dtype}):",
        "",
        record_table(
            [
                {
                    "batch": r["batch"],
                    "CPU us/request": r["encode_predict_us"],
                    "wall us/request": r.get("encode_predict_wall_us", NA),
                    "calls": r["repeats"],
                }
                for r in tr["rows"]
            ]
        ),
        "",
        f"Loaded artifact: +{tr['load_rss_mb']:.0f} MiB RSS (encoder weights included), loaded in "
        f"{tr['load_s']:.1f} s; process peak {tr['peak_rss_mb']:.0f} MiB.",
        "",
    ]
    if tr.get("variants_64"):
        out += _transformer_variants(tr)
    if acc and "rows" in acc:
        out += _transformer_accuracy(acc)
    batched = [r for r in tr["rows"] if r["batch"] >= 64]
    if batched:
        best = min(batched, key=lambda r: r["encode_predict_us"])
        targets.append(
            (
                "Transformer: <= 5 ms/request batched (CPU)",
                f"{best['encode_predict_us'] / 1e3:.1f} ms at batch {best['batch']} (one thread)",
                best["encode_predict_us"] <= 5_000,
            )
        )
    return out


def _transformer_variants(tr: dict) -> list[str]:
    """Encoder dtype x bucketing at batch 64, beside the default serving path's row."""
    side = tr["variants_64"]
    base = next((r for r in tr["rows"] if r["batch"] == 64), None)
    first = {**(base or {}), "load_rss_mb": tr["load_rss_mb"]}
    first["used_rss_mb"] = tr.get("used_rss_mb", NA)
    rows = ([first] if base else []) + side
    ref = max(r["encode_predict_us"] for r in rows)
    return [
        "Side by side at batch 64 (fresh processes; `buckets` = sub-batches of similar",
        "token length instead of one batch padded to its longest prompt):",
        "",
        record_table(
            [
                {
                    "encoder": r.get("dtype", "float32"),
                    "buckets": r.get("buckets", False),
                    "CPU us/request": r["encode_predict_us"],
                    "speed-up": ref / r["encode_predict_us"],
                    "RSS after load MiB": r["load_rss_mb"],
                    "RSS after first encode MiB": r.get("used_rss_mb", NA),
                }
                for r in rows
            ]
        ),
        "",
    ]


def _transformer_accuracy(acc: dict) -> list[str]:
    """Held-out accuracy of the transformer variants."""
    return [
        f"Accuracy of the same variants on the held-out split of `python train.py "
        f"predictor=transformer` ({acc['test_rows']:,} rows, "
        f"{acc['distinct_prompts']:,} distinct prompts encoded):",
        "",
        record_table(
            [
                {
                    "encoder": r["dtype"],
                    "buckets": r["buckets"],
                    "CPU ms/prompt": r["cpu_ms_per_prompt"],
                    "MAE": r["mae"],
                    "Kendall tau": r["kendall_tau"],
                    "Spearman": r["spearman"],
                    "p90 coverage": r["p90_coverage"],
                }
                for r in acc["rows"]
            ]
        ),
        "",
    ]
