r"""The relative δ of structureless points: iid Gaussian clouds of given sizes, at given dimensions.

For :math:`n` points drawn iid from :math:`N(\mu, \sigma^2 I_d)`, the relative δ :math:`2\delta/\operatorname{diam}`
does not depend on :math:`\mu` or :math:`\sigma` (it is invariant to translation and scale), only on
:math:`n` and :math:`d`. As :math:`d` grows, pairwise distances concentrate,
:math:`\lVert x_i - x_j \rVert = \sigma\sqrt{2d}\,(1 + O(d^{-1/2}))`, every Gromov product approaches half a
distance, and the relative δ falls roughly as :math:`d^{-1/2}`. So a low relative δ of high-dimensional
embeddings is evidence of tree-like structure only against this null at the same :math:`n` and :math:`d`:
this module gives that reference for the per-prompt protocol of
:mod:`hyplora.geometry.delta_protocols`, at the model's dimension and at the paper's.
"""

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from hyplora.errors import InputError
from hyplora.geometry.hyperbolicity import delta_hyperbolicity

# Hidden sizes of the paper's models (LLaMA-7B, LLaMA3-8B: 4096) and of the 1-2B class (e.g. Gemma 2B: 2048).
PAPER_DIMENSIONS = (2048, 4096)


def null_dimensions(model_dim: int) -> tuple[int, ...]:
    """The dimensions to compute the null at: the model's, then :data:`PAPER_DIMENSIONS`, each once."""
    return tuple(dict.fromkeys((model_dim, *PAPER_DIMENSIONS)))


def gaussian_null_delta(sizes: Sequence[int], dim: int, *, repeats: int = 3, seed: int = 0) -> dict:
    r"""Relative δ at base point 0 of iid :math:`N(0, I_{dim})` clouds, one of ``sizes[i]`` points per prompt.

    Repeat :math:`r` draws all the clouds, in order, from one torch generator seeded ``seed + r``.
    With :math:`\rho_{ri}` the relative δ of cloud :math:`i` in repeat :math:`r`:

    Returns:
        ``{"dim": d, "repeats": R, "mean": mean of all ρ, "std": std of ρ over prompts (ddof=0, pooled over
        repeats), "repeat_means": [mean over prompts of repeat r], "spread": max - min of repeat_means}``.

    Raises:
        InputError: no sizes, a size below 4, ``dim < 1`` or ``repeats < 1``.
    """
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 4:
        raise InputError(f"δ null: needs clouds of at least 4 points, got sizes {sizes[:5]}{'...' if sizes else ''}")
    if dim < 1 or repeats < 1:
        raise InputError(f"δ null: dim={dim} and repeats={repeats} must be positive")
    values = np.empty((repeats, len(sizes)))
    for r in range(repeats):
        generator = torch.Generator().manual_seed(seed + r)
        for i, n in enumerate(sizes):
            points = torch.randn(n, dim, generator=generator, dtype=torch.float64)
            values[r, i] = delta_hyperbolicity(points).relative_delta
    repeat_means = values.mean(axis=1)
    return {
        "dim": dim,
        "repeats": repeats,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "repeat_means": repeat_means.tolist(),
        "spread": float(repeat_means.max() - repeat_means.min()),
    }


def per_prompt_null(sizes: Sequence[int], dims: Iterable[int], *, repeats: int = 3, seed: int = 0) -> dict:
    """:func:`gaussian_null_delta` of the per-prompt point counts ``sizes`` at each dimension, keyed by ``str(dim)``."""
    return {str(d): gaussian_null_delta(sizes, d, repeats=repeats, seed=seed) for d in dims}
