"""Gromov δ: agreement with brute force, trees, cycles, controls, bad input."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hyplora.errors import InputError
from hyplora.geometry import hyperbolicity
from hyplora.geometry.delta_protocols import gaussian_control, shuffled_control
from hyplora.geometry.hyperbolicity import (
    delta_hyperbolicity,
    exact_delta_work,
    gromov_products,
    pairwise_distances,
    sampled_delta_hyperbolicity,
)


def brute_force_delta_at(d: np.ndarray, w: int) -> float:
    """max over (x, y, z) of min((x|z)_w, (z|y)_w) - (x|y)_w, by three nested loops."""
    n = len(d)
    gp = lambda x, y: 0.5 * (d[x, w] + d[y, w] - d[x, y])  # noqa: E731
    return max(min(gp(x, z), gp(z, y)) - gp(x, y) for x in range(n) for y in range(n) for z in range(n))


def brute_force_four_point(d: np.ndarray) -> float:
    """The four-point δ: max over ordered quadruples of (S1 - S2) / 2, an O(n^4) loop."""
    best = 0.0
    for a, b, c, e in itertools.product(range(len(d)), repeat=4):
        sums = sorted([d[a, b] + d[c, e], d[a, c] + d[b, e], d[a, e] + d[b, c]])
        best = max(best, (sums[2] - sums[1]) / 2)
    return best


def random_tree_distances(n: int, rng: np.random.Generator) -> np.ndarray:
    """Path distances of a random tree on n vertices with positive edge weights."""
    parent = [int(rng.integers(0, v)) for v in range(1, n)]
    weight = rng.uniform(0.1, 5.0, size=n - 1)
    depth_path = [[0]]
    for v in range(1, n):
        depth_path.append(depth_path[parent[v - 1]] + [v])
    dist_to_root = np.zeros(n)
    for v in range(1, n):
        dist_to_root[v] = dist_to_root[parent[v - 1]] + weight[v - 1]
    d = np.zeros((n, n))
    for x, y in itertools.combinations(range(n), 2):
        common = [a for a, b in zip(depth_path[x], depth_path[y], strict=False) if a == b][-1]  # last common ancestor
        d[x, y] = d[y, x] = dist_to_root[x] + dist_to_root[y] - 2 * dist_to_root[common]
    return d


def cycle_distances(n: int) -> np.ndarray:
    i = np.arange(n)
    gap = np.abs(i[:, None] - i[None, :])
    return np.minimum(gap, n - gap).astype(float)


def cycle_delta(n: int) -> float:
    """δ of the cycle graph C_n (four-point, vertex set).

    The worst quadruple splits the cycle into arcs as equal as possible; with arcs g1..g4 the
    diagonal pair sum is min(g1+g2, g3+g4) + min(g2+g3, g4+g1) and the side sums are g1+g3 and
    g2+g4. For n = 4k this gives (4k - 2k)/2 = k; for n = 4k+1 (arcs k,k,k,k+1) k - 1/2; for
    n = 4k+2 (k,k+1,k,k+1) and n = 4k+3 (k,k+1,k+1,k+1) k. So δ(C_n) = floor(n/4), less 1/2 when n = 1 mod 4.
    """
    return n // 4 - (0.5 if n % 4 == 1 else 0.0)


points_strategy = st.integers(4, 7).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=3, max_size=3), min_size=n, max_size=n
    )
)


@settings(max_examples=25, deadline=None)
@given(points=points_strategy, base=st.integers(0, 3))
def test_base_point_delta_matches_brute_force(points, base):
    x = np.array(points)
    d = pairwise_distances(x).numpy()
    assume(d.max() > 0)  # all points equal: no scale to compare against
    exact64 = delta_hyperbolicity(x, base_point=base, dtype=torch.float64)
    assert exact64.delta == pytest.approx(brute_force_delta_at(d, base), abs=1e-9 * d.max())
    # float32 product: exact for the rounded Gromov products, so within a few float32 ulps of the diameter
    assert delta_hyperbolicity(x, base_point=base).delta == pytest.approx(exact64.delta, abs=1e-6 * d.max())


@settings(max_examples=15, deadline=None)
@given(points=points_strategy)
def test_exact_delta_is_the_four_point_delta(points):
    x = np.array(points)
    d = pairwise_distances(x).numpy()
    assume(d.max() > 0)  # all points equal: no scale to compare against
    result = delta_hyperbolicity(d, precomputed=True, exact=True, dtype=torch.float64)
    assert result.method == "exact"
    assert result.delta == pytest.approx(brute_force_four_point(d), abs=1e-9 * d.max())
    assert 0.0 <= result.relative_delta <= 1.0 + 1e-12


def every_base_point_delta(d: np.ndarray) -> float:
    """The O(n^4) form: the base-point δ maximised over every base point, by NumPy broadcasting."""
    best = 0.0
    for w in range(len(d)):
        p = gromov_products(torch.as_tensor(d), w).numpy()
        best = max(best, float(np.max(np.max(np.minimum(p[:, :, None], p[None, :, :]), axis=1) - p)))
    return best


@pytest.fixture(params=[0.0, 1.0], ids=["dense", "pruned"])
def dense_fraction(request, monkeypatch):
    """Run the exact sweep with every base point dense (0.0) or every base point on gathered pairs (1.0)."""
    monkeypatch.setattr(hyperbolicity, "_DENSE_FRACTION", request.param)


@settings(max_examples=40, deadline=None)
@given(points=points_strategy, data=st.data())
def test_exact_sweep_over_later_points_equals_every_base_point(points, data):
    x = np.array(points)
    d = pairwise_distances(x).numpy()
    assume(d.max() > 0)  # all points equal: no scale to compare against
    fraction = data.draw(st.sampled_from([0.0, 0.2, 1.0]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hyperbolicity, "_DENSE_FRACTION", fraction)
        result = delta_hyperbolicity(d, precomputed=True, exact=True, dtype=torch.float64)
        result32 = delta_hyperbolicity(d, precomputed=True, exact=True)
    reference = every_base_point_delta(d)
    assert result.delta == pytest.approx(reference, abs=1e-12 * d.max())
    assert result.delta_upper == result.delta and result.base_points_done == len(d) - 3
    assert 0 < result.work <= exact_delta_work(len(d)) + len(d) ** 3
    assert result32.delta == pytest.approx(reference, abs=1e-6 * d.max())


@pytest.mark.parametrize(("n", "dim"), [(40, 2), (90, 8), (70, 300)])
def test_exact_sweep_on_larger_clouds(n, dim, dense_fraction):
    d = pairwise_distances(np.random.default_rng(n).normal(size=(n, dim))).numpy()
    result = delta_hyperbolicity(d, precomputed=True, exact=True, dtype=torch.float64)
    assert result.method == "exact"
    assert result.delta == pytest.approx(every_base_point_delta(d), abs=1e-12 * d.max())


def test_exact_sweep_on_cycles_and_trees(dense_fraction):
    for n in (12, 16, 21):
        assert delta_hyperbolicity(cycle_distances(n), precomputed=True, exact=True).delta == cycle_delta(n)
    d = random_tree_distances(40, np.random.default_rng(0))
    assert delta_hyperbolicity(d, precomputed=True, exact=True, dtype=torch.float64).delta <= 1e-12 * d.max()


def test_exact_delta_work_counts_the_restricted_sweep():
    assert exact_delta_work(4) == 4 * 4 * 5 // 2
    assert exact_delta_work(1000) == pytest.approx(1000**4 / 8, rel=0.01)


@pytest.mark.parametrize("budget", [{"work_budget": 1}, {"work_budget": 20_000}, {"time_budget_s": 1e-9}])
def test_budget_returns_a_certified_bracket(budget, dense_fraction):
    x = np.random.default_rng(5).normal(size=(60, 6))
    exact = delta_hyperbolicity(x, exact=True, dtype=torch.float64)
    base0 = delta_hyperbolicity(x, dtype=torch.float64)
    bracket = delta_hyperbolicity(x, exact=True, dtype=torch.float64, **budget)
    assert bracket.method == "bracket" and bracket.base_points_done < 57
    assert bracket.delta <= exact.delta + 1e-12 <= bracket.delta_upper + 2e-12
    assert bracket.delta_upper <= bracket.diameter / 2 and bracket.relative_delta <= bracket.relative_delta_upper
    if bracket.base_points_done >= 1:  # base point 0 (all points) is done: δ_0 <= lower end, upper end 2 δ_0
        assert bracket.delta >= base0.delta - 1e-12
        assert bracket.delta_upper == pytest.approx(min(2 * base0.delta, bracket.diameter / 2), abs=1e-12)


def test_exact_delta_equals_hypdelta_exhaustive_mode():
    hypdelta = pytest.importorskip("hypdelta.naive", reason="optional benchmark dependency hypdelta (needs numba)")
    d = pairwise_distances(np.random.default_rng(2).normal(size=(40, 16))).numpy()
    ours = delta_hyperbolicity(d, precomputed=True, exact=True, dtype=torch.float64)
    assert ours.relative_delta == pytest.approx(hypdelta.delta_naive_cpu(d), rel=1e-12)


def test_numpy_broadcast_reference_on_120_points():
    x = np.random.default_rng(3).normal(size=(120, 16))
    d = pairwise_distances(x)
    p = gromov_products(d, 0).numpy()
    reference = float(np.max(np.max(np.minimum(p[:, :, None], p[None, :, :]), axis=1) - p))
    assert delta_hyperbolicity(d, precomputed=True, dtype=torch.float64).delta == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_tree_metrics_are_zero_hyperbolic(seed):
    rng = np.random.default_rng(seed)
    d = random_tree_distances(int(rng.integers(5, 80)), rng)
    for base in (0, len(d) - 1):
        assert delta_hyperbolicity(d, precomputed=True, base_point=base, dtype=torch.float64).delta <= 1e-12 * d.max()
        assert delta_hyperbolicity(d, precomputed=True, base_point=base).delta <= 1e-6 * d.max()
    assert sampled_delta_hyperbolicity(d, precomputed=True, num_samples=20_000, seed=seed).delta <= 1e-12 * d.max()
    small = d[:12, :12]
    assert delta_hyperbolicity(small, precomputed=True, exact=True, dtype=torch.float64).delta <= 1e-12 * small.max()


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8, 9, 13, 16, 30, 41, 120])
def test_cycle_graph_known_value(n):
    d = cycle_distances(n)
    result = delta_hyperbolicity(d, precomputed=True)  # vertex-transitive: any base point gives the global δ
    assert result.delta == cycle_delta(n)
    assert result.diameter == n // 2
    if n % 4 == 0:
        assert result.relative_delta == 1.0
    if n <= 9:
        assert brute_force_four_point(d) == cycle_delta(n)
        assert delta_hyperbolicity(d, precomputed=True, exact=True).delta == cycle_delta(n)


def test_sampled_delta_is_a_seeded_lower_bound():
    x = np.random.default_rng(0).normal(size=(40, 5))
    exact = delta_hyperbolicity(x, exact=True, dtype=torch.float64).delta
    sampled = sampled_delta_hyperbolicity(x, num_samples=5000, seed=7)
    assert sampled.method == "sampled"
    assert 0 < sampled.delta <= exact + 1e-12
    assert sampled == sampled_delta_hyperbolicity(x, num_samples=5000, seed=7)
    from_matrix = sampled_delta_hyperbolicity(pairwise_distances(x), precomputed=True, num_samples=5000, seed=7)
    assert from_matrix.delta == pytest.approx(sampled.delta, rel=1e-12)
    assert from_matrix.diameter == pytest.approx(sampled.diameter, rel=1e-12)
    tiny = x[:6]  # 6**4 = 1296 quadruples: 50k draws cover them all
    assert sampled_delta_hyperbolicity(tiny, num_samples=50_000).delta == pytest.approx(
        delta_hyperbolicity(tiny, exact=True, dtype=torch.float64).delta, rel=1e-12
    )


def test_relative_delta_is_invariant_to_isometries_and_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    moved = 1000.0 * (x @ rotation) + 5.0
    a, b = delta_hyperbolicity(x, dtype=torch.float64), delta_hyperbolicity(moved, dtype=torch.float64)
    assert b.relative_delta == pytest.approx(a.relative_delta, rel=1e-9)
    assert b.delta == pytest.approx(1000.0 * a.delta, rel=1e-9)


def test_accepts_torch_half_precision_points():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    result = delta_hyperbolicity(x.to(torch.bfloat16))
    assert result.num_points == 30 and result.method == "base_point" and result.base_point == 0
    assert 0 <= result.relative_delta <= 1


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (np.zeros((3, 2)) + np.arange(3)[:, None], {}, "at least 4 points"),
        (cycle_distances(3), {"precomputed": True}, "at least 4 points"),
        (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0], [3.0, 0.0]]), {}, "NaN or inf"),
        (np.array([[0.0, 1.0], [np.inf, 2.0], [1.0, 1.0], [3.0, 0.0]]), {}, "NaN or inf"),
        (np.ones((4, 5)), {"precomputed": True}, "square"),
        (np.triu(cycle_distances(5)), {"precomputed": True}, "not symmetric"),
        (-cycle_distances(5), {"precomputed": True}, ">= 0"),
        (cycle_distances(5) + 1.0, {"precomputed": True}, "zero diagonal"),
        (np.ones((5, 3)), {}, "diameter 0"),
        (np.arange(5.0), {}, "2-D"),
        (np.eye(5), {"base_point": 5}, "out of range"),
        (np.eye(5), {"exact": True, "time_budget_s": 0}, "time_budget_s=0"),
        (np.eye(5), {"exact": True, "work_budget": -1}, "work_budget=-1"),
    ],
)
def test_bad_input_raises_one_line_input_error(x, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        delta_hyperbolicity(x, **kwargs)
    assert "\n" not in str(info.value)


def test_sampled_rejects_no_samples_and_bad_points():
    with pytest.raises(InputError, match="num_samples"):
        sampled_delta_hyperbolicity(np.eye(5), num_samples=0)
    with pytest.raises(InputError, match="NaN or inf"):
        sampled_delta_hyperbolicity(np.full((5, 2), np.nan))


def test_gaussian_control_keeps_the_affine_hull_and_is_seeded():
    points = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))  # n < d: a singular covariance
    control = gaussian_control(points, seed=3)
    assert control.shape == points.shape
    centred = (points - points.mean(0)).double()
    projection = torch.linalg.lstsq(centred.T, (control - points.mean(0).double()).T).solution
    assert torch.allclose(centred.T @ projection, (control - points.mean(0).double()).T, atol=1e-9)
    assert torch.equal(control, gaussian_control(points, seed=3))
    assert not torch.equal(control, gaussian_control(points, seed=4))


def test_gaussian_control_matches_mean_and_covariance_in_expectation():
    points = torch.randn(400, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 3.0, 0.2]) + 7.0
    draws = torch.cat([gaussian_control(points, seed=s) for s in range(20)])
    assert torch.allclose(draws.mean(0), points.double().mean(0), atol=0.1)
    assert torch.allclose(torch.cov(draws.T), torch.cov(points.double().T), rtol=0.1, atol=0.05)


def test_shuffled_control_permutes_each_coordinate():
    points = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    control = shuffled_control(points, seed=1)
    assert torch.equal(control.sort(dim=0).values, points.sort(dim=0).values)
    assert not torch.equal(control, points)
    assert torch.equal(control, shuffled_control(points, seed=1))


def test_top_tokens_delta_reports_exact_delta_beside_base_point(tiny_llama):
    from collections import Counter

    from hyplora.geometry.delta_protocols import top_tokens_delta
    from hyplora.geometry.embeddings import token_embeddings
    from hyplora.geometry.report import _exact_delta_lines

    counts = Counter({token: 100 - token for token in range(60)})
    result = top_tokens_delta(tiny_llama, counts, top_n=40)
    points = token_embeddings(tiny_llama, list(range(40)))
    for cloud in ("embeddings", "gaussian", "shuffled"):
        exact, base = result[cloud]["exact"], result[cloud]["relative_delta"]
        assert exact["method"] == "exact" and exact["relative_delta"] == exact["relative_delta_upper"]
        assert base - 1e-6 <= exact["relative_delta"] <= 2 * base + 1e-6
        assert 0 < exact["work"] <= exact_delta_work(40) + 40**3
    assert result["embeddings"]["exact"]["relative_delta"] == pytest.approx(
        delta_hyperbolicity(points, exact=True).relative_delta
    )
    budgeted = top_tokens_delta(tiny_llama, counts, top_n=40, exact_budget_s=1e-9)
    assert budgeted["embeddings"]["exact"]["method"] == "bracket"
    lines = _exact_delta_lines(
        {"d": {"label": "toy", "delta_top_n": result}, "b": {"label": "b", "delta_top_n": budgeted}}
    )
    assert f"{result['embeddings']['exact']['relative_delta']:.3f}" in lines[4]
    assert "of 37 base points" in lines[5]
