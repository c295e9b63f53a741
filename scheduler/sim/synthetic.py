"""Small synthetic workloads for tests and benchmarks of the engine (no data files needed).

Lengths are log-normal (heavy-tailed like chat traffic), arrivals Poisson; tiers and tenants are
assigned at random. Real workloads come from ``data.workload.build_workload``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data.schema import TIERS


def synthetic_frame(
    n: int,
    seed: int = 0,
    rate_rps: float = 1.0,
    n_tenants: int = 3,
    prompt_median: float = 200.0,
    output_median: float = 150.0,
    sigma: float = 1.0,
    max_prompt: int = 4096,
    max_output: int = 2048,
    tier_shares: tuple[float, float, float] = (0.5, 0.3, 0.2),
) -> pd.DataFrame:
    """A workload table in the schema of ``data.schema`` (arrivals sorted, Poisson)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, size=n))
    prompt = np.clip(np.round(rng.lognormal(np.log(prompt_median), sigma, n)), 1, max_prompt)
    output = np.clip(np.round(rng.lognormal(np.log(output_median), sigma, n)), 1, max_output)
    tenant = rng.integers(0, n_tenants, size=n)
    tier = rng.choice(len(TIERS), size=n, p=np.asarray(tier_shares) / sum(tier_shares))
    cats = np.array(["short_qa", "summary", "technical", "report"])
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "tenant": [f"t{k}" for k in tenant],
            "tier": [TIERS[k] for k in tier],
            "category": cats[rng.integers(0, len(cats), size=n)],
            "source": "synthetic",
            "model": "unknown",
            "arrival_s": arrivals,
            "prompt_tokens": prompt.astype(np.int64),
            "output_tokens": output.astype(np.int64),
            "max_tokens": np.full(n, max_output, dtype=np.int64),
        }
    )
