"""A CPU kernel for decoding attention, used by the evaluator's generation as a `transformers` attention function.

In a decoding step each row's one query position attends to its whole cache: per (row, KV head) a ``G x D`` by
``D x T`` product, too small for SDPA's blocked CPU kernel, which reads the cache at a fifth of memory speed
(benchmarks/README-eval.md). ``kernels/decode_attention.cpp`` reads each key and value once with all ``G`` query
heads of a KV head in registers: 1.5-2.4x SDPA on SmolLM2's shapes, the same results to float32 rounding.

The kernel is compiled on first use with `torch.utils.cpp_extension` (a C++ compiler and ninja, ~30 s, cached
after, one build per kind of CPU). Where that fails, or for anything but float32 single-position decoding on a CPU with a boolean mask,
attention is SDPA's. ``HYPLORA_DECODE_KERNEL=0`` turns the kernel off.
"""

import contextlib
import functools
import hashlib
import os
import platform
import warnings
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

IMPLEMENTATION = "hyplora_decode"
"""The `attn_implementation` name under which the kernel is registered with `transformers`."""
SOURCE = Path(__file__).with_name("kernels") / "decode_attention.cpp"
HEAD_DIMS = (64, 128, 256)


def build_name() -> str:
    """The extension's name, one per kind of CPU: code built with ``-march=native`` must not be loaded by another CPU
    that shares the build cache (a cluster's home directory), so the name carries a hash of the CPU's feature flags."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        features = next(line for line in cpuinfo if line.startswith(("flags", "Features", "model name")))
    except (OSError, StopIteration):
        features = f"{platform.machine()} {platform.processor()}"
    return "hyplora_decode_attention_" + hashlib.sha256(features.encode()).hexdigest()[:10]


@functools.cache
def kernel():
    """The compiled extension, or None (with one warning saying why) where it cannot be built or is turned off."""
    if os.environ.get("HYPLORA_DECODE_KERNEL", "1") == "0":
        return None
    from torch.utils import cpp_extension

    flags = ["-O3", "-ffast-math", "-fopenmp-simd"] + (
        ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    )
    try:
        return cpp_extension.load(build_name(), [str(SOURCE)], extra_cflags=flags, verbose=False)
    except Exception as error:  # no compiler, no ninja, an unsupported platform: SDPA does the work
        warnings.warn(
            f"hyplora: the CPU decoding-attention kernel ({SOURCE.name}) could not be built, SDPA is used instead: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}",
            stacklevel=2,
        )
        return None


def decode_attention(query, key, value, mask, scale: float) -> torch.Tensor:
    """``softmax(scale q k^T, mask) v`` for one query position: ``query (B, H*G, 1, D)``, ``key``/``value``
    ``(B, H, T, D)`` (unit stride in ``D``), ``mask (B, T)`` bool (True attends) or None; returns ``(B, H*G, 1, D)``."""
    empty = torch.empty(0, dtype=torch.bool)
    return kernel().decode_attention(query, key, value, empty if mask is None else mask, scale)


def _kernel_applies(query, key, attention_mask, kwargs) -> bool:
    return (
        query.shape[2] == 1
        and query.device.type == "cpu"
        and query.dtype == key.dtype == torch.float32
        and key.shape[-1] in HEAD_DIMS
        and key.stride(-1) == 1
        and (
            attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.shape[-1] == key.shape[2])
        )
        and all(kwargs.get(name) is None for name in ("softcap", "s_aux", "position_bias"))
        and not kwargs.get("output_attentions", False)
    )


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """`transformers`' attention-function contract (as ``sdpa_attention_forward``): the kernel for a decoding
    step it applies to, SDPA for everything else (prefill, other dtypes and devices, float masks, soft-capping)."""
    if dropout or not _kernel_applies(query, key, attention_mask, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    mask = None if attention_mask is None else attention_mask[:, 0, -1, :]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return decode_attention(query, key, value, mask, scale).transpose(1, 2), None


def _register() -> None:
    """Register the attention function (only ever done once the kernel is built, so it never runs without it)."""
    if IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(IMPLEMENTATION, attention_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def decoding_kernel(model):
    """Within the block, a CPU float32 `transformers` ``model`` (a PeftModel's base model) whose attention is SDPA
    decodes with the kernel; its attention implementation is restored on exit. Any other model is left as it is."""
    previous = getattr(model.config, "_attn_implementation", None)
    parameter = next(model.parameters(), None)
    usable = (
        previous == "sdpa"
        and parameter is not None
        and parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and kernel() is not None
    )
    if not usable:
        yield model
        return
    _register()
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
