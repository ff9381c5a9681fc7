"""float32 linear layers through oneDNN with their weights packed once, for the evaluator's generation on a CPU.

``F.linear`` on a CPU goes to MKL's GEMM, which packs the weight into its blocked layout at every call. On the
AVX-512 AMD EPYC of benchmarks/README-eval.md it ran SmolLM2's decoding shapes (49-64 rows) at 80-96 GFLOP/s and
the 576 x 49,152 LM head at 54-65, where oneDNN with the weight packed in advance
(``torch.ops.mkldnn._reorder_linear_weight``, the form ``torch.compile``'s CPU freezing uses) ran them at 95-113 and
98-106. The packed copy holds as many bytes as the weight; it is made on a layer's first call inside the block
and dropped on exit.

Only ``torch.nn.Linear`` layers (PEFT's ``base_layer`` included) whose sides are both at least
:data:`MIN_FEATURES` are packed, so low-rank adapter matrices stay on MKL, which is faster at those shapes. A call
runs packed only without gradients or autocast, with a float32 CPU input; anything else is the layer's own forward.
The results equal MKL's to float32 rounding (another order of summation).
"""

import contextlib

import psutil
import torch

from hyplora import kernels

MIN_FEATURES = 128
"""Layers with fewer input or output features (a rank-32 adapter's ``lora_A``/``lora_B``) keep MKL."""


def available() -> bool:
    """Whether this PyTorch has oneDNN with the packed-linear operators (and ``HYPLORA_CPU_KERNELS`` is not 0)."""
    return (
        kernels.enabled()
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _packable(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
        and min(module.weight.shape) >= MIN_FEATURES
    )


def _packed_forward(module: torch.nn.Linear):
    """``module.forward`` computing ``x W^T + b`` with ``W`` packed at the first eligible call (repacked if ``W``
    changed in place since)."""
    original, packed, version = module.forward, None, None

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal packed, version
        if not kernels.cpu_float32_inference(x):
            return original(x)
        if packed is None or version != module.weight._version:
            rows = x.numel() // x.shape[-1]
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), rows)
            version = module.weight._version
        return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")

    return forward


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module):
    """Within the block, ``model``'s float32 CPU ``nn.Linear`` layers run packed through oneDNN (module docstring);
    on exit each gets its own forward back and the packed copies are freed. A no-op without oneDNN, or where the
    copies would take more than half of the memory available now."""
    layers = [module for module in model.modules() if _packable(module)] if available() else []
    copies = sum(module.weight.nbytes for module in layers)
    if copies > psutil.virtual_memory().available / 2:
        layers = []
    own = {module: module.__dict__.get("forward") for module in layers}  # accelerate's hooks set one, say
    for module in layers:
        module.forward = _packed_forward(module)
    try:
        yield model
    finally:
        for module, forward in own.items():
            if forward is None:
                del module.forward
            else:
                module.forward = forward
