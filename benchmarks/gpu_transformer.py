"""Full MiniLM fine-tuning of the transformer length model on a GPU machine, and its latency.

The CPU default (``python train.py predictor=transformer``) trains a frozen-encoder head on a
budget of prompts; this script runs the *same* estimator (``TransformerLength(mode="finetune")``)
on the whole default training split where a CUDA GPU is present, and reports the held-out
metrics (the same prompt-grouped test split as ``python train.py``) and batched latency.

Two steps, because the GPU machine has torch/transformers/pandas but neither our data pipeline's
extras nor the encoder wheel, and only ~64 MiB travel with the working tree:

1. here: ``python -m benchmarks.gpu_transformer prepare .gpu`` writes the train/val/test
   split (parquet, only the columns the model reads) and a copy of all-MiniLM-L6-v2 whose
   vocabulary is pruned to the word pieces that occur in these prompts (float16 weights; the
   pruned WordPiece tokenizer segments every prompt of the corpus exactly as the full one,
   checked on a sample, because greedy longest-match only ever picks pieces that are kept);
2. there: ``python -m benchmarks.gpu_transformer run .gpu $OUT`` fine-tunes, scores and times,
   writing ``gpu_transformer.json`` and ``test_pred.csv`` (p50, p90 per test row).

``python -m benchmarks.gpu_transformer ensemble .gpu RESULT_DIR`` (here) adds the LightGBM
artifact's predictions on the same test rows and reports the average of the two models.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["prompt", "prompt_tokens", "tenant", "tier", "category", "source", "model"]
TARGET = "output_tokens"


def load_split(inp: Path, name: str) -> pd.DataFrame:
    """One prepared split with its prompt texts joined back (``prompt_id`` -1: no prompt)."""
    texts = pd.read_parquet(inp / "prompts.parquet")["prompt"].astype(object).to_numpy()
    df = pd.read_parquet(inp / f"{name}.parquet")
    pid = df.pop("prompt_id").to_numpy()
    prompt = np.where(pid >= 0, texts[np.clip(pid, 0, None)], None)
    df.insert(0, "prompt", pd.Series(prompt, dtype="string"))
    return df


def prepare(out: Path, max_check: int = 3000) -> None:
    from omegaconf import OmegaConf

    from predictor.datasets import load_training_table
    from predictor.features import MAX_PROMPT_CHARS
    from predictor.training import TrainConfig, prepare_split

    out.mkdir(parents=True, exist_ok=True)
    conf = Path(__file__).resolve().parents[1] / "conf"
    data_cfg = OmegaConf.load(conf / "data" / "default.yaml")
    train_cfg = OmegaConf.load(conf / "train.yaml")["train"]
    train_cfg = OmegaConf.to_container(OmegaConf.merge(train_cfg, {"seed": 0}), resolve=False)
    tc = TrainConfig.from_mapping({**train_cfg, "split": dict(data_cfg.split)})
    table, _ = load_training_table(sources=list(data_cfg.sources))
    splits = dict(zip(("train", "val", "test"), prepare_split(table, tc), strict=True))
    # Prompts are stored once (rows repeat them: CASTILLO samples, AlpacaEval models), rows
    # point at them, so the split travels in a few MiB.
    texts_all = pd.Series(
        pd.concat([df["prompt"] for df in splits.values()]).dropna().unique(), dtype="string"
    )
    code = {t: i for i, t in enumerate(texts_all)}
    pd.DataFrame({"prompt": texts_all}).to_parquet(out / "prompts.parquet", compression="zstd")
    for name, df in splits.items():
        cols = [c for c in COLUMNS if c in df.columns and c != "prompt"] + [TARGET]
        rows = df[cols].reset_index(drop=True)
        rows.insert(
            0, "prompt_id", [code.get(p, -1) if isinstance(p, str) else -1 for p in df["prompt"]]
        )
        rows.to_parquet(out / f"{name}.parquet", index=False, compression="zstd")
        print(f"{name}: {len(df):,} rows, {df['prompt'].nunique():,} distinct prompts")

    texts = sorted(
        {str(p)[:MAX_PROMPT_CHARS] for df in splits.values() for p in df["prompt"].dropna()}
    )
    info = prune_minilm(texts, out / "minilm", max_check)
    print(
        f"pruned vocab {info['vocab']:,} of {info['full_vocab']:,} pieces; {info['mib']:.1f} MiB; "
        f"segmentation identical on {info['checked']:,} prompts; "
        f"max |hidden diff| {info['max_hidden_diff']:.2e}"
    )
    (out / "prepare.json").write_text(json.dumps(info, indent=1))


def prune_minilm(
    texts: list[str], mdir: Path, max_check: int = 3000, max_tokens: int = 128
) -> dict[str, float]:
    """Copy all-MiniLM-L6-v2 to ``mdir`` keeping only the word pieces ``texts`` use within
    their first ``max_tokens`` tokens (the longest input the copy then serves), float16.

    WordPiece splits each word on its own, so pieces dropped beyond ``max_tokens`` cannot change
    the segmentation before it. Raises SystemExit if the pruned tokenizer segments any checked
    text differently within ``max_tokens``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer, BertTokenizerFast

    from predictor.transformer_model import encoder_path

    src = encoder_path()
    tok = AutoTokenizer.from_pretrained(src)
    used: set[int] = set(tok.all_special_ids)
    for i in range(0, len(texts), 2048):
        for ids in tok(texts[i : i + 2048], add_special_tokens=False)["input_ids"]:
            used.update(ids[:max_tokens])
    keep = sorted(used)  # old ids, ascending: [PAD]=0 stays 0
    inv = tok.convert_ids_to_tokens(keep)
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "vocab.txt").write_text("\n".join(inv) + "\n", encoding="utf-8")
    small = BertTokenizerFast(
        vocab={t: i for i, t in enumerate(inv)}, do_lower_case=True, tokenize_chinese_chars=True
    )
    small.model_max_length = 512
    small.save_pretrained(mdir)
    model = AutoModel.from_pretrained(src)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    key = "embeddings.word_embeddings.weight"
    sd[key] = sd[key][torch.tensor(keep)]
    cfg = model.config
    cfg.vocab_size = len(keep)
    cfg.dtype = "float32"  # weights travel as float16 but train in float32
    cfg.save_pretrained(mdir)
    save_file({k: v.half().contiguous() for k, v in sd.items()}, mdir / "model.safetensors")

    # Check: same segmentation (as strings) and near-identical hidden states.
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), min(max_check, len(texts)), replace=False)]
    a = tok(sample, truncation=True, max_length=max_tokens)["input_ids"]
    b = small(sample, truncation=True, max_length=max_tokens)["input_ids"]
    bad = sum(tok.convert_ids_to_tokens(x) != small.convert_ids_to_tokens(y) for x, y in zip(a, b))
    if bad:
        raise SystemExit(f"pruned tokenizer segments {bad} of {len(sample)} prompts differently")
    pruned = AutoModel.from_pretrained(mdir, dtype=torch.float32)
    kw = {"truncation": True, "max_length": 64, "padding": True, "return_tensors": "pt"}
    with torch.inference_mode():
        ea = model(**tok(sample[:64], **kw)).last_hidden_state
        eb = pruned(**small(sample[:64], **kw)).last_hidden_state
    return {
        "vocab": len(keep),
        "full_vocab": tok.vocab_size,
        "checked": len(sample),
        "max_tokens": max_tokens,
        "mib": sum(f.stat().st_size for f in mdir.iterdir()) / 2**20,
        "max_hidden_diff": float((ea - eb).abs().max()),
    }


