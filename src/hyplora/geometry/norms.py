r"""Embedding norm against token frequency: binned statistics, Spearman correlation, hierarchy groups.

The paper's claim is that frequent, general tokens sit near the origin and rare, specific ones far
from it, as in a hyperbolic embedding of a hierarchy. Here that is measured as the Spearman
correlation between frequency and norm over every token seen, and as the mean norm and frequency
of word groups ordered from general to specific (its G1-G4).

The confidence interval of Spearman's :math:`\rho` uses the Fisher transform with Fieller's
variance for rank correlations [1]:

.. math::
    z = \operatorname{artanh} \rho, \qquad \operatorname{se}(z) = \sqrt{1.06 / (n - 3)},
    \qquad \rho \in \tanh(z \pm z_{1-a/2}\, \operatorname{se}).

References:
    [1] E. C. Fieller, H. O. Hartley, E. S. Pearson, "Tests for rank correlation coefficients. I",
        Biometrika 44, 1957.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from hyplora.errors import InputError, first_line

# After the paper's word groups G1-G4 (docs/analysis/README.md): general to specific.
DEFAULT_GROUPS: dict[str, list[str]] = {
    "G1 function words": ["the", "to", "in", "is", "of", "and", "a", "for", "on", "that", "with", "it"],
    "G2 how/much/many": ["how", "much", "many"],
    "G3 category nouns": [
        "animal",
        "fruit",
        "food",
        "vehicle",
        "person",
        "money",
        "plant",
        "tool",
        "color",
        "building",
    ],
    "G4 specific tokens": ["dog", "apple", "cat", "banana", "car", "teacher", "rose", "hammer", "dollars", "380"],
}

MULTI_TOKEN_POLICIES = ("mean", "first")


@dataclass(frozen=True)
class SpearmanResult:
    """Spearman's rank correlation with a Fisher-z confidence interval (Fieller's variance).

    Attributes:
        rho: the correlation.
        ci_low, ci_high: the confidence interval.
        p_value: two-sided p-value of ``rho = 0`` (scipy's t approximation).
        n: number of pairs.
        confidence: level of the interval.
    """

    rho: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def spearman_with_ci(x, y, *, confidence: float = 0.95) -> SpearmanResult:
    """Spearman's :math:`\\rho` of ``x`` and ``y`` with a Fisher-z interval (module docstring).

    Raises:
        InputError: fewer than 4 pairs, different lengths, or a constant input.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"Spearman: x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 4:
        raise InputError(f"Spearman: needs at least 4 pairs for a confidence interval, got {x.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise InputError("Spearman: an input is constant, so the rank correlation is undefined")
    rho, p_value = stats.spearmanr(x, y)
    half_width = stats.norm.ppf(0.5 + confidence / 2) * np.sqrt(1.06 / (x.size - 3))
    with np.errstate(divide="ignore"):
        z = np.arctanh(rho)
    low, high = np.tanh(z - half_width), np.tanh(z + half_width)
    return SpearmanResult(float(rho), float(low), float(high), float(p_value), int(x.size), confidence)


def binned_by_frequency(frequencies, values, *, num_bins: int = 12) -> list[dict]:
    """Statistics of ``values`` in log-spaced frequency bins.

    Bin edges are ``geomspace(min f, max f + 1, num_bins + 1)``; a bin holds :math:`lo \\le f < hi`.
    Empty bins are left out.

    Returns:
        One dict per non-empty bin: ``lo``, ``hi``, ``count``, ``mean``, ``std``, ``q25``, ``median``, ``q75``.
    """
    f, v = np.asarray(frequencies, dtype=float), np.asarray(values, dtype=float)
    edges = np.geomspace(f.min(), f.max() + 1, num_bins + 1)
    which = np.clip(np.searchsorted(edges, f, side="right") - 1, 0, num_bins - 1)
    bins = []
    for b in range(num_bins):
        chunk = v[which == b]
        if chunk.size:
            q25, median, q75 = np.quantile(chunk, [0.25, 0.5, 0.75])
            bins.append(
                dict(
                    lo=float(edges[b]),
                    hi=float(edges[b + 1]),
                    count=int(chunk.size),
                    mean=float(chunk.mean()),
                    std=float(chunk.std()),
                    q25=float(q25),
                    median=float(median),
                    q75=float(q75),
                )
            )
    return bins


def load_groups(path: str | Path) -> dict[str, list[str]]:
    """Word groups from a JSON object ``{"group name": ["word", ...], ...}``, general groups first.

    Raises:
        InputError: a missing or malformed file, or a group that is not a non-empty list of strings.
    """
    try:
        groups = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read word groups ({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(groups, dict) or not groups:
        raise InputError(f"{path}: expected a non-empty JSON object of group name -> list of words")
    for name, words in groups.items():
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise InputError(f"{path}: group {name!r} must be a non-empty list of non-empty strings")
    return groups


def word_token_ids(tokenizer, word: str) -> list[int]:
    """Token ids of ``word`` as it appears inside a sentence (after a space).

    The word is encoded as ``" " + word``; a leading token that decodes to whitespace only (how
    digit-splitting tokenizers encode " 380") is dropped.
    """
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
        ids = ids[1:]
    return ids


def group_statistics(
    groups: Mapping[str, list[str]],
    tokenizer,
    counts: Mapping[int, int],
    norm_of: Callable[[list[int]], np.ndarray],
    *,
    multi_token: str = "mean",
) -> list[dict]:
    """Mean frequency and norm of each word group.

    A word counts in its lower-case and capitalised in-sentence forms (``" dog"``, ``" Dog"``).
    For a form that splits into several tokens, ``multi_token="mean"`` takes the mean of the
    tokens' frequencies and norms, ``"first"`` the first token's. The word's frequency is the sum
    over its forms, and its norm their frequency-weighted mean (unweighted when unseen).

    Args:
        groups: group name -> words, general groups first.
        tokenizer: the model's tokenizer.
        counts: token id -> frequency in the data.
        norm_of: token ids -> their norms.
        multi_token: ``"mean"`` or ``"first"``.

    Returns:
        One dict per group: ``group``, ``num_words``, ``multi_token_words``, ``mean_frequency``,
        ``mean_norm``, ``std_norm``, and ``words`` (per word: ``word``, ``tokens``, ``frequency``, ``norm``).
    """
    if multi_token not in MULTI_TOKEN_POLICIES:
        raise InputError(f"multi_token={multi_token!r}: choose one of {', '.join(MULTI_TOKEN_POLICIES)}")
    table = []
    for name, words in groups.items():
        rows = [_word_row(word, tokenizer, counts, norm_of, multi_token) for word in words]
        norms = np.array([row["norm"] for row in rows])
        table.append(
            dict(
                group=name,
                num_words=len(rows),
                multi_token_words=sum(any(len(t) > 1 for t in row["tokens"]) for row in rows),
                mean_frequency=float(np.mean([row["frequency"] for row in rows])),
                mean_norm=float(norms.mean()),
                std_norm=float(norms.std()),
                words=rows,
            )
        )
    return table


def _word_row(word: str, tokenizer, counts, norm_of, multi_token: str) -> dict:
    forms = list(dict.fromkeys([word.strip(), word.strip()[:1].upper() + word.strip()[1:]]))
    form_tokens = [word_token_ids(tokenizer, form) for form in forms]
    form_frequencies, form_norms = [], []
    for ids in form_tokens:
        used = ids[:1] if multi_token == "first" else ids
        form_frequencies.append(float(np.mean([counts.get(t, 0) for t in used])))
        form_norms.append(float(np.mean(norm_of(used))))
    weights = np.array(form_frequencies) if sum(form_frequencies) > 0 else None
    return dict(
        word=word,
        tokens=[tokenizer.convert_ids_to_tokens(ids) for ids in form_tokens],
        frequency=float(sum(form_frequencies)),
        norm=float(np.average(form_norms, weights=weights)),
    )
