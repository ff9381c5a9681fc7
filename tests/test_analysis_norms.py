"""Spearman with a confidence interval, binned statistics, word-group files."""

import json

import numpy as np
import pytest
from scipy import stats

from hyplora.errors import InputError
from hyplora.geometry.norms import binned_by_frequency, load_groups, spearman_with_ci


def test_spearman_matches_scipy_and_fieller_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = 0.5 * x + rng.normal(size=300)
    result = spearman_with_ci(x, y)
    rho, p = stats.spearmanr(x, y)
    assert result.rho == pytest.approx(rho) and result.p_value == pytest.approx(p)
    half = 1.959964 * np.sqrt(1.06 / 297)
    assert result.ci_low == pytest.approx(np.tanh(np.arctanh(rho) - half), abs=1e-6)
    assert result.ci_high == pytest.approx(np.tanh(np.arctanh(rho) + half), abs=1e-6)
    assert result.ci_low < result.rho < result.ci_high and result.n == 300


def test_spearman_interval_covers_the_population_value():
    # bivariate normal with correlation r has Spearman rho = (6/pi) asin(r/2)
    r = 0.6
    target = 6 / np.pi * np.arcsin(r / 2)
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        x = rng.normal(size=80)
        y = r * x + np.sqrt(1 - r * r) * rng.normal(size=80)
        result = spearman_with_ci(x, y)
        covered += result.ci_low <= target <= result.ci_high
    assert 0.90 <= covered / 200 <= 0.99


def test_spearman_of_a_monotone_map_is_one_and_bad_input_is_rejected():
    x = np.arange(1.0, 30.0)
    assert spearman_with_ci(x, np.log(x)).rho == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least 4"):
        spearman_with_ci([1, 2, 3], [3, 2, 1])
    with pytest.raises(InputError, match="constant"):
        spearman_with_ci([1, 2, 3, 4, 5], [2, 2, 2, 2, 2])
    with pytest.raises(InputError, match="equal length"):
        spearman_with_ci([1, 2, 3, 4, 5], [1, 2, 3, 4])


def test_binned_statistics_partition_the_tokens():
    rng = np.random.default_rng(2)
    freqs = rng.zipf(2.0, size=2000)
    values = rng.normal(size=2000)
    bins = binned_by_frequency(freqs, values, num_bins=8)
    assert sum(b["count"] for b in bins) == 2000
    assert bins[0]["lo"] == freqs.min() and bins[-1]["hi"] > freqs.max()
    for b in bins:
        inside = values[(freqs >= b["lo"]) & (freqs < b["hi"])]
        assert b["count"] == inside.size
        assert b["mean"] == pytest.approx(inside.mean()) and b["std"] == pytest.approx(inside.std())
        assert b["q25"] <= b["median"] <= b["q75"]


def test_load_groups_reads_a_file_and_names_what_is_wrong(tmp_path):
    good = tmp_path / "groups.json"
    good.write_text(json.dumps({"general": ["the", "of"], "specific": ["dog"]}))
    assert load_groups(good) == {"general": ["the", "of"], "specific": ["dog"]}
    cases = {
        "missing.json": None,
        "broken.json": "{not json",
        "list.json": "[]",
        "words.json": json.dumps({"g": "dog"}),
        "empty.json": json.dumps({"g": []}),
        "blank.json": json.dumps({"g": ["dog", " "]}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(InputError) as info:
            load_groups(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
