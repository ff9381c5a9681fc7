"""Speed of `delta_hyperbolicity` against straightforward NumPy implementations, same points, same run.

For each n: Gaussian points in d dimensions; time `delta_hyperbolicity(points)` end to end (distances,
Gromov products, chunked (max, min) product in float32), median of repeats after one warm-up, with
torch limited to --threads. Baselines, in float64 on the same Gromov products:

- ``numpy broadcast``: ``max(max(minimum(P[:, :, None], P[None]), axis=1) - P)``, an n^3 array; run
  only where it fits in --numpy-memory-gb;
- ``numpy rows``: the same broadcast one row at a time (n^2 memory), run up to --rows-max-n.

Each baseline's δ is checked against the library's (float32 product: within 1e-6 of the diameter).
Targets (2 CPU cores): n = 2000 under 5 s, n = 5000 under 60 s. Check `uptime` first: timings are
only honest on a quiet machine, and the load average is printed with the table.

Exact δ (four-point, every base point), second table, same run: `delta_hyperbolicity(exact=True)`
(the pruned sweep over later points), its (max, min) steps against the unpruned n^4/8, beside the
every-base-point form (n base-point products, n^4/2 steps, up to --every-max-n) and, where installed,
`hypdelta`'s exhaustive mode (`delta_naive_cpu`, an n^3 float64 array per base point, up to
--numpy-memory-gb; an optional benchmark dependency: `pip install hypdelta numba`), every value
checked against ours. --largest-in S grows n by 1.25x until the exact sweep no longer finishes in S
seconds (its time budget) and prints the largest n that did. --points smollm2 uses SmolLM2's input
embeddings of token ids 100..100+n instead of Gaussian points.

    python benchmarks/bench_delta.py                   # the figures in benchmarks/README-delta.md
    python benchmarks/bench_delta.py --sizes 500,1000 --repeats 5
    python benchmarks/bench_delta.py --sizes 0 --exact-sizes 250,500,1000 --points smollm2 --largest-in 60
    python benchmarks/bench_delta.py --sizes 0 --exact-sizes 1000,2000 --largest-in 60 --device cuda   # on a GPU
"""

import argparse
import os
import statistics
import time
from functools import partial

import numpy as np
import torch

from hyplora.geometry.hyperbolicity import delta_hyperbolicity, exact_delta_work, gromov_products, pairwise_distances

TARGETS_S = {2000: 5.0, 5000: 60.0}


def numpy_broadcast_delta(products: np.ndarray) -> float:
    return float(np.max(np.max(np.minimum(products[:, :, None], products[None, :, :]), axis=1) - products))


def numpy_rows_delta(products: np.ndarray) -> float:
    return max(float(np.max(np.max(np.minimum(row[:, None], products), axis=0) - row)) for row in products)


def every_base_point_delta(distances: torch.Tensor) -> float:
    """The O(n^4) form: the base-point δ maximised over every base point (n^4/2 steps)."""
    return max(delta_hyperbolicity(distances, precomputed=True, base_point=w).delta for w in range(len(distances)))


def hypdelta_exhaustive():
    """hypdelta's exhaustive mode (relative δ = 2δ/diam), or None when hypdelta (and numba) are not installed."""
    try:
        from hypdelta.naive import delta_naive_cpu
    except ImportError:
        return None
    return delta_naive_cpu


def benchmark_points(kind: str, n: int, dim: int) -> np.ndarray:
    if kind == "gaussian":
        return np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
    from hyplora.geometry.embeddings import token_embeddings
    from hyplora.harness.base_models import load_model

    model, _ = load_model("smollm2-135m")
    return token_embeddings(model, list(range(100, 100 + n))).numpy()


