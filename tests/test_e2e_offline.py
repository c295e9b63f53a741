"""``python train.py`` then ``python evaluate.py +policy=drift`` with the network blocked.

Both run as a user would (subprocesses, the default ``logger=wandb`` config, no API key, no
offline switch set by us) with a ``sitecustomize`` that blocks every non-local connection and
DNS lookup and logs each attempt, including those a library catches and ignores. Then the
wandb run directories are searched for prompt text: prompts are not copied into wandb unless
the user opts in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.campaign import record
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.reliability  # the campaign of docs/RELIABILITY.md

TRAIN_SMALL = [
    "threads=1",
    "data.sources=[sharegpt]",
    "train.max_train_rows=600",
    "train.max_val_rows=150",
    "train.max_test_rows=150",
    "train.max_drift_traces=300",
    "predictor.length.n_estimators=15",
    "predictor.length.text_dim=8",
    "predictor.length.min_count=5",
    "predictor.drift.n_estimators=10",
    "baselines.tfidf_ridge.max_vocab=2000",
]
EVAL_SMALL = ["workload.n_requests=40", "engine.capacity_sample=40"]


def _run(args: list[str], env: dict[str, str], timeout: int = 400) -> None:
    r = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


def _prompts_found(root: Path, prompts: list[str], only: str) -> list[str]:
    files = [p for p in root.rglob("*") if p.is_file() and only in p.relative_to(root).parts]
    assert files, f"no {only} files under {root}"
    blob = b"".join(p.read_bytes() for p in files)
    keys = {p[:40] for p in prompts if len(p) >= 40}
    # JSON files escape non-ASCII and quotes; the ASCII-only keys are found either way
    return [k for k in keys if k.isascii() and '"' not in k and "\\" not in k
            and k.encode() in blob]  # fmt: skip


@pytest.mark.slow
def test_train_and_evaluate_offline(blocked_subprocess_env, tmp_path):
    env, log = blocked_subprocess_env
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_DIR", None)  # runs go under each Hydra run dir (inside tmp_path)
    art = tmp_path / "artifacts"
    _run(["train.py", *TRAIN_SMALL, f"out_dir={art}", f"hydra.run.dir={tmp_path / 'train'}"], env)
    assert (art / "length").is_dir() and (art / "drift").is_dir()
    run_dir = tmp_path / "evaluate"
    _run(
        ["evaluate.py", "+policy=drift", f"predictor_dir={art}", *EVAL_SMALL,
         f"hydra.run.dir={run_dir}"],
        env,
    )  # fmt: skip
    assert (run_dir / "records.parquet").is_file() and (run_dir / "summary.json").is_file()
    attempts = log.read_text()
    assert attempts == "", f"network attempts while offline:\n{attempts}"
    record("network[train+evaluate subprocess]", "no attempts")

    # privacy: the wandb runs hold metrics and configs, never the prompts
    runs = sorted(tmp_path.rglob("*.wandb"))
    assert len(runs) >= 2, f"expected offline wandb runs of train and evaluate, got {runs}"
    from data.loaders import load_source
    from report.presets import load_workload

    prompts = load_workload("default", 0, EVAL_SMALL[:1]).requests["prompt"].dropna().tolist()
    prompts += load_source("sharegpt")["prompt"].dropna().sample(3000, random_state=0).tolist()
    leaked = _prompts_found(tmp_path, prompts, only="wandb")
    assert leaked == [], f"prompt text found in wandb files: {leaked[:3]}"
    record("privacy[wandb files searched for prompts]", f"{len(prompts)} prompts, none found")


def test_prompt_search_finds_a_planted_prompt(tmp_path):
    """The privacy check above can fail: a prompt planted in a wandb file is found."""
    prompt = "Explain how PagedAttention manages the KV cache across many requests"
    d = tmp_path / "run" / "wandb" / "files"
    d.mkdir(parents=True)
    (d / "table.json").write_text('{"data": [["' + prompt + '", 12]]}')
    assert _prompts_found(tmp_path, [prompt, "short"], only="wandb") == [prompt[:40]]
