r"""Token frequencies of a dataset under a tokenizer, and the discrete power-law fit of those frequencies.

The fit follows Clauset, Shalizi and Newman [1] through the `powerlaw` package [2]: the data are
the frequencies :math:`f` of the distinct tokens, modelled for :math:`f \ge x_{min}` as
:math:`p(f) = f^{-\alpha} / \zeta(\alpha, x_{min})`, with :math:`\alpha` by maximum likelihood and
:math:`x_{min}` minimising the Kolmogorov-Smirnov distance between data and fit. Log-likelihood
ratios :math:`R` compare the power law with a lognormal and an exponential on the same tail:
:math:`R > 0` favours the power law, and :math:`p` says whether the sign of :math:`R` is significant.
A comparison is only made when the alternative's own maximum-likelihood fit succeeded. On token
counts the lognormal fit often does not: its optimiser runs off towards :math:`\mu \to -\infty`,
:math:`\sigma \to \infty` (on GSM8K under SmolLM2's tokenizer it stops at :math:`\mu \approx -953`), the
limit in which the lognormal density :math:`x^{-1+\mu/\sigma^2} e^{-(\ln x)^2/2\sigma^2}` becomes a power law.

On a rank-frequency plot the fitted tail is the curve :math:`r(f) = n_{tail}\,\zeta(\alpha, f)/\zeta(\alpha, x_{min})`
(rank = number of tokens at least as frequent), close to the line :math:`f \propto r^{-1/(\alpha-1)}`.

References:
    [1] A. Clauset, C. R. Shalizi, M. E. J. Newman, "Power-law distributions in empirical data",
        SIAM Review 51, 2009.
    [2] J. Alstott, E. Bullmore, D. Plenz, "powerlaw: a Python package for analysis of heavy-tailed
        distributions", PLoS ONE 9, 2014.
"""

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import zeta

from hyplora.errors import InputError

# The start of the warning `powerlaw` raises when a distribution's optimiser did not converge or
# left the parameter range (its `noise_flag` also covers fits merely near a range edge, which are valid).
_FIT_FAILED_WARNING = "No valid fits found for distribution"


@dataclass(frozen=True)
class LikelihoodRatio:
    """Log-likelihood ratio test of the power law against an alternative (Vuong's test, as in [1]).

    Attributes:
        status: ``"fitted"``, or ``"did not fit"`` when the alternative's maximum-likelihood fit failed
            (`powerlaw` warned that it found no valid fit, or a parameter is not finite); there is
            then no comparison and ``R`` and ``p`` are None.
        R: sum of pointwise log-likelihood differences (power law minus alternative).
        p: two-sided significance of the sign of ``R``.
        parameters: the alternative's fitted parameters (e.g. ``mu``, ``sigma``), also when it did not fit.
    """

    status: str
    R: float | None
    p: float | None
    parameters: dict[str, float]


@dataclass(frozen=True)
class PowerLawFit:
    """A discrete power-law fit of token frequencies.

    Attributes:
        alpha: the exponent :math:`\\alpha` (the paper's :math:`\\gamma`).
        sigma: standard error of ``alpha``.
        xmin: the smallest frequency in the fitted tail, chosen by the KS distance.
        ks_distance: Kolmogorov-Smirnov distance between the tail and the fit.
        n_tail: distinct tokens with frequency >= ``xmin``.
        n_types: distinct tokens in the data.
        vs_lognormal: test against a lognormal tail (its ``status`` says whether the lognormal fitted).
        vs_exponential: test against an exponential tail (likewise).
        warnings: what `powerlaw` warned about during the fit.
    """

    alpha: float
    sigma: float
    xmin: float
    ks_distance: float
    n_tail: int
    n_types: int
    vs_lognormal: LikelihoodRatio
    vs_exponential: LikelihoodRatio
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def record_text(record: Mapping, *, include_answer: bool = False) -> str:
    """The question text of a record (``instruction``, then ``input`` if any), optionally followed by its ``output``."""
    parts = [record.get("instruction", ""), record.get("input", "")]
    if include_answer:
        parts.append(record.get("output") or record.get("answer", ""))
    return "\n".join(part for part in parts if part)


def count_tokens(texts: Iterable[str], tokenizer, *, batch_size: int = 256) -> Counter:
    """How often each token id occurs in ``texts`` (no special tokens added)."""
    counts: Counter = Counter()
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        for ids in encoded:
            counts.update(ids)
    return counts


def fit_power_law(frequencies: Iterable[int]) -> PowerLawFit:
    """Fit a discrete power law to token frequencies, with ``xmin`` by the KS method.

    Args:
        frequencies: the count of each distinct token (zeros are ignored).

    Returns:
        PowerLawFit.

    Raises:
        InputError: fewer than two distinct frequency values, where no tail can be fitted.
    """
    import powerlaw

    data = np.asarray([f for f in frequencies if f > 0], dtype=float)
    if np.unique(data).size < 2:
        raise InputError(f"power-law fit: needs at least two distinct token frequencies, got {np.unique(data).size}")
    messages: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = powerlaw.Fit(data, discrete=True, verbose=False)
        # powerlaw 2.0 renamed `sigma` to `standard_err` (the old name warns)
        sigma = fit.power_law.standard_err if hasattr(fit.power_law, "standard_err") else fit.power_law.sigma
    messages.update(str(w.message) for w in caught)
    tests = {name: _compare(fit, name, messages) for name in ("lognormal", "exponential")}
    return PowerLawFit(
        alpha=float(fit.power_law.alpha),
        sigma=float(sigma),
        xmin=float(fit.xmin),
        ks_distance=float(fit.power_law.D),
        n_tail=int(fit.n_tail),
        n_types=int(data.size),
        vs_lognormal=tests["lognormal"],
        vs_exponential=tests["exponential"],
        warnings=tuple(sorted(messages)),
    )


def _compare(fit, name: str, messages: set[str]) -> LikelihoodRatio:
    """Fit the alternative ``name`` (on first access, as `powerlaw` does) and test the power law against it.

    Its warnings are added to ``messages``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alternative = getattr(fit, name)
        parameters = {key: float(value) for key, value in alternative.parameters.items()}
        failed = any(str(w.message).startswith(_FIT_FAILED_WARNING) for w in caught)
        if failed or not all(map(math.isfinite, parameters.values())):
            result = LikelihoodRatio("did not fit", None, None, parameters)
        else:
            result = LikelihoodRatio("fitted", *map(float, fit.distribution_compare("power_law", name)), parameters)
    messages.update(str(w.message) for w in caught)
    return result


def rank_frequency(frequencies: Iterable[int]) -> np.ndarray:
    """Frequencies sorted from the most to the least frequent token (rank 1 first)."""
    return np.sort(np.asarray(list(frequencies), dtype=float))[::-1]


def fitted_rank_curve(fit: PowerLawFit, max_frequency: float, num: int = 64) -> tuple[np.ndarray, np.ndarray]:
    r"""The fitted tail on rank-frequency axes, for :math:`x_{min} \le f \le` ``max_frequency``.

    .. math::
        r(f) = n_{tail}\,\zeta(\alpha, f)/\zeta(\alpha, x_{min})

    Returns:
        ``(ranks, frequencies)`` at up to ``num`` integer frequencies, geometrically spaced.
    """
    freqs = np.unique(np.geomspace(fit.xmin, max(max_frequency, fit.xmin), num).round())
    ranks = fit.n_tail * zeta(fit.alpha, freqs) / zeta(fit.alpha, fit.xmin)
    return ranks, freqs
