"""A CPU kernel for decoding attention, used by the evaluator's generation as a `transformers` attention function.

In a decoding step each row's one query position attends to its whole cache: per (row, KV head) a ``G x D`` by
``D x T`` product, too small for SDPA's blocked CPU kernel, which reads the cache at a fifth of memory speed
(benchmarks/README-eval.md). ``hyplora/kernels/decode_attention.cpp`` reads each key and value once with all ``G``
query heads of a KV head in registers: 1.5-2.4x SDPA on SmolLM2's shapes, the same results to float32 rounding.

The kernel is built on first use (:mod:`hyplora.kernels`). Where that fails, or for anything but float32
single-position decoding on a CPU with a boolean mask, attention is SDPA's.
"""

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from hyplora import kernels
from hyplora.adapter.layer import fused_inference
from hyplora.harness.packed_linear import packed_linears

IMPLEMENTATION = "hyplora_decode"
"""The `attn_implementation` name under which the kernel is registered with `transformers`."""
HEAD_DIMS = (64, 128, 256)


def decode_attention(query, key, value, mask, scale: float) -> torch.Tensor:
    """``softmax(scale q k^T, mask) v`` for one query position: ``query (B, H*G, 1, D)``, ``key``/``value``
    ``(B, H, T, D)`` (unit stride in ``D``), ``mask (B, T)`` bool (True attends) or None; returns ``(B, H*G, 1, D)``."""
    empty = torch.empty(0, dtype=torch.bool)
    return kernels.extension().decode_attention(query, key, value, empty if mask is None else mask, scale)


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
    """Within the block, a CPU float32 `transformers` ``model`` (a PeftModel's base model) runs its linear layers
    packed (:func:`hyplora.harness.packed_linear.packed_linears`), its HypLoRA branches fused
    (:func:`hyplora.adapter.layer.fused_inference`) and, if its attention is SDPA, decodes with the kernel; all is
    restored on exit. Any other model is left as it is, and nothing is built for it."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        yield model
        return
    previous = getattr(model.config, "_attn_implementation", None)
    with packed_linears(model), fused_inference():
        if previous != "sdpa" or kernels.extension() is None:
            yield model
            return
        _register()
        model.set_attn_implementation(IMPLEMENTATION)
        try:
            yield model
        finally:
            model.set_attn_implementation(previous)
