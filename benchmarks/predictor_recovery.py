"""The predictor report's online section: each held-out generator's traffic served through
the calibrators and refit of ``benchmarks.predictor_online`` (how fast the MAE gap closes),
and the p90 coverage after online calibration on every split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import predictor_online as online
from benchmarks.predictor_config import ReportConfig
from benchmarks.predictor_length import score
from benchmarks.predictor_splits import Base, generator_pool
from predictor.eval_splits import EvalSplit


def online_section(
    base: Base,
    splits: dict[str, EvalSplit],
    models: dict[tuple[str, str], Any],
    rc: ReportConfig,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(recovery rows per held-out generator x method x checkpoint, coverage rows per split)."""
    rng = np.random.default_rng(rc.seed + 3)
    ref_est = models[("default", "in_distribution")]
    rec_rows: list[dict[str, Any]] = []
    for m in rc.online_models:
        name = f"lomo:{m}"
        if name not in splits:
            continue
        est = models[("default", name)]
        sp = splits[name]
        # the generator's traffic outside the test partition (its prompts may have been seen
        # answered by other generators, never by it); evaluated on its test rows
        pool = generator_pool(base, m)
        pool = pool.iloc[rng.permutation(len(pool))[: rc.stream]].reset_index(drop=True)
        va = models[("default", "_val_" + name)]
        warm = (va["output_tokens"].to_numpy(np.float64), est.predict_quantiles(va))
        ref_mae = score(ref_est, sp.test)[0]["mae"]
        log(f"online {name}: stream {len(pool)}, eval {len(sp.test)}, in-dist MAE {ref_mae:.1f}")
        res = online.recovery(
            est,
            pool,
            sp.test,
            warm,
            concurrency=rc.concurrency,
            refit_every=rc.refit_every,
            refit_rounds=rc.refit_rounds,
            checkpoints=rc.checkpoints,
            log=log,
        )
        for meth, r in res.items():
            for c in r.checkpoints:
                rec_rows.append({"generator": m, "method": meth, **c, "ref_mae": ref_mae})
    cov_rows: list[dict[str, Any]] = []
    for name, sp in splits.items():
        key = ("default", "in_distribution" if sp.kind in ("in", "unseen") else name)
        est = models[key]
        va = models[("default", "_val" if key[1] == "in_distribution" else "_val_" + name)]
        warm = (va["output_tokens"].to_numpy(np.float64), est.predict_quantiles(va))
        rows = sp.test
        if sp.kind == "lomo":
            # + the generator's rows outside the test partition (never trained on as its
            # answers): enough traffic for a held-out AlpacaEval generator (~80 test rows)
            rows = pd.concat([generator_pool(base, name.split(":", 1)[1]), rows], ignore_index=True)
        stream = rows.iloc[rng.permutation(len(rows))[: rc.stream]].reset_index(drop=True)
        row: dict[str, Any] = {"split": name, "n": len(stream)}
        for meth in ("none", "ema", "km"):
            cal, cens, _ = online.make_method(meth, est, warm, rc.refit_every, rc.refit_rounds)
            r = online.run_stream(est, stream, cal, concurrency=rc.concurrency, censored=cens)
            row[f"p90_cov_{meth}"] = online.online_coverage(r, rc.burn_in)
        cov_rows.append(row)
        log(f"coverage {name}: {row}")
    return rec_rows, cov_rows
