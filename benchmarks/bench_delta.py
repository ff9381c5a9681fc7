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

    python benchmarks/bench_delta.py                   # the figures in benchmarks/README-delta.md
    python benchmarks/bench_delta.py --sizes 500,1000 --repeats 5
"""

import argparse
import os
import statistics
import time
from functools import partial

import numpy as np
import torch

from hyplora.geometry.hyperbolicity import delta_hyperbolicity, gromov_products, pairwise_distances

TARGETS_S = {2000: 5.0, 5000: 60.0}


def numpy_broadcast_delta(products: np.ndarray) -> float:
    return float(np.max(np.max(np.minimum(products[:, :, None], products[None, :, :]), axis=1) - products))


def numpy_rows_delta(products: np.ndarray) -> float:
    return max(float(np.max(np.max(np.minimum(row[:, None], products), axis=0) - row)) for row in products)


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; d = {args.dim}; median of {args.repeats}"
    )
    header = f"{'n':>6} | {'hyplora s':>9} | {'numpy broadcast s':>17} | {'ratio':>6} | {'numpy rows s':>12} | {'ratio':>6} | target"
    print(header)
    print("-" * len(header))
    for n in map(int, args.sizes.split(",")):
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
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