def exact_table(args) -> None:
    hypdelta = hypdelta_exhaustive()
    print(
        f"\nexact δ ({args.points} points, sweep on {args.device}): ours = pruned sweep over later points (float32 product); "
        f"every-bp = max over n base points (n^4/2 steps); hypdelta exhaustive: "
        f"{'installed' if hypdelta else 'not installed (pip install hypdelta numba)'}; median of {args.repeats}"
    )
    header = (
        f"{'n':>6} | {'ours s':>8} | {'steps':>9} | {'of n^4/8':>8} | {'rel δ exact':>11} | {'rel δ bp0':>9} "
        f"| {'every-bp s':>10} | {'ratio':>6} | {'hypdelta s':>10} | {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for n in map(int, args.exact_sizes.split(",")):
        points = benchmark_points(args.points, n, args.dim)
        distances = pairwise_distances(points)
        exact = partial(delta_hyperbolicity, distances, precomputed=True, exact=True, device=args.device)
        ours_s, ours = median_time(exact, args.repeats)
        base = delta_hyperbolicity(distances, precomputed=True)
        cells = []
        for fn, fits in (
            (partial(every_base_point_delta, distances), n <= args.every_max_n),
            (
                partial(lambda d, diameter: hypdelta(d) * diameter / 2, distances.numpy(), ours.diameter),
                hypdelta and 8 * n**3 <= args.numpy_memory_gb * 2**30,
            ),
        ):
            if not fits:
                cells.append(f"{'-':>10} | {'-':>6}")
                continue
            other_s, other = median_time(fn, 1)
            if abs(other - ours.delta) > 1e-6 * ours.diameter:
                raise SystemExit(f"n={n}: a baseline gives δ={other}, the library {ours.delta}")
            cells.append(f"{other_s:>10.3f} | {other_s / ours_s:>5.1f}x")
        print(
            f"{n:>6} | {ours_s:>8.3f} | {ours.work:>9.2e} | {ours.work / exact_delta_work(n):>8.4f} "
            f"| {ours.relative_delta:>11.4f} | {base.relative_delta:>9.4f} | {cells[0]} | {cells[1]}",
            flush=True,
        )
    if args.largest_in:
        n, largest = 250, None
        while True:
            distances = pairwise_distances(benchmark_points(args.points, n, args.dim))
            start = time.perf_counter()
            result = delta_hyperbolicity(
                distances, precomputed=True, exact=True, time_budget_s=args.largest_in, device=args.device
            )
            seconds = time.perf_counter() - start
            print(
                f"  n = {n}: {result.method} in {seconds:.1f} s, {result.work:.2e} steps, "
                f"rel δ in [{result.relative_delta:.4f}, {result.relative_delta_upper:.4f}], "
                f"{result.base_points_done} of {n - 3} base points",
                flush=True,
            )
            if result.method != "exact":
                break
            largest, n = n, int(n * 1.25)
        print(f"largest n with exact δ in {args.largest_in:g} s: {largest}")


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000,5000")
    parser.add_argument("--dim", type=int, default=576, help="point dimension (SmolLM2's embedding size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--numpy-memory-gb", type=float, default=2.0)
    parser.add_argument("--rows-max-n", type=int, default=2000)
    parser.add_argument("--exact-sizes", default="100,250,500,1000", help="n of the exact-δ table; 0 = skip it")
    parser.add_argument("--every-max-n", type=int, default=250, help="largest n for the every-base-point form")
    parser.add_argument("--points", choices=("gaussian", "smollm2"), default="gaussian", help="exact-δ table clouds")
    parser.add_argument("--largest-in", type=float, default=0.0, help="find the largest n with exact δ in S seconds")
    parser.add_argument("--device", default="cpu", help="where the exact sweep runs (cuda: the same tensor code)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; d = {args.dim}; median of {args.repeats}"
    )
    header = f"{'n':>6} | {'hyplora s':>9} | {'numpy broadcast s':>17} | {'ratio':>6} | {'numpy rows s':>12} | {'ratio':>6} | target"
    print(header)
    print("-" * len(header))
    for n in [n for n in map(int, args.sizes.split(",")) if n]:
        points = np.random.default_rng(n).normal(size=(n, args.dim)).astype(np.float32)
        delta_hyperbolicity(points[: min(n, 200)])  # warm-up
        ours_s, ours = median_time(partial(delta_hyperbolicity, points), args.repeats)
        products = gromov_products(pairwise_distances(points), 0).numpy()
        cells = []
        for fn, fits in (
            (numpy_broadcast_delta, 8 * n**3 <= args.numpy_memory_gb * 2**30),
            (numpy_rows_delta, n <= args.rows_max_n),
        ):
            if not fits:
                cells.append(f"{'-':>17} | {'-':>6}" if fn is numpy_broadcast_delta else f"{'-':>12} | {'-':>6}")
                continue
            base_s, base = median_time(partial(fn, products), 1 if n > 1000 else args.repeats)
            if abs(base - ours.delta) > 1e-6 * ours.diameter:
                raise SystemExit(f"n={n}: {fn.__name__} gives δ={base}, the library {ours.delta}")
            width = 17 if fn is numpy_broadcast_delta else 12
            cells.append(f"{base_s:>{width}.3f} | {base_s / ours_s:>5.1f}x")
        target = TARGETS_S.get(n)
        verdict = f"< {target:g} s: {'pass' if ours_s < target else 'FAIL'}" if target else ""
        print(f"{n:>6} | {ours_s:>9.3f} | {cells[0]} | {cells[1]} | {verdict}", flush=True)
    if args.exact_sizes != "0":
        exact_table(args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
