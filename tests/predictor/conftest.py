"""Small synthetic traces with real structure (length depends on words, model and tier)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.schema import validate_trace

WORDS = [
    "essay",
    "brief",
    "list",
    "explain",
    "code",
    "poem",
    "summarize",
    "what",
    "define",
    "story",
    "detailed",
    "classify",
]
WEIGHT = {
    "essay": 1.2,
    "brief": -1.0,
    "list": 0.3,
    "explain": 0.6,
    "code": 0.8,
    "poem": 0.2,
    "summarize": -0.2,
    "what": -0.6,
    "define": -0.8,
    "story": 1.0,
    "detailed": 0.9,
    "classify": -1.2,
}
MODELS = {"m-verbose": 0.5, "m-terse": -0.5, "m-mid": 0.0}


def make_trace(n_prompts: int = 60, seed: int = 0, samples: bool = True) -> pd.DataFrame:
    """One row per (prompt, model); log length = word effects + model effect + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        words = list(rng.choice(WORDS, size=3, replace=True))
        prompt = f"Please {words[0]} and {words[1]} about topic {i} ({words[2]})."
        base = 4.5 + sum(WEIGHT[w] for w in words)
        for m, eff in MODELS.items():
            lens = np.maximum(1, np.round(np.exp(base + eff + rng.normal(0, 0.3, 5)))).astype(int)
            rows.append(
                {
                    "request_id": f"r{i}:{m}",
                    "prompt_id": f"p{i}",
                    "tenant": f"t{i % 2}",
                    "tier": ("premium", "standard", "batch")[i % 3],
                    "category": "chat",
                    "source": ("src_a", "src_b")[i % 2],
                    "model": m,
                    "prompt": prompt,
                    "prompt_tokens": len(prompt.split()) + 3,
                    "output_tokens": int(lens[0]),
                    "output_samples": tuple(int(x) for x in lens) if samples else None,
                }
            )
    return validate_trace(pd.DataFrame(rows), "synthetic")


@pytest.fixture(scope="session")
def trace() -> pd.DataFrame:
    return make_trace()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
