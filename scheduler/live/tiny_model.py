"""A tiny Llama-architecture model with random weights, built locally for CPU runs and CI.

vLLM needs a real model directory (config.json, safetensors weights, tokenizer files). For CPU
runs and tests we build one deterministically, with no hub access:

* a byte-level BPE tokenizer trained with ``tokenizers`` on the AlpacaEval prompts shipped in
  ``data/raw`` (``vocab_size`` tokens, specials ``<s>`` ``</s>`` ``<unk>``);
* a ``LlamaForCausalLM`` with ``num_layers`` layers and ``hidden_size`` hidden units whose
  weights are drawn from ``torch.Generator`` seeded with ``seed``; saved as safetensors.

The directory name hashes the spec, so a changed spec never reuses a stale build; a build is
written into a temporary sibling and renamed, so an interrupted build is never half-used.
The weights are random: the model's text is gibberish, which is all the scheduler needs
(trace-driven runs fix every output length with ``max_tokens`` and ``ignore_eos``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO_ROOT / "data" / "raw" / "alpaca_eval" / "alpaca_eval_prompts.jsonl"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 (trainer order)


@dataclass(frozen=True)
class TinyModelSpec:
    vocab_size: int = 2048  # BPE vocabulary, specials included
    hidden_size: int = 128  # model width
    num_layers: int = 2  # decoder layers
    num_heads: int = 2  # head_dim = hidden_size / num_heads = 64 (a CPU attention size)
    intermediate_size: int = 256  # MLP width
    max_position_embeddings: int = 2048  # the model's context (prompt + output tokens)
    seed: int = 0  # weight initialisation seed
    dtype: str = "bfloat16"  # stored weight dtype (vLLM's CPU kernels favour bf16)

    def digest(self) -> str:
        """Short content hash of the spec (and the builder version) for the cache path."""
        payload = json.dumps({**asdict(self), "builder": 1}, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$DRIFTSCHED_CACHE`` or ``~/.cache/driftsched``."""
    env = os.environ.get("DRIFTSCHED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "driftsched"


def _corpus_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny-model tokenizer corpus {path} not found; expected the "
            "AlpacaEval prompts JSONL shipped in data/raw/alpaca_eval"
        )
    lines = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            if "instruction" not in row:
                raise ValueError(f"{path}: line {i + 1}: expected an 'instruction' field")
            lines.append(str(row["instruction"]))
    return lines


def _train_tokenizer(spec: TinyModelSpec, corpus: Path, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus_lines(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.save_pretrained(out)


def _build_weights(spec: TinyModelSpec, vocab_size: int, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        torch_dtype=spec.dtype,
    )
    torch.manual_seed(spec.seed)  # transformers' init draws from the global generator
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            # Explicit draws in name order: independent of transformers' init internals.
            p.copy_(
                torch.randn(p.shape, generator=gen) * 0.05 if p.ndim > 1 else torch.ones_like(p)
            )
    model = model.to(getattr(torch, spec.dtype))
    model.save_pretrained(out, safe_serialization=True)


def ensure_tiny_model(
    spec: TinyModelSpec | None = None,
    cache_dir: str | Path | None = None,
    corpus: str | Path | None = None,
) -> Path:
    """Return the directory of the tiny model for ``spec``, building it on first use."""
    spec = spec or TinyModelSpec()
    if spec.hidden_size % spec.num_heads:
        raise ValueError(
            f"tiny model: hidden_size {spec.hidden_size} is not divisible by "
            f"num_heads {spec.num_heads}"
        )
    if spec.hidden_size // spec.num_heads not in (32, 64, 80, 96, 112, 128):
        raise ValueError(
            f"tiny model: head_dim {spec.hidden_size // spec.num_heads} is not a "
            "size vLLM's CPU attention supports (32, 64, 80, 96, 112, 128)"
        )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-llama-{spec.digest()}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _train_tokenizer(spec, Path(corpus) if corpus else DEFAULT_CORPUS, tmp)
        from transformers import PreTrainedTokenizerFast

        vocab = len(PreTrainedTokenizerFast.from_pretrained(tmp))
        _build_weights(spec, vocab, tmp)
        (tmp / "driftsched_tiny_spec.json").write_text(
            json.dumps({**asdict(spec), "vocab_actual": vocab}, indent=1, sort_keys=True)
        )
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if nobody finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
