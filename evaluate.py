"""``python evaluate.py``: policies drive an engine over a workload; QoS metrics out.

    python evaluate.py                         # every policy in `compare`, comparison table
    python evaluate.py +policy=drift           # one policy
    python evaluate.py -m +policy=fifo,sjf,drift seed=0,1,2
    python evaluate.py engine=sim_paper workload=paper utilisation=1.05 logger=none

Thin entry: compose (Hydra) -> ``report.jobs.run_job``. The job layer builds the workload
(``data.presets``), the engine and the policies, sets the load (utilisation x
``engine.capacity_rps(workload)``), runs ``engine.run(workload, policy)`` per policy, summarises
with ``scheduler.metrics.summarize`` and writes ``records.parquet``, ``steps.parquet`` and
``summary.json`` into the Hydra run directory (``report.runs``; one sub-directory per policy for
the bare command, plus ``comparison.csv``), logging to wandb through ``report.tracking``.

Failures (docs/RELIABILITY.md, part 5): a job whose engine raises or is interrupted (Ctrl-C,
SIGTERM) writes the records the engine kept next to an ``INCOMPLETE`` marker naming the error and
no ``summary.json``, finishes wandb and shuts the engine down; in a multirun sweep the next job
runs (Ctrl-C stops the sweep). ``+faults=<name>`` (``conf/faults/``) injects faults and
``+predictor_guard.deadline_ms=50`` puts learned predictors behind a deadline
(``scheduler.faults``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from report.config_schema import register

register()  # the policy/engine schemas the configs' defaults lists name (before Hydra composes)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from report.jobs import run_job, stop_on_signals

    stop_on_signals()
    summaries = run_job(cfg, Path(HydraConfig.get().runtime.output_dir))
    if summaries is not None and len(summaries) == 1:  # the value a sweeper would optimise
        return float(next(iter(summaries.values()))["latency"]["e2e_s"]["mean"])
    return None


if __name__ == "__main__":
    main()
