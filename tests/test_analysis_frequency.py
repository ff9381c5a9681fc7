"""Power-law fit of token frequencies and the rank-frequency curve."""

import numpy as np
import pytest

from hyplora.errors import InputError
from hyplora.geometry.frequency import fit_power_law, fitted_rank_curve, rank_frequency, record_text


@pytest.fixture(scope="module")
def zipf_frequencies():
    return np.random.default_rng(0).zipf(2.2, size=20_000)  # p(f) ∝ f^-2.2 for f >= 1


def test_fit_recovers_a_discrete_power_law(zipf_frequencies):
    fit = fit_power_law(zipf_frequencies)
    assert fit.alpha == pytest.approx(2.2, abs=0.08)
    assert 0 < fit.sigma < 0.05
    assert fit.xmin >= 1 and fit.n_tail <= fit.n_types == zipf_frequencies.size
    assert 0 < fit.ks_distance < 0.05
    assert fit.vs_exponential.status == "fitted" and fit.vs_exponential.parameters["Lambda"] > 0
    assert fit.vs_exponential.R > 0 and fit.vs_exponential.p < 0.01  # a power law is clearly not exponential


def test_a_lognormal_that_did_not_fit_gives_no_comparison():
    # Exactly Zipf with alpha = 2: the lognormal's optimiser runs off towards its power-law limit (mu -> -inf),
    # as it does on the full GSM8K's token counts (mu ~ -953 under SmolLM2's tokenizer).
    fit = fit_power_law(np.random.default_rng(3).zipf(2.0, size=500))
    assert fit.vs_lognormal.status == "did not fit"
    assert fit.vs_lognormal.R is None and fit.vs_lognormal.p is None
    assert fit.vs_lognormal.parameters["mu"] < -100  # recorded, so the failure can be inspected
    assert any(w.startswith("No valid fits found for distribution lognormal") for w in fit.warnings)
    assert fit.vs_exponential.status == "fitted" and fit.vs_exponential.R > 0


def test_an_exponential_near_its_range_edge_still_fits():
    # powerlaw flags any rate within 0.01 of 0 as "close to the edge of parameter ranges"; the fit is still valid.
    fit = fit_power_law(np.random.default_rng(1).geometric(0.005, size=3000))
    assert any("close to the edge" in w for w in fit.warnings)
    assert fit.vs_exponential.status == "fitted"
    assert fit.vs_exponential.parameters["Lambda"] == pytest.approx(0.005, rel=0.1)
    assert fit.vs_exponential.R < 0 and fit.vs_exponential.p < 0.01  # geometric data: the exponential wins


def test_exponential_data_is_not_called_a_power_law():
    fit = fit_power_law(np.random.default_rng(1).geometric(0.02, size=5000))
    assert fit.vs_exponential.R < 0 or fit.vs_exponential.p > 0.05


def test_zeros_are_ignored_and_degenerate_data_rejected(zipf_frequencies):
    with_zeros = np.concatenate([zipf_frequencies, np.zeros(100, dtype=int)])
    assert fit_power_law(with_zeros).alpha == fit_power_law(zipf_frequencies).alpha
    with pytest.raises(InputError, match="two distinct token frequencies"):
        fit_power_law([3, 3, 3, 0])


def test_fitted_rank_curve_follows_the_empirical_ranks(zipf_frequencies):
    fit = fit_power_law(zipf_frequencies)
    ranked = rank_frequency(zipf_frequencies)
    assert ranked[0] == zipf_frequencies.max() and np.all(np.diff(ranked) <= 0)
    ranks, freqs = fitted_rank_curve(fit, ranked[0])
    assert freqs[0] == fit.xmin and ranks[0] == pytest.approx(fit.n_tail)
    assert np.all(np.diff(ranks) < 0) and np.all(np.diff(freqs) > 0)
    f = 8 * fit.xmin
    empirical_rank = np.sum(zipf_frequencies >= f)
    assert np.interp(f, freqs, ranks) == pytest.approx(empirical_rank, rel=0.2)


def test_record_text_uses_the_question_and_optionally_the_answer():
    record = {"instruction": "How many apples?", "input": "Tom has 3.", "output": "He has 3.", "answer": "3"}
    assert record_text(record) == "How many apples?\nTom has 3."
    assert record_text(record, include_answer=True) == "How many apples?\nTom has 3.\nHe has 3."
    assert record_text({"instruction": "Q", "input": "", "output": "", "answer": "7"}, include_answer=True) == "Q\n7"


def test_the_report_says_when_the_alternative_did_not_fit():
    from hyplora.geometry.report import _power_law_section

    entry = {"label": "Zipf 2.0", "num_records": 1, "num_tokens": 1, "num_types": 500}
    entry["power_law"] = fit_power_law(np.random.default_rng(3).zipf(2.0, size=500)).to_dict()
    row = _power_law_section({"zipf": entry})[-2]
    lognormal, exponential = row.strip("| ").split(" | ")[-2:]
    assert lognormal == "alternative did not fit"
    R, p = entry["power_law"]["vs_exponential"]["R"], entry["power_law"]["vs_exponential"]["p"]
    assert exponential == f"{R:.1f}, {p:.2g}"
