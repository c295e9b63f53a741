"""What the predictor report runs: the generators held out, the variants fitted, the bounded
sizes (:class:`ReportConfig`, the full and the ``--quick`` presets) and the shipped
LightGBM hyperparameters every fit starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import predictor_online as online

REPO = Path(__file__).resolve().parents[1]

CASTILLO_MODELS = (
    "meta-llama--Llama-3.1-8B-Instruct",
    "Qwen--Qwen2.5-32B-Instruct",
    "google--gemma-3-4b-it",
    "mistralai--Mixtral-8x7B-Instruct-v0.1",
)
ALPACA_MODELS = ("Meta-Llama-3.1-8B-Instruct-Turbo", "claude-3-opus-20240229", "gpt4_1106_preview")
VARIANTS: dict[str, str] = {
    "default": "LightGBM quantile p50/p90 as conf/predictor/lightgbm.yaml (since issue 15: "
    "generator descriptors + 20% model-id dropout)",
    "no_generator": "default without generator descriptors and model-id dropout (the default "
    "before issue 15)",
    "rank": "default quantiles + rank_xendcg ranker (groups of 32) for the median",
    "minilm": "default + 32 PCA dims of frozen MiniLM prompt embeddings",
    "samples10": "default trained on all 10 CASTILLO samples per prompt (3 by default)",
}


@dataclass
class ReportConfig:
    max_train_rows: int = 30_000  # rows each length model trains on (after sample explosion)
    max_val_rows: int = 8_000  # early stopping and p90 calibration
    max_test_rows: int = 20_000  # in-distribution test rows scored
    samples_per_prompt: int = 3  # CASTILLO samples per (prompt, model) in training
    lomo_models: tuple[str, ...] = CASTILLO_MODELS + ALPACA_MODELS
    variants: tuple[str, ...] = tuple(VARIANTS)
    online_models: tuple[str, ...] = CASTILLO_MODELS + ALPACA_MODELS[:1]
    stream: int = 1500  # requests served per online run
    concurrency: int = 64  # requests running at once in the online stream
    burn_in: int = 100  # admissions before the online coverage is counted
    refit_every: int = 100  # completions between incremental refits
    refit_rounds: int = 30  # trees per quantile added at a refit
    drift_traces: int = 20_000  # traces the drift model trains on
    drift_models: tuple[str, ...] = (CASTILLO_MODELS[0],)  # lomo splits with a drift refit
    latency_batch: int = 64
    seed: int = 0
    checkpoints: tuple[int, ...] = online.CHECKPOINTS


QUICK = ReportConfig(
    max_train_rows=3000,
    max_val_rows=800,
    max_test_rows=1500,
    lomo_models=(CASTILLO_MODELS[0], ALPACA_MODELS[0]),
    variants=("default", "no_generator"),
    online_models=(CASTILLO_MODELS[0],),
    stream=300,
    concurrency=16,
    burn_in=50,
    refit_every=100,
    refit_rounds=10,
    drift_traces=1500,
    drift_models=(),
    checkpoints=(0, 50, 100, 200),
)


def conf_params(section: str, **over: Any) -> dict[str, Any]:
    """Hyperparameters of conf/predictor/lightgbm.yaml's ``section`` (length | drift) on one
    thread, lists as tuples (as the estimators store them), plus ``over``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "predictor" / "lightgbm.yaml"))
    p = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg[section].items()}
    p = {k: v for k, v in p.items() if not k.startswith("_")}
    p.update(num_threads=1, random_state=0, **over)
    return p
