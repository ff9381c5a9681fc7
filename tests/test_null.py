"""The δ null: relative δ of iid Gaussian clouds of given sizes and dimensions."""

import pytest
import torch

from hyplora.errors import InputError
from hyplora.geometry.hyperbolicity import delta_hyperbolicity
from hyplora.geometry.null import PAPER_DIMENSIONS, gaussian_null_delta, null_dimensions, per_prompt_null

SIZES = [12, 20, 30, 20, 16, 25]


def test_each_repeat_is_the_seeded_draw_of_every_cloud_in_order():
    result = gaussian_null_delta(SIZES, 64, repeats=2, seed=5)
    for r, mean in enumerate(result["repeat_means"]):
        generator = torch.Generator().manual_seed(5 + r)
        clouds = [torch.randn(n, 64, generator=generator, dtype=torch.float64) for n in SIZES]
        assert mean == pytest.approx(sum(delta_hyperbolicity(c).relative_delta for c in clouds) / len(SIZES))
    assert result["mean"] == pytest.approx(sum(result["repeat_means"]) / 2)
    assert result["spread"] == pytest.approx(abs(result["repeat_means"][0] - result["repeat_means"][1]))
    assert result == gaussian_null_delta(SIZES, 64, repeats=2, seed=5)


def test_the_null_falls_with_the_dimension_about_as_its_inverse_square_root():
    low, high = (gaussian_null_delta(SIZES * 3, d, repeats=2)["mean"] for d in (64, 1024))
    assert 0 < high < low < 1
    assert 2.5 < low / high < 5.5  # sqrt(1024 / 64) = 4 for pure concentration of distances
    result = gaussian_null_delta(SIZES * 3, 1024, repeats=3)
    assert 0 < result["spread"] < 0.2 * result["mean"] and 0 < result["std"] < result["mean"]


def test_dimensions_and_the_per_prompt_table():
    assert null_dimensions(576) == (576, *PAPER_DIMENSIONS)
    assert null_dimensions(4096) == (4096, 2048)
    table = per_prompt_null(SIZES, (16, 32), repeats=1, seed=1)
    assert list(table) == ["16", "32"] and table["32"] == gaussian_null_delta(SIZES, 32, repeats=1, seed=1)


@pytest.mark.parametrize(
    ("sizes", "dim", "repeats", "message"),
    [
        ([], 8, 1, "at least 4 points"),
        ([5, 3], 8, 1, "at least 4 points"),
        ([5], 0, 1, "dim=0"),
        ([5], 8, 0, "repeats=0"),
    ],
)
def test_bad_input_is_rejected(sizes, dim, repeats, message):
    with pytest.raises(InputError, match=message):
        gaussian_null_delta(sizes, dim, repeats=repeats)


def test_the_report_sets_the_embeddings_and_the_paper_against_the_null():
    from hyplora.geometry.report import PAPER_RELATIVE_DELTA, _null_section

    sizes = [10, 14, 18, 22]
    null = per_prompt_null(sizes, null_dimensions(48), repeats=2)
    embeddings = {"mean": 2 * null["48"]["mean"], "std": 0.01}
    summary = {"embedding_dim": 48, "datasets": {"x": {"label": "X", "delta_per_prompt": {"embeddings": embeddings}}}}
    summary["datasets"]["x"]["delta_null"] = null
    text = "\n".join(_null_section(summary))
    assert "| X | " in text and "null, d = 48 | null, d = 2048 | null, d = 4096 |" in text
    assert "embeddings' per-prompt δ is 2.0 times the null" in text
    at_4096 = null["4096"]["mean"]
    lo, hi = PAPER_RELATIVE_DELTA
    assert f"is {lo / at_4096:.1f}-{hi / at_4096:.1f} times its null" in text
