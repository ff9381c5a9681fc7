r"""Gromov δ-hyperbolicity of a finite metric space.

A metric space is δ-hyperbolic when, for a base point :math:`w` and all points :math:`x, y, z`,

.. math::
    (x|y)_w \ge \min\big((x|z)_w, (z|y)_w\big) - \delta,
    \qquad (x|y)_w = \tfrac12\big(d(x,w) + d(y,w) - d(x,y)\big).

With :math:`P = [(x|y)_w]` this is :math:`\delta_w = \max_{x,y} \big((P \otimes P)_{xy} - P_{xy}\big)`,
where :math:`(A \otimes B)_{xy} = \max_z \min(A_{xz}, B_{zy})` is the (max, min) matrix product [2, 3].
Maximised over every base point it equals the four-point condition [1]: for each quadruple, sort the
pair sums :math:`S_1 \ge S_2 \ge S_3` of :math:`d(x,y)+d(z,w)`, :math:`d(x,z)+d(y,w)`, :math:`d(x,w)+d(y,z)`;
then :math:`\delta = \max (S_1 - S_2)/2`. The relative delta :math:`2\delta/\operatorname{diam}` is
scale-free: 0 on trees, 1 on a cycle of :math:`4k` vertices.

Exact δ from base points after w only. With :math:`A = d(x,y) + d(z,w)`, :math:`B = d(x,z) + d(y,w)`,
:math:`C = d(y,z) + d(x,w)`, the base-point term is

.. math::
    \min\big((x|z)_w, (z|y)_w\big) - (x|y)_w = \tfrac12\big(A - \max(B, C)\big),

which is <= 0 unless A is the largest pair sum, and then equals the quadruple's four-point value
:math:`(S_1 - S_2)/2`. That value is symmetric in the four points, and each point of a quadruple is
paired with another in the largest sum: so every quadruple reaches its value at each of its four
points as base point (z = the partner of w in :math:`S_1`). Taking w = the smallest index of the
quadruple, :math:`\delta = \max_w \delta_w^{\ge w}`, where :math:`\delta_w^{\ge w}` is the base-point δ
of the points with index >= w at base point w (a quadruple with a repeated point has value 0).
Sweeping w costs :math:`\sum_{m \le n} m^2 (m+1)/2 \approx n^4/8` (max, min) steps instead of :math:`n^4/2`.

Pruning against the running lower bound L, exactly: for :math:`z \notin \{x, y\}` the term is at most
:math:`\min(r_x, r_y) - P_{xy}` with :math:`r_x = \max_{z \ne x} P_{xz}`, and :math:`z \in \{x, y\}` gives 0;
a pair whose bound is <= L cannot raise L and is skipped. Every term is at most its quadruple's
value, so L is always a lower bound of δ, and :math:`\delta \le 2\delta_0` (the Gromov-product
condition with :math:`\delta_w` at one base point holds with :math:`2\delta_w` at every other [1]) bounds
it from above: an interrupted sweep returns the bracket :math:`[L, 2\delta_0]`.

References:
    [1] M. Gromov, "Hyperbolic groups", Essays in Group Theory, 1987.
    [2] I. Chami et al., "Hyperbolic Graph Convolutional Neural Networks", NeurIPS 2019 (δ at one
        base point from the Gromov-product matrix; the protocol of HypLoRA's second release).
    [3] H. Fournier, A. Ismail, A. Vigneron, "Computing the Gromov hyperbolicity of a discrete
        metric space", Information Processing Letters, 2015.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from hyplora.errors import InputError

# A base point whose surviving pairs exceed this fraction of all pairs runs the dense product, which is
# ~5x faster per step than gathering the pairs' rows (measured on 2 CPU cores at n = 1000).
_DENSE_FRACTION = 0.2
# Gathered elements per pair chunk (two (pairs, m) float32 operands of 4 MB each), and chunks per round between
# updates of the running maximum (and budget checks): enough to keep 8 workers busy.
_CHUNK_ELEMENTS = 1 << 20
_CHUNKS_PER_ROUND = 8

# Rows of the (max, min) product per block: the running (rows, n) maximum stays in cache for
# n <= ~4000 (float32), while the Python loop over z runs n * n / 256 steps in all.
_ROWS_PER_BLOCK = 256


@dataclass(frozen=True)
class Hyperbolicity:
    """The δ of a point set and what it was computed from.

    Attributes:
        delta: the Gromov δ (same unit as the distances).
        diameter: the largest pairwise distance.
        num_points: the number of points.
        method: ``"base_point"`` (exact at one base point), ``"exact"`` (the four-point δ),
            ``"bracket"`` (an exact sweep stopped by its budget: ``delta <= δ <= delta_upper``) or
            ``"sampled"`` (a lower bound from random quadruples).
        base_point: the base point's index for ``"base_point"``, else None.
        delta_upper: for ``"exact"`` and ``"bracket"``, the certified upper end (``== delta`` when exact).
        work: (max, min) steps done (one step: one ``min`` and one ``max`` of one (x, y, z)); for
            ``"base_point"``, ``"exact"`` and ``"bracket"``.
        base_points_done: for ``"exact"`` and ``"bracket"``, how many base points the sweep finished.
    """

    delta: float
    diameter: float
    num_points: int
    method: str
    base_point: int | None = None
    delta_upper: float | None = None
    work: int | None = None
    base_points_done: int | None = None

    @property
    def relative_delta(self) -> float:
        """:math:`2\\delta / \\operatorname{diam}`, in [0, 1] for any metric."""
        return 2.0 * self.delta / self.diameter

    @property
    def relative_delta_upper(self) -> float | None:
        """:math:`2\\delta_{upper} / \\operatorname{diam}` for ``"exact"`` and ``"bracket"``, else None."""
        return None if self.delta_upper is None else 2.0 * self.delta_upper / self.diameter


def exact_delta_work(n: int) -> int:
    """(max, min) steps of the exact sweep without pruning: :math:`\\sum_{m=4}^{n} m^2 (m+1)/2 \\approx n^4/8`.

    The worst case of ``delta_hyperbolicity(exact=True)``; pruning usually does far fewer (the
    result's ``work``). 2 CPU cores do about 3e9 dense steps/s, so n = 1000 is at most ~40 s.
    """
    return sum(m * m * (m + 1) // 2 for m in range(4, n + 1))


def pairwise_distances(points) -> torch.Tensor:
    """Euclidean distance matrix of ``points`` ``(n, d)``, in float64, exactly symmetric with a zero diagonal."""
    x = _as_float64(points, "points")
    if x.ndim != 2:
        raise InputError(f"points: expected a 2-D array (n, d), got shape {tuple(x.shape)}")
    with _worker_pool() as pool:
        return _pairwise_distances(x, pool)


def gromov_products(distances: torch.Tensor, base_point: int = 0) -> torch.Tensor:
    r"""Gromov products at a base point: :math:`P_{xy} = \tfrac12 (d_{xw} + d_{yw} - d_{xy})`, with :math:`w` = ``base_point``."""
    to_base = distances[base_point]
    return 0.5 * (to_base[:, None] + to_base[None, :] - distances)


def delta_hyperbolicity(
    x,
    *,
    precomputed: bool = False,
    base_point: int = 0,
    exact: bool = False,
    dtype: torch.dtype = torch.float32,
    time_budget_s: float | None = None,
    work_budget: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Hyperbolicity:
    r"""Gromov δ of a point cloud or distance matrix, exactly, by the (max, min) product of Gromov products.

    .. math::
        \delta_w = \max_{x,y} \Big( \max_z \min(P_{xz}, P_{zy}) - P_{xy} \Big)

    The product is computed over row blocks and only for :math:`y \ge x` (it is symmetric), so memory
    stays :math:`O(n^2)` and time is :math:`n^3/2` (min, max) steps; the blocks run on
    ``torch.get_num_threads()`` worker threads (torch's intra-op threads are 1 meanwhile).

    In float32 (the default) the product is still exact for the rounded Gromov products, because
    rounding is monotone and so commutes with min and max: δ is off by at most about one float32
    ulp of the diameter (~1e-7·diam). Pass ``dtype=torch.float64`` for the float64 value at
    twice the cost.

    Args:
        x: points ``(n, d)`` (Euclidean distances), or a distance matrix ``(n, n)`` with ``precomputed=True``.
        precomputed: ``x`` is a symmetric distance matrix with a zero diagonal.
        base_point: index of the base point :math:`w` (HGCN uses 0).
        exact: the four-point δ, by the pruned sweep of base points over the points after them
            (module docstring): at most :func:`exact_delta_work` steps.
        dtype: dtype of the (max, min) product.
        time_budget_s: with ``exact``, stop after about this many seconds and return the bracket reached
            (checked between rounds of pairs: a base point's :math:`O(n^2)` bounds can overrun it, ~20 s at n = 10^4).
        work_budget: with ``exact``, stop after about this many (max, min) steps likewise.
        device: where the products run (``"cuda"`` runs the same tensor code on a GPU).
        progress: with ``exact``, a tqdm bar over the base points.

    Returns:
        Hyperbolicity: δ (or with ``exact`` and a budget that ran out, the bracket ``delta <= δ <= delta_upper``),
        the diameter, ``relative_delta`` = 2δ/diam and the steps done.

    Raises:
        InputError: fewer than 4 points, NaN/inf, a malformed distance matrix, a base point out
            of range, a diameter of 0, or a budget <= 0.
    """
    for name, budget in (("time_budget_s", time_budget_s), ("work_budget", work_budget)):
        if budget is not None and budget <= 0:
            raise InputError(f"{name}={budget}: a budget must be > 0")
    with _worker_pool() as pool:
        distances = _checked_distance_matrix(x) if precomputed else _pairwise_distances(_checked_points(x), pool)
        n = distances.shape[0]
        diameter = _checked_diameter(float(distances.max()))
        distances = distances.to(device)
        if exact:
            deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
            return _exact_sweep(distances, diameter, dtype, pool, deadline, work_budget, progress)
        if not 0 <= base_point < n:
            raise InputError(f"base_point={base_point} is out of range for {n} points")
        products = gromov_products(distances, base_point).to(dtype)
        return Hyperbolicity(_dense_delta(products, pool), diameter, n, "base_point", base_point, work=_dense_work(n))


def sampled_delta_hyperbolicity(
    x, *, num_samples: int = 100_000, seed: int = 0, precomputed: bool = False, batch_size: int = 65_536
) -> Hyperbolicity:
    r"""Four-point δ estimated on random quadruples: a lower bound of the exact (all base points) δ.

    .. math::
        \hat\delta = \max_{\text{sampled } (x,y,z,w)} \tfrac12 (S_1 - S_2)

    where :math:`S_1 \ge S_2 \ge S_3` are the three pair sums. This is the standard four-point
    condition. The first (v1) HypLLM release instead sorts the six distances and takes
    :math:`(d_5 + d_6 - d_3 - d_4)/2`, which is not the four-point condition and does not vanish on
    trees in general; it is not reproduced here.

    Quadruples are drawn uniformly with replacement (a repeated point only adds a zero). The
    diameter is exact: from the matrix, or from the points in row chunks (time :math:`O(n^2 d)`,
    memory :math:`O(n)` per chunk row).

    Args:
        x: points ``(n, d)``, or a distance matrix with ``precomputed=True``.
        num_samples: number of quadruples.
        seed: seed of the NumPy generator that draws them.
        precomputed: ``x`` is a distance matrix.
        batch_size: quadruples evaluated at once.

    Returns:
        Hyperbolicity with ``method="sampled"``.

    Raises:
        InputError: as :func:`delta_hyperbolicity`, or ``num_samples < 1``.
    """
    if num_samples < 1:
        raise InputError(f"num_samples={num_samples}: need at least one quadruple")
    if precomputed:
        distances = _checked_distance_matrix(x)
        n, diameter = distances.shape[0], _checked_diameter(float(distances.max()))

        def pair_distance(i, j):
            return distances[i, j]
    else:
        points = _checked_points(x)
        n = points.shape[0]
        with _worker_pool() as pool:
            diameter = _checked_diameter(
                max(
                    pool.map(
                        lambda i: float(torch.cdist(points[i : i + _ROWS_PER_BLOCK], points).max()),
                        range(0, n, _ROWS_PER_BLOCK),
                    )
                )
            )

        def pair_distance(i, j):
            return torch.linalg.vector_norm(points[i] - points[j], dim=-1)

    rng = np.random.default_rng(seed)
    delta = 0.0
    for start in range(0, num_samples, batch_size):
        quads = torch.from_numpy(rng.integers(0, n, size=(min(batch_size, num_samples - start), 4)))
        a, b, c, d = quads.unbind(1)
        sums = (
            torch.stack(
                [
                    pair_distance(a, b) + pair_distance(c, d),
                    pair_distance(a, c) + pair_distance(b, d),
                    pair_distance(a, d) + pair_distance(b, c),
                ],
                dim=1,
            )
            .sort(dim=1, descending=True)
            .values
        )
        delta = max(delta, float(0.5 * (sums[:, 0] - sums[:, 1]).max()))
    return Hyperbolicity(delta, diameter, n, "sampled")


def _exact_sweep(distances, diameter, dtype, pool, deadline, work_budget, progress) -> Hyperbolicity:
    """The four-point δ as :math:`\\max_w \\delta_w^{\\ge w}`, pruned against the running maximum; stops at a budget."""
    n = distances.shape[0]
    lower, upper, work = 0.0, diameter / 2, 0  # δ <= diam / 2 for any metric

    def out_of_budget(pending_steps: int = 0) -> bool:
        return (deadline is not None and time.perf_counter() > deadline) or (
            work_budget is not None and work + pending_steps >= work_budget
        )

    for w in tqdm(range(n - 3), desc="exact δ: base points", unit="pt", disable=not progress):
        products = gromov_products(distances[w:, w:], 0).to(dtype)  # base point w, the points after it
        lower, steps, unchecked_bound = _pruned_delta(products, lower, pool, out_of_budget)
        work += steps
        if w == 0:  # δ_0 <= max(lower, the bound of the pairs not checked); δ <= 2 δ_0
            upper = min(upper, 2 * max(lower, unchecked_bound))
        if unchecked_bound > lower:
            return Hyperbolicity(lower, diameter, n, "bracket", delta_upper=upper, work=work, base_points_done=w)
        if w < n - 4 and out_of_budget():
            return Hyperbolicity(lower, diameter, n, "bracket", delta_upper=upper, work=work, base_points_done=w + 1)
    return Hyperbolicity(lower, diameter, n, "exact", delta_upper=lower, work=work, base_points_done=n - 3)


def _pruned_delta(products: torch.Tensor, lower: float, pool: ThreadPoolExecutor, out_of_budget):
    """``max(lower, δ at base point 0 of products)``, skipping pairs whose bound cannot beat the running value.

    ``out_of_budget(steps)`` is asked between rounds of pairs. Returns ``(value, steps, unchecked_bound)``;
    ``unchecked_bound`` is the largest bound of the pairs left unchecked when the budget ran out (``-inf``
    when every pair was settled).
    """
    m = products.shape[0]
    off_diagonal = products.clone().fill_diagonal_(-torch.inf)
    row_max = off_diagonal.amax(dim=1).double()  # r_x = max_{z != x} P[x, z]
    exact64 = products.double()
    # Pairs x < y with min(r_x, r_y) - P[x, y] > lower; bounds in float64 from the rounded products, so never below
    # the true term of the rounded products. Each row's best pair is checked first to raise the running value.
    upper_triangle = torch.triu(torch.ones(m, m, dtype=torch.bool, device=products.device), diagonal=1)
    bounds = torch.minimum(row_max[:, None], row_max[None, :]) - exact64
    bounds = bounds.masked_fill_(~upper_triangle, -torch.inf)
    best_y = bounds.argmax(dim=1)
    seeds = torch.arange(m, device=products.device)
    value = max(lower, _pair_terms(products, exact64, seeds, best_y, pool))
    steps = m * m
    pairs = (bounds > value).nonzero()
    if len(pairs) > _DENSE_FRACTION * m * (m - 1) / 2:
        return max(value, _dense_delta(products, pool)), steps + _dense_work(m), -torch.inf
    pair_bounds = bounds[pairs[:, 0], pairs[:, 1]]
    order = pair_bounds.argsort(descending=True)
    pairs, pair_bounds = pairs[order], pair_bounds[order]
    chunk = max(1, _CHUNK_ELEMENTS // m) * _CHUNKS_PER_ROUND
    start = 0
    while start < len(pairs) and float(pair_bounds[start]) > value:
        if out_of_budget(steps):
            return value, steps, float(pair_bounds[start])
        batch = pairs[start : start + chunk]
        value = max(value, _pair_terms(products, exact64, batch[:, 0], batch[:, 1], pool))
        steps += len(batch) * m
        start += len(batch)
    return value, steps, -torch.inf


def _pair_terms(products, exact64, xs, ys, pool: ThreadPoolExecutor) -> float:
    """:math:`\\max_k \\big(\\max_z \\min(P_{x_k z}, P_{z y_k}) - P_{x_k y_k}\\big)` over pairs, gathered rows in chunks on ``pool``."""
    per_chunk = max(1, _CHUNK_ELEMENTS // products.shape[0])

    def chunk_term(start: int) -> float:
        x, y = xs[start : start + per_chunk], ys[start : start + per_chunk]
        left = products[x]
        maxmin = torch.minimum(left, products[y], out=left).amax(dim=1)  # P is symmetric: P[z, y] = P[y, z]
        return float((maxmin.double() - exact64[x, y]).max())

    return max(pool.map(chunk_term, range(0, len(xs), per_chunk)))


def _dense_work(m: int) -> int:
    """(max, min) steps of one dense base point on m points: pairs y >= x, every z."""
    return m * m * (m + 1) // 2


def _dense_delta(products: torch.Tensor, pool: ThreadPoolExecutor) -> float:
    """δ at base point w from its products: the largest :math:`(P \\otimes P - P)_{xy}` over :math:`y \\ge x`, row blocks on ``pool``."""

    def block_delta(start: int) -> float:
        rows = products[start : start + _ROWS_PER_BLOCK]  # (b, n): P[x, z] for x in the block
        maxmin = _maxmin_rows(rows, products[:, start:])  # (b, m): y >= block start only
        return float((maxmin.double() - rows[:, start:].double()).max())

    return max(pool.map(block_delta, range(0, products.shape[0], _ROWS_PER_BLOCK)))


@contextmanager
def _worker_pool():
    """Worker threads, as many as ``torch.get_num_threads()``, with torch's own intra-op threads set to 1 meanwhile.

    Each worker owns whole row blocks (of distances, or of the (max, min) product), so nothing
    waits on a barrier per operation. With intra-op (OpenMP) threads instead, each of the
    :math:`n^2/b` small operations synchronises the threads, which on a busy shared machine was
    10-40x slower than one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def _maxmin_rows(rows: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(max, min) product ``rows ⊗ right`` of a ``(b, n)`` block and an ``(n, m)`` matrix, one z at a time."""
    result = torch.full((rows.shape[0], right.shape[1]), -torch.inf, dtype=rows.dtype, device=rows.device)
    step = torch.empty_like(result)
    for z in range(rows.shape[1]):
        torch.minimum(rows[:, z : z + 1], right[z], out=step)  # (b, 1) against (m,): min(P[x, z], P[z, y])
        torch.maximum(result, step, out=result)
    return result


def _as_float64(x, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{name}: expected real numbers, got dtype {tensor.dtype}")
    tensor = tensor.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name}: contains NaN or inf")
    return tensor


def _checked_points(x) -> torch.Tensor:
    points = _as_float64(x, "points")
    if points.ndim != 2:
        raise InputError(f"points: expected a 2-D array (n, d), got shape {tuple(points.shape)}")
    if points.shape[0] < 4:
        raise InputError(f"points: δ-hyperbolicity needs at least 4 points, got {points.shape[0]}")
    return points


def _pairwise_distances(points: torch.Tensor, pool: ThreadPoolExecutor) -> torch.Tensor:
    starts = range(0, points.shape[0], _ROWS_PER_BLOCK)
    distances = torch.cat(list(pool.map(lambda i: torch.cdist(points[i : i + _ROWS_PER_BLOCK], points), starts)))
    distances = torch.maximum(distances, distances.T)  # cdist's matmul path is symmetric only to rounding
    return distances.fill_diagonal_(0.0)


def _checked_distance_matrix(x) -> torch.Tensor:
    distances = _as_float64(x, "distance matrix")
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise InputError(f"distance matrix: expected a square (n, n) array, got shape {tuple(distances.shape)}")
    if distances.shape[0] < 4:
        raise InputError(f"distance matrix: δ-hyperbolicity needs at least 4 points, got {distances.shape[0]}")
    scale = float(distances.abs().max())
    if (distances < 0).any() or (distances.diagonal() != 0).any():
        raise InputError("distance matrix: distances must be >= 0 with a zero diagonal")
    if not torch.allclose(distances, distances.T, rtol=0.0, atol=1e-9 * scale):
        raise InputError("distance matrix: not symmetric")
    return distances


def _checked_diameter(diameter: float) -> float:
    if diameter <= 0:
        raise InputError("all points coincide (diameter 0): δ relative to the diameter is undefined")
    return diameter