def _time_batches(est, rows: pd.DataFrame, batch: int, repeats: int) -> float:
    """Median microseconds per request: featurise (tokenise + encode, cache emptied) + head."""
    import torch

    chunk = rows.iloc[:batch]
    times = []
    for _ in range(repeats + 1):
        est.featurizer_.cache = {}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        est.predict_features(est.featurize(chunk))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]) / len(chunk) * 1e6)


@contextlib.contextmanager
def _encoder_dir(path: Path) -> Iterator[None]:
    """``DRIFTSCHED_MINILM_PATH`` set to ``path`` for the block, restored after."""
    previous = os.environ.get("DRIFTSCHED_MINILM_PATH")
    os.environ["DRIFTSCHED_MINILM_PATH"] = str(path.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DRIFTSCHED_MINILM_PATH", None)
        else:
            os.environ["DRIFTSCHED_MINILM_PATH"] = previous


def run(
    inp: Path,
    out: Path,
    steps: int,
    batch: int,
    max_length: int,
    limit: int | None,
    threads: int = 8,
    epochs: int = 40,
    seed: int = 0,
    time_latency: bool = True,
) -> None:
    import torch

    from predictor.metrics import length_metrics
    from predictor.transformer import TransformerLength

    prep = inp / "prepare.json"
    if prep.is_file() and max_length > json.loads(prep.read_text()).get("max_tokens", 10**9):
        raise SystemExit(
            f"--max-length {max_length} exceeds the {prep} vocabulary's max_tokens; prepare again"
        )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    train, val, test = (load_split(inp, n) for n in ("train", "val", "test"))
    if limit:  # smoke runs on a CPU: the first rows of each split
        train, val, test = (df.iloc[:limit].reset_index(drop=True) for df in (train, val, test))
    est = TransformerLength(
        mode="finetune",
        max_length=max_length,
        batch_size=batch,
        max_steps=steps,
        max_train_prompts=None,
        hidden=128,
        head_batch_size=1024,
        epochs=epochs,
        num_threads=threads,
        device=dev,
        random_state=seed,
    )
    with _encoder_dir(inp / "minilm"):
        t0 = time.perf_counter()
        est.fit(train, train[TARGET].to_numpy(float), eval_set=(val, val[TARGET].to_numpy(float)))
        fit_s = time.perf_counter() - t0
        q = est.predict_quantiles(test)
        lat = (
            {f"batch_{b}_us": _time_batches(est, test, b, 5) for b in (1, 64, 1024)}
            if time_latency
            else {}
        )
    y = test[TARGET].to_numpy(float)
    m = length_metrics(y, q, test["prompt_tokens"].to_numpy(float))
    pd.DataFrame({"p50": q[:, 0], "p90": q[:, 1]}).to_csv(out / "test_pred.csv", index=False)
    res = {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "finetune": {"steps": steps, "batch": batch, "max_length": max_length, "seed": seed},
        "fit_s": fit_s,
        "encode_s": getattr(est, "encode_s_", None),
        "test_metrics": m,
        "latency_us_per_request": lat,
    }
    (out / "gpu_transformer.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def ensemble(inp: Path, result: Path, artifact: Path) -> None:
    from predictor.metrics import length_metrics
    from predictor.serving import load_length_artifact

    test = load_split(inp, "test")
    y = test[TARGET].to_numpy(float)
    pt = test["prompt_tokens"].to_numpy(float)
    tr = pd.read_csv(result / "test_pred.csv")[["p50", "p90"]].to_numpy(float)
    lgb = load_length_artifact(artifact).predict_quantiles(test)
    avg = np.exp((np.log(tr) + np.log(lgb)) / 2.0)  # geometric mean: both models work in log
    table = {
        "transformer_finetuned": length_metrics(y, tr, pt),
        "lightgbm": length_metrics(y, lgb, pt),
        "average": length_metrics(y, avg, pt),
    }
    print(pd.DataFrame(table).T.to_string(float_format=lambda v: f"{v:.3f}"))
    (result / "ensemble.json").write_text(json.dumps(table, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    r = sub.add_parser("run")
    r.add_argument("inp", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--steps", type=int, default=6000)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--max-length", type=int, default=128)
    r.add_argument("--limit", type=int, default=None, help="rows per split (smoke runs)")
    r.add_argument("--threads", type=int, default=8, help="torch CPU threads")
    r.add_argument("--seed", type=int, default=0, help="fine-tuning seed (the split is fixed)")
    r.add_argument("--no-latency", action="store_true", help="skip the latency timing")
    e = sub.add_parser("ensemble")
    e.add_argument("inp", type=Path)
    e.add_argument("result", type=Path)
    e.add_argument("--artifact", type=Path, default=Path("artifacts/length"))
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.out)
    elif a.cmd == "run":
        a.out.mkdir(parents=True, exist_ok=True)
        run(
            a.inp,
            a.out,
            a.steps,
            a.batch,
            a.max_length,
            a.limit,
            a.threads,
            seed=a.seed,
            time_latency=not a.no_latency,
        )
    else:
        ensemble(a.inp, a.result, a.artifact)


if __name__ == "__main__":
    main()
