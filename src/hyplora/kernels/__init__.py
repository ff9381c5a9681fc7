"""C++ kernels for CPU inference, compiled on first use into one extension with `torch.utils.cpp_extension`.

- ``decode_attention.cpp``: attention for one-position decoding steps (:mod:`hyplora.harness.decode_attention`);
- ``lorentz_branch.cpp``: the ``seed``/``llr`` HypLoRA branch without autograd (:mod:`hyplora.adapter.layer`).

A build needs a C++ compiler and ninja (~30 s, cached after, one build per kind of CPU). Where it fails,
:func:`extension` warns once and returns None, and every caller keeps its PyTorch path. ``HYPLORA_CPU_KERNELS=0``
turns the kernels off, and with them the packed linear layers of :mod:`hyplora.harness.packed_linear`: the
evaluator's generation is then PyTorch's stock path.
"""

import functools
import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("bindings.cpp", "decode_attention.cpp", "lorentz_branch.cpp")
)
SWITCH = "HYPLORA_CPU_KERNELS"


def build_name() -> str:
    """The extension's name, one per kind of CPU: code built with ``-march=native`` must not be loaded by another CPU
    that shares the build cache (a cluster's home directory), so the name carries a hash of the CPU's feature flags."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        features = next(line for line in cpuinfo if line.startswith(("flags", "Features", "model name")))
    except (OSError, StopIteration):
        features = f"{platform.machine()} {platform.processor()}"
    return "hyplora_cpu_kernels_" + hashlib.sha256(features.encode()).hexdigest()[:10]


def enabled() -> bool:
    """False where ``HYPLORA_CPU_KERNELS=0``: then the evaluator's generation uses PyTorch's own CPU operations."""
    return os.environ.get(SWITCH, "1") != "0"


def cpu_float32_inference(*tensors) -> bool:
    """Whether a call on ``tensors`` is what the CPU inference paths serve: no gradient needed, no CPU autocast, and
    every tensor float32 on a CPU (the fused HypLoRA branch, the packed linear layers)."""
    return (
        not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    )


@functools.cache
def extension():
    """The compiled extension, or None (with one warning saying why) where it cannot be built or is turned off."""
    if not enabled():
        return None
    from torch.utils import cpp_extension

    flags = ["-O3", "-ffast-math", "-fopenmp-simd"] + (
        ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    )
    # at::parallel_for runs on torch's threads only where the extension is compiled with OpenMP (as torch's Linux
    # builds are); without it (a compiler lacking OpenMP: the second try) every kernel runs on one thread
    tries = (["-fopenmp"], []) if sys.platform.startswith("linux") else ([],)
    for threads in tries:
        try:
            return cpp_extension.load(
                build_name(),
                [str(source) for source in SOURCES],
                extra_cflags=flags + threads,
                extra_ldflags=threads,
                verbose=False,
            )
        except Exception as failure:  # no compiler, no ninja, an unsupported platform: PyTorch does the work
            error = failure
    warnings.warn(
        "hyplora: the CPU kernels (hyplora/kernels/*.cpp) could not be built, PyTorch's own operations are used "
        f"instead: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
        stacklevel=2,
    )
    return None
