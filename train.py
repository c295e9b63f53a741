"""``python train.py``: fit output-length and drift predictors, print held-out metrics, save.

    python train.py                                  # LightGBM on castillo+alpaca_eval+sharegpt
    python train.py predictor=transformer            # MiniLM versions -> artifacts/transformer
    python train.py data.path=PATH/records.parquet   # an evaluate.py run's log (or any trace)
    python train.py logger=none train.max_train_rows=20000

Thin entry: compose -> load traces -> fit -> save artifacts -> log (``predictor.training``).
Artifacts go to ``out_dir`` (default ``artifacts/``, relative to the directory train.py was
started from); reports (metrics.json, tables, calibration.png) to the Hydra run directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

METRIC_COLS = [
    "n",
    "mae",
    "rmse",
    "mae_log",
    "kendall_tau",
    "spearman",
    "class_accuracy",
    "p90_coverage",
]
DRIFT_COLS = [
    "subset",
    "model",
    "t",
    "n",
    "mae",
    "mae_log",
    "kendall_tau",
    "p90_coverage",
    "mae_gain_vs_naive",
]


def _original_cwd() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(hydra.utils.get_original_cwd())
    return Path.cwd()


def _resolve(p: str | os.PathLike[str]) -> Path:
    path = Path(p)
    return path if path.is_absolute() else _original_cwd() / path


def format_table(df: pd.DataFrame, cols: list[str]) -> str:
    show = df[[c for c in cols if c in df.columns]].copy()
    return show.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def calibration_plot(y: Any, q: Any, path: Path) -> Path:
    """Predicted vs true median per prediction decile, and p90 coverage per decile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.asarray(y, dtype=float)
    q = np.asarray(q, dtype=float)
    edges = np.quantile(q[:, 0], np.linspace(0, 1, 11))
    b = np.clip(np.searchsorted(edges, q[:, 0], side="right") - 1, 0, 9)
    pm = [np.median(q[b == k, 0]) for k in range(10) if (b == k).any()]
    tm = [np.median(y[b == k]) for k in range(10) if (b == k).any()]
    cov = [np.mean(y[b == k] <= q[b == k, 1]) for k in range(10) if (b == k).any()]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].loglog(pm, tm, "o-", label="true median")
    lim = [min(pm + tm), max(pm + tm)]
    ax[0].loglog(lim, lim, "k--", lw=1, label="ideal")
    ax[0].set(
        xlabel="predicted p50 (tokens)",
        ylabel="true median (tokens)",
        title="p50 calibration by decile",
    )
    ax[0].legend()
    ax[1].bar(range(len(cov)), cov)
    ax[1].axhline(0.9, color="k", ls="--", lw=1)
    ax[1].set(
        ylim=(0, 1),
        xlabel="decile of predicted p50",
        ylabel="P(true <= p90)",
        title="p90 coverage by decile",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build(cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """Instantiate the length model, the drift model and the baselines from the config."""
    from hydra.utils import instantiate

    length = instantiate(cfg.predictor.length, _convert_="all")
    drift = (
        instantiate(cfg.predictor.drift, _convert_="all") if cfg.predictor.get("drift") else None
    )
    baselines = {k: instantiate(v, _convert_="all") for k, v in (cfg.baselines or {}).items()}
    return length, drift, baselines


def train(cfg: DictConfig, run_dir: Path | None = None) -> Any:
    """Run the pipeline for a composed config; returns ``predictor.training.TrainResult``."""
    from predictor.training import run_training
    from report.tracking import tracking_run

    tc = train_config(cfg)
    out = _resolve(cfg.out_dir)
    if cfg.predictor.get("artifact_subdir"):
        out = out / cfg.predictor.artifact_subdir
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    length, drift, baselines = build(cfg)
    name = str(cfg.predictor.name)
    config = OmegaConf.to_container(cfg, resolve=True)
    data_path = _resolve(cfg.data.path) if cfg.data.get("path") else None
    with tracking_run(
        enabled=bool(cfg.logger.enabled),
        project=str(cfg.logger.project),
        job_type="train",
        name=str(cfg.run_name or f"train-{name}"),
        config=config,
        group=cfg.logger.get("group"),
        mode=cfg.logger.get("mode"),
        dir=run_dir,
    ) as tracker:
        res = run_training(
            length_est=length,
            drift_est=drift,
            baselines=baselines,
            tc=tc,
            out_dir=out,
            sources=None if data_path else list(cfg.data.sources),
            path=data_path,
            name=name,
            extra_meta={"config": config},
        )
        print_results(res)
        summary = result_summary(res)
        log_results(tracker, res, summary)
        if run_dir is not None:
            write_run_dir(run_dir, res, summary, tracker)
    return res


def train_config(cfg: DictConfig) -> Any:
    """``cfg.train`` with the predictor's ``train_overrides``, as a ``TrainConfig``; the split
    defaults to the data config's (else prompt-grouped)."""
    from predictor.training import TrainConfig

    overrides = cfg.predictor.get("train_overrides")
    tc_map = {
        **OmegaConf.to_container(cfg.train, resolve=True),
        **(OmegaConf.to_container(overrides, resolve=True) if overrides else {}),
    }
    tc_map.setdefault(
        "split",
        OmegaConf.to_container(cfg.data.split, resolve=True)
        if cfg.data.get("split")
        else {"kind": "grouped"},
    )
    return TrainConfig.from_mapping(tc_map)


def print_results(res: Any) -> None:
    """The held-out tables, the latency and the artifact paths of a ``TrainResult``."""
    print("\nHeld-out length metrics (test split, prompt-grouped):")
    print(format_table(res.length_table, ["model", *METRIC_COLS, "fit_s"]))
    if len(res.drift_table):
        print(
            "\nDrift (remaining tokens at fixed progress t, requests still running; "
            "subset all = the whole test split, with_text = its rows with output text, "
            "where the model reads the first t tokens):"
        )
        print(format_table(res.drift_table, DRIFT_COLS))
    if res.loso_table is not None:
        print("\nLeave-one-source-out:")
        print(format_table(res.loso_table, ["held_out", "model", *METRIC_COLS]))
    lat = res.latency
    print(
        f"\nLatency at batch {lat['batch']}: featurize "
        f"{lat['featurize_us_per_request']:.1f} us/request, admission prediction "
        f"{lat['admission_us_per_request']:.1f} us/request"
    )
    print(f"Artifacts: {', '.join(f'{k}={v}' for k, v in res.artifacts.items())}")


def result_summary(res: Any) -> dict[str, Any]:
    """What ``metrics.json`` holds: length metrics per model, drift rows, latency, sizes."""
    return {
        "length": {
            r["model"]: {k: r[k] for k in METRIC_COLS} for r in res.length_table.to_dict("records")
        },
        "drift": res.drift_table.to_dict("records"),
        "latency": res.latency,
        "sizes": res.sizes,
        "timings": res.timings,
    }


def log_results(tracker: Any, res: Any, summary: Mapping[str, Any]) -> None:
    """Summary and tables to the tracker (wandb or none)."""
    tracker.log_summary(
        {"length": summary["length"], "latency": res.latency, "timings": res.timings}
    )
    tracker.log_table("length_metrics", res.length_table)
    if len(res.drift_table):
        tracker.log_table("drift_metrics", res.drift_table)
    if res.importance is not None:
        tracker.log_table("feature_importance", res.importance)


def write_run_dir(run_dir: Path, res: Any, summary: Mapping[str, Any], tracker: Any) -> None:
    """metrics.json, the metric tables as CSV and calibration.png into the Hydra run dir."""
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    res.length_table.to_csv(run_dir / "length_metrics.csv", index=False)
    res.drift_table.to_csv(run_dir / "drift_metrics.csv", index=False)
    if res.loso_table is not None:
        res.loso_table.to_csv(run_dir / "loso_metrics.csv", index=False)
    if res.importance is not None:
        res.importance.to_csv(run_dir / "feature_importance.csv", index=False)
    png = calibration_plot(res.test_lengths, res.test_predictions, run_dir / "calibration.png")
    tracker.log_image("calibration", png)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
