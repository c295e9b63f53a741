"""The predictor report's length experiments: every variant (``VARIANTS``) fitted on every
split with the same bounded sizes, scored in distribution, on unseen prompts and held out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.predictor_config import VARIANTS, ReportConfig, conf_params
from benchmarks.predictor_splits import training_rows
from predictor.eval_splits import EvalSplit


def lgbm_params(**over: Any) -> dict[str, Any]:
    return conf_params("length", **over)


class Embeddings:
    """One MiniLM embedding cache shared by every split's featurizer."""

    def __init__(self) -> None:
        self.cache: dict[str, np.ndarray] = {}
        self.encoder: Any = None
        self.encode_s = 0.0


def fit_variant(
    variant: str, sp: EvalSplit, rc: ReportConfig, emb: Embeddings
) -> tuple[Any, float, pd.DataFrame]:
    """(fitted model, fit seconds, validation rows) of one variant on one split."""
    from predictor.lgbm import LightGBMLength
    from predictor.transfer import EmbeddingFeaturizer, RankedLength

    rng = np.random.default_rng(rc.seed)
    samples = 10 if variant == "samples10" else None
    tr, va = training_rows(sp, rc, rng, samples)
    ytr = tr["output_tokens"].to_numpy(np.float64)
    ev = (va, va["output_tokens"].to_numpy(np.float64))
    t0 = time.perf_counter()
    if variant in ("default", "rank", "samples10"):
        est = LightGBMLength(**lgbm_params()).fit(tr, ytr, eval_set=ev)
        if variant == "rank":
            est = RankedLength(est).fit(tr, ytr, eval_set=ev)
    elif variant == "no_generator":
        est = LightGBMLength(**lgbm_params(generator_features=False, model_id_dropout=0.0))
        est.fit(tr, ytr, eval_set=ev)
    elif variant == "minilm":
        p = lgbm_params()
        fz = EmbeddingFeaturizer(
            text_dim=p["text_dim"],
            max_vocab=p["max_vocab"],
            min_count=p["min_count"],
            text_score=p["text_score"],
            generator_features=p.get("generator_features", False),
            emb_cache=emb.cache,
            encoder=emb.encoder,
        )
        t1 = time.perf_counter()
        fz.fit(tr, ytr)
        fz.embed(list(dict.fromkeys(x for x in va["prompt"].tolist() if isinstance(x, str))))
        emb.encoder = fz.encoder
        emb.encode_s += time.perf_counter() - t1
        est = LightGBMLength(**p).fit(tr, ytr, eval_set=ev, featurizer=fz)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return est, time.perf_counter() - t0, va


def score(est: Any, rows: pd.DataFrame) -> tuple[dict[str, float], np.ndarray]:
    from predictor.metrics import length_metrics

    q = est.predict_quantiles(rows)
    y = rows["output_tokens"].to_numpy(np.float64)
    return length_metrics(y, q, rows["prompt_tokens"].to_numpy(np.float64)), q


def length_section(
    splits: dict[str, EvalSplit], rc: ReportConfig, emb: Embeddings, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Any], dict[str, Any]]:
    """Metric rows (split x variant), fitted models, and per-variant extras (latency, fits)."""
    from predictor.training import measure_latency

    rows: list[dict[str, Any]] = []
    models: dict[tuple[str, str], Any] = {}
    extras: dict[str, Any] = {}
    ind = splits["in_distribution"]
    for v in rc.variants:
        t_v = time.perf_counter()
        est, fit_s, va = fit_variant(v, ind, rc, emb)
        models[(v, "in_distribution")] = est
        models[(v, "_val")] = va
        m_in, _ = score(est, ind.test)
        rows.append({"split": "in_distribution", "variant": v, **m_in, "fit_s": fit_s})
        lat = measure_latency(est, ind.test, rc.latency_batch, budget_s=1.0)
        extras[v] = {"latency": lat, "fit_s": [fit_s]}
        log(f"{v}: in-distribution tau {m_in['kendall_tau']:.3f} ({fit_s:.0f} s)")
        m_un, _ = score(est, splits["unseen_prompt"].test)
        rows.append(
            {
                "split": "unseen_prompt",
                "variant": v,
                **m_un,
                "ref_tau": m_in["kendall_tau"],
                "ref_mae": m_in["mae"],
                "fit_s": 0.0,
            }
        )
        text = splits["unseen_prompt"].test
        text = text[text["prompt"].notna().to_numpy(bool)] if "prompt" in text else text
        m_tx, _ = score(est, text)
        rows.append(
            {
                "split": "unseen_prompt (with text)",
                "variant": v,
                **m_tx,
                "ref_tau": m_in["kendall_tau"],
                "ref_mae": m_in["mae"],
                "fit_s": 0.0,
            }
        )
        for name, sp in splits.items():
            if sp.kind not in ("loso", "lomo"):
                continue
            ref, _ = score(est, sp.test)  # the in-distribution model on the same rows
            held, fit_s, _ = fit_variant(v, sp, rc, emb)
            models[(v, name)] = held
            m, _ = score(held, sp.test)
            extras[v]["fit_s"].append(fit_s)
            rows.append(
                {
                    "split": name,
                    "variant": v,
                    **m,
                    "ref_tau": ref["kendall_tau"],
                    "ref_mae": ref["mae"],
                    "fit_s": fit_s,
                }
            )
            log(
                f"  {v} {name}: tau {m['kendall_tau']:.3f} (in-dist model {ref['kendall_tau']:.3f})"
            )
        extras[v]["wall_s"] = time.perf_counter() - t_v
    for r in rows:
        if "ref_tau" in r:
            r["tau_gap"] = r["kendall_tau"] - r["ref_tau"]
            r["mae_gap"] = r["mae"] - r["ref_mae"]
    return rows, models, extras
