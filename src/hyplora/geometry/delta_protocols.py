"""Two protocols that turn a model and a dataset into relative δ values, each beside a control.

(a) Per prompt (HypLoRA's second release, "Table 2"): the point cloud is the input embeddings of
    the tokens of one test instruction (at most 1500 tokens), δ is taken at base point 0 (the
    first token), and the relative δ is summarised as mean ± std over prompts. Repeated tokens
    are kept once: a repeated point adds no new distance and only zero-δ quadruples, so δ and
    the diameter are unchanged.
(b) Top N: the input embeddings of the N most frequent tokens of a dataset, base point = the
    most frequent token; beside it the exact (four-point) δ, or within a time budget its certified
    bracket.

Controls, computed on every cloud with the same number of points, give the number a reference:
``gaussian`` draws from a Gaussian with the cloud's mean and covariance; ``shuffled`` permutes
each coordinate independently across the points (same marginals, joint structure destroyed).
"""

import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from hyplora.errors import InputError
from hyplora.geometry.embeddings import token_embeddings
from hyplora.geometry.hyperbolicity import Hyperbolicity, delta_hyperbolicity


def gaussian_control(points: torch.Tensor, *, seed: int) -> torch.Tensor:
    """As many points from :math:`N(\\mu, \\hat\\Sigma)` of ``points`` ``(n, d)``.

    The draw is :math:`\\mu + G X_c / \\sqrt{n-1}` with :math:`G_{ij} \\sim N(0,1)` of shape ``(n, n)``.

    Drawing through the centred data :math:`X_c` keeps the exact sample covariance even when
    n < d, where :math:`\\hat\\Sigma` is singular.
    """
    x = points.double()
    centred = x - x.mean(dim=0)
    gauss = torch.randn(x.shape[0], x.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.mean(dim=0) + gauss @ centred / np.sqrt(x.shape[0] - 1)


def shuffled_control(points: torch.Tensor, *, seed: int) -> torch.Tensor:
    """``points`` ``(n, d)`` with each coordinate permuted independently across the n points."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(points.shape, generator=generator), dim=0)
    return torch.gather(points, 0, order)


CONTROLS = {"gaussian": gaussian_control, "shuffled": shuffled_control}


def control_clouds(points: torch.Tensor, *, seed: int) -> dict[str, torch.Tensor]:
    """``{"embeddings": points}`` and each control of it (seeded with ``seed``)."""
    return {"embeddings": points} | {name: control(points, seed=seed) for name, control in CONTROLS.items()}


def cloud_delta(points: torch.Tensor, *, seed: int) -> dict[str, Hyperbolicity]:
    """δ at base point 0 of ``points`` and of each control (seeded with ``seed``)."""
    return {name: delta_hyperbolicity(cloud) for name, cloud in control_clouds(points, seed=seed).items()}


def per_prompt_delta(model, tokenizer, texts: Iterable[str], *, max_tokens: int = 1500, seed: int = 0) -> dict:
    """Protocol (a): relative δ of each prompt's distinct-token embeddings, and of its controls.

    Prompts with fewer than 4 distinct tokens are skipped and counted; wrap ``texts`` in ``tqdm``
    for progress.

    Returns:
        ``{"num_points": [...], "skipped": k, "<cloud>": {"values": [...], "mean": m, "std": s}}``
        for the clouds ``embeddings``, ``gaussian`` and ``shuffled`` (std with ``ddof=0``).

    Raises:
        InputError: no prompt has 4 distinct tokens.
    """
    values: dict[str, list[float]] = {"embeddings": [], **{name: [] for name in CONTROLS}}
    num_points, skipped = [], 0
    for index, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
        distinct = list(dict.fromkeys(ids))
        if len(distinct) < 4:
            skipped += 1
            continue
        for name, result in cloud_delta(token_embeddings(model, distinct), seed=seed + index).items():
            values[name].append(result.relative_delta)
        num_points.append(len(distinct))
    if not num_points:
        raise InputError(f"per-prompt δ: none of {skipped} prompts has at least 4 distinct tokens")
    summary = {name: dict(values=v, mean=float(np.mean(v)), std=float(np.std(v))) for name, v in values.items()}
    return {"num_points": num_points, "skipped": skipped, **summary}


def top_tokens_delta(
    model, counts: Mapping[int, int], *, top_n: int = 1000, seed: int = 0, exact_budget_s: float | None = 120.0
) -> dict:
    """Protocol (b): δ of the input embeddings of the ``top_n`` most frequent tokens, and of the controls.

    Ties in frequency are broken by token id, so the selection is deterministic. Each cloud gets δ at
    base point 0 and the exact δ (:func:`~hyplora.geometry.hyperbolicity.delta_hyperbolicity` with
    ``exact=True``), stopped after ``exact_budget_s`` seconds per cloud (None: no limit) at the bracket
    it reached.

    Returns:
        ``{"num_points": n, "<cloud>": {"delta": δ, "diameter": D, "relative_delta": 2δ/D, "exact": {"method":
        "exact" | "bracket", "relative_delta": lower end, "relative_delta_upper": upper end, "work": steps,
        "base_points_done": k, "seconds": s}}}``.

    Raises:
        InputError: fewer than 4 distinct tokens.
    """
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:top_n]
    if len(ranked) < 4:
        raise InputError(f"top-N δ: needs at least 4 distinct tokens, the data has {len(ranked)}")
    summary: dict = {"num_points": len(ranked)}
    for name, cloud in control_clouds(token_embeddings(model, ranked), seed=seed).items():
        base = delta_hyperbolicity(cloud)
        start = time.perf_counter()
        exact = delta_hyperbolicity(cloud, exact=True, time_budget_s=exact_budget_s, progress=len(ranked) >= 500)
        summary[name] = dict(
            delta=base.delta,
            diameter=base.diameter,
            relative_delta=base.relative_delta,
            exact=dict(
                method=exact.method,
                relative_delta=exact.relative_delta,
                relative_delta_upper=exact.relative_delta_upper,
                work=exact.work,
                base_points_done=exact.base_points_done,
                seconds=round(time.perf_counter() - start, 3),
            ),
        )
    return summary
