"""Named hardware/model profiles for the simulator: step-time coefficients and KV capacity.

Derivation (all numbers are public specs or Vidur's published measurements):

* **Linear operators** (QKV/output projections, MLP, norms, rotary, residual): Vidur's
  per-operator timings of one layer (``data/profiles/vidur``, A100/H100) are summed and fitted as
  ``a + b * tokens`` over 1..512 tokens (:func:`scheduler.sim.cost.fit_vidur_mlp`). On a GPU that
  Vidur did not profile (the L4) we scale from the A100 fit: the intercept ``a`` is the time to
  stream the layer's weights, so it scales with memory bandwidth (``a * BW_ref / BW``); the slope
  ``b`` is compute, so it scales with dense FP16 throughput (``b * FLOPS_ref / FLOPS``).
  ``c0 = n_layers * a + (embedding + LM head weights) / BW + overhead`` and
  ``c_token = n_layers * b``.
* **Decode attention** is memory-bound: ``c_kv = kv_bytes_per_token / BW`` (Vidur's attention
  profiles are not shipped; see the profile README).
* **Prefill attention** is compute-bound: ``c_pair = 4 * n_layers * d_model / (FLOPS * 0.5)``
  (QK^T and PV, 2 FLOPs per MAC, 50% of peak).
* **KV capacity**: ``(mem * gpu_memory_utilization - weights - activation_reserve) /
  (2 * n_layers * n_kv_heads * head_dim * 2 bytes)`` tokens, rounded down to whole blocks; the
  same accounting vLLM does at start-up (``gpu_memory_utilization`` 0.9, activations of the
  profiling run at ``max_num_batched_tokens`` 2048 taken as 1 GiB).

Default ``l4-llama3-8b``: one 24 GB NVIDIA L4 (300 GB/s, 121 TFLOPS dense FP16) serving
Llama-3-8B in FP16. Weights 16.06 GB leave ~4.5 GB of KV = ~34k tokens at 128 KiB/token: the
memory-constrained regime the paper studies. A decode step with 60 sequences and 30k KV tokens
takes ~0.09 s (c0 65 ms: weights, LM head, overhead; attention 13 ms; tokens 9 ms).

**Fitted profiles.** ``profile`` may instead be the path of a JSON step-time profile fitted
from live vLLM steps (``scheduler.sim.calibrate``; e.g. the shipped
``scheduler/sim/fitted/cpu_tiny_llama.json``, see :data:`FITTED_DIR`): its coefficients replace
the derivation above and its ``kv_capacity_tokens`` (the live engine's KV blocks x block size)
sizes the KV cache unless ``num_gpu_blocks`` is set. A relative path is looked up from the
current directory, then from the repository root.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from scheduler.sim.cost import LinearCostModel, fit_vidur_mlp, load_cost_model, read_profile_doc

REPO_ROOT = Path(__file__).resolve().parents[2]
VIDUR_DIR = REPO_ROOT / "data" / "profiles" / "vidur"
FITTED_DIR = Path(__file__).resolve().parent / "fitted"  # shipped fitted profiles (JSON)
GIB = 1024**3
OVERHEAD_S = 0.002  # per-step CPU scheduling + sampling overhead of vLLM v1 (assumption, ~1-3 ms)
ACTIVATION_RESERVE_BYTES = 1 * GIB  # activations of the start-up profiling run (assumption)


@dataclass(frozen=True)
class GPUSpec:
    name: str
    mem_bytes: float  # device memory visible to the framework
    bandwidth_Bps: float  # HBM/GDDR bandwidth, bytes/s
    fp16_flops: float  # dense FP16/BF16 tensor throughput, FLOP/s
    vidur: str | None  # prefix of the Vidur profile measured on this GPU, if any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: float  # parameters (weights are FP16: 2 bytes each)
    n_layers: int
    d_model: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    vidur: str  # Vidur model file stem "<org>_<model>"

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * 2  # K and V, FP16

    @property
    def weight_bytes(self) -> float:
        return 2.0 * self.params


GPUS: dict[str, GPUSpec] = {
    # NVIDIA data sheets: L4 24 GB GDDR6 300 GB/s, 121 TFLOPS FP16 dense (242 with sparsity)
    "l4": GPUSpec("l4", 24e9, 300e9, 121e12, None),
    "a100": GPUSpec("a100", 80e9, 2.039e12, 312e12, "a100"),
    "h100": GPUSpec("h100", 80e9, 3.35e12, 989e12, "h100"),
}
MODELS: dict[str, ModelSpec] = {
    "llama3-8b": ModelSpec(
        "llama3-8b", 8.03e9, 32, 4096, 8, 128, 128256, "meta-llama_Meta-Llama-3-8B"
    ),
    "llama2-7b": ModelSpec(
        "llama2-7b", 6.74e9, 32, 4096, 32, 128, 32000, "meta-llama_Llama-2-7b-hf"
    ),
    "phi2": ModelSpec("phi2", 2.78e9, 32, 2560, 32, 80, 51200, "microsoft_phi-2"),
}
PROFILES: dict[str, tuple[str, str]] = {
    "l4-llama3-8b": ("l4", "llama3-8b"),
    "l4-llama2-7b": ("l4", "llama2-7b"),
    "l4-phi2": ("l4", "phi2"),
    "a100-llama3-8b": ("a100", "llama3-8b"),
    "a100-llama2-7b": ("a100", "llama2-7b"),
    "h100-llama2-7b": ("h100", "llama2-7b"),
    "h100-phi2": ("h100", "phi2"),
}


@dataclass(frozen=True)
class Profile:
    name: str
    gpu: GPUSpec
    model: ModelSpec
    cost: LinearCostModel
    kv_capacity_tokens: int  # before rounding to blocks
    fit_r2: float

    def num_blocks(self, block_size: int) -> int:
        if self.kv_capacity_tokens < 1:
            raise ValueError(
                f"profile {self.name!r} does not record a KV capacity; set engine.num_gpu_blocks"
            )
        return self.kv_capacity_tokens // block_size

    def describe(self) -> dict[str, object]:
        return {
            "profile": self.name,
            "gpu": self.gpu.name,
            "model": self.model.name,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "fit_r2": self.fit_r2,
            **self.cost.describe(),
        }


def kv_capacity_tokens(
    gpu: GPUSpec,
    model: ModelSpec,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: float = ACTIVATION_RESERVE_BYTES,
) -> int:
    free = gpu.mem_bytes * gpu_memory_utilization - model.weight_bytes - activation_reserve_bytes
    if free <= 0:
        raise ValueError(
            f"{model.name} ({model.weight_bytes / 1e9:.1f} GB FP16) does not fit on "
            f"{gpu.name} ({gpu.mem_bytes / 1e9:.0f} GB at utilisation "
            f"{gpu_memory_utilization})"
        )
    return int(free // model.kv_bytes_per_token)


def resolve_profile_path(name: str) -> Path | None:
    """The fitted-profile file ``name`` refers to, or None if ``name`` is not a path
    (a ``.json`` name or one with a directory separator)."""
    if not (name.endswith(".json") or "/" in name or "\\" in name):
        return None
    p = Path(name).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in (REPO_ROOT, FITTED_DIR):
        if (base / p).exists():
            return base / p
    return p  # missing: read_profile_doc names it and how to make one


def fitted_profile(path: str | Path) -> Profile:
    """A :class:`Profile` from a fitted JSON step-time profile (module docstring)."""
    path = Path(path)
    doc = read_profile_doc(path)
    meta = doc.get("meta") or {}
    device = str(meta.get("device", "fitted"))
    model = str(meta.get("model", path.stem))
    nan = math.nan
    return Profile(
        name=str(path),
        gpu=GPUSpec(device, nan, nan, nan, None),
        model=ModelSpec(model, nan, 0, 0, 0, 0, 0, ""),
        cost=load_cost_model(path),
        kv_capacity_tokens=int(doc.get("kv_capacity_tokens") or 0),
        fit_r2=float((doc.get("fit") or {}).get("r2", nan)),
    )


def build_profile(name: str, gpu_memory_utilization: float = 0.9) -> Profile:
    """Fit and scale the named profile (see the module docstring for the derivation), or load
    a fitted JSON profile when ``name`` is a path."""
    path = resolve_profile_path(str(name))
    if path is not None:
        return fitted_profile(path)
    if name not in PROFILES:
        raise ValueError(
            f"unknown simulator profile {name!r}; expected one of {sorted(PROFILES)} "
            "or the path of a fitted JSON profile (scheduler.sim.calibrate)"
        )
    gpu = GPUS[PROFILES[name][0]]
    model = MODELS[PROFILES[name][1]]
    ref = gpu if gpu.vidur is not None else GPUS["a100"]
    path = VIDUR_DIR / f"{ref.vidur}__{model.vidur}__mlp.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"Vidur profile {path} is missing (needed by profile {name!r})")
    fit = fit_vidur_mlp(path)
    a = fit.a_s * ref.bandwidth_Bps / gpu.bandwidth_Bps
    b = fit.b_s * ref.fp16_flops / gpu.fp16_flops
    head_bytes = 2.0 * 2 * model.vocab * model.d_model  # embedding + LM head, FP16
    cost = LinearCostModel(
        c0=model.n_layers * a + head_bytes / gpu.bandwidth_Bps + OVERHEAD_S,
        c_token=model.n_layers * b,
        c_kv=model.kv_bytes_per_token / gpu.bandwidth_Bps,
        c_pair=4.0 * model.n_layers * model.d_model / (gpu.fp16_flops * 0.5),
        origin=f"Vidur {path.name} fit (R2={fit.r2:.3f}), scaled {ref.name}->{gpu.name} by "
        "bandwidth (intercept) and FP16 FLOPS (slope); attention from KV bytes/bandwidth",
    )
    return Profile(
        name, gpu, model, cost, kv_capacity_tokens(gpu, model, gpu_memory_utilization), fit.r2
    )
