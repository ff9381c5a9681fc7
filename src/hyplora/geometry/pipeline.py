"""One analysis run: token statistics, norms, word groups and δ for a model over several datasets.

`run_analysis` computes every number of the report; `hyplora.geometry.report.write_report` turns
the result into PNGs, JSON and markdown.
"""

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from hyplora.errors import InputError
from hyplora.geometry.datasets import PAPER_DATASETS, AnalysisDataset
from hyplora.geometry.delta_protocols import CONTROLS, per_prompt_delta, top_tokens_delta
from hyplora.geometry.embeddings import check_hidden_layer, hidden_state_norms, input_embedding_layer, token_norms
from hyplora.geometry.frequency import PowerLawFit, count_tokens, fit_power_law, record_text
from hyplora.geometry.norms import DEFAULT_GROUPS, binned_by_frequency, group_statistics, spearman_with_ci
from hyplora.geometry.null import null_dimensions, per_prompt_null


@dataclass(frozen=True)
class AnalysisOptions:
    """What to measure and how much of it.

    Attributes:
        include_answers: count tokens of the reference outputs too, not only the questions.
        prompt_limit: prompts per dataset for the per-prompt δ (and hidden-state norms); None = all.
        max_prompt_tokens: tokens kept per prompt.
        top_n: tokens in the top-N δ cloud.
        exact_budget_s: seconds per top-N cloud for its exact δ (a certified bracket if it runs out); None = no limit.
        hidden_layer: also measure the hidden-state norm after this many blocks; None = skip.
        groups: word groups, general first; None = the paper's default groups.
        multi_token: ``"mean"`` or ``"first"``: how a word split into several tokens is measured.
        num_bins: frequency bins of the norm-vs-frequency statistics.
        seed: seed of the δ controls.
    """

    include_answers: bool = False
    prompt_limit: int | None = 100
    max_prompt_tokens: int = 1500
    top_n: int = 1000
    exact_budget_s: float | None = 120.0
    hidden_layer: int | None = None
    groups: dict[str, list[str]] | None = None
    multi_token: str = "mean"
    num_bins: int = 12
    seed: int = 0


@dataclass
class AnalysisResult:
    """Every number of a run (``summary``, JSON-ready) and the per-token arrays the plots draw.

    Attributes:
        summary: settings, per-dataset results, pooled results, missing datasets.
        token_arrays: dataset key -> ``{"frequencies", "norms"[, "hidden_frequencies", "hidden_norms"]}``.
        power_laws: dataset key -> its fit.
    """

    summary: dict
    token_arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    power_laws: dict[str, PowerLawFit] = field(default_factory=dict)


def run_analysis(
    model,
    tokenizer,
    datasets: list[AnalysisDataset],
    options: AnalysisOptions = AnalysisOptions(),
    *,
    model_name: str = "",
) -> AnalysisResult:
    """Measure power law, norm vs frequency, word groups and δ (both protocols) on each dataset.

    Raises:
        InputError: no datasets, a model without input embeddings, a hidden layer out of range,
            or a dataset without text.
    """
    if not datasets:
        raise InputError("--datasets: no dataset to analyse")
    keys = [d.key for d in datasets]
    if len(set(keys)) != len(keys):
        raise InputError(f"--datasets: {next(k for k in keys if keys.count(k) > 1)} is named twice")
    embedding = input_embedding_layer(model)
    if options.hidden_layer is not None:
        check_hidden_layer(model, options.hidden_layer)
    summary = {
        "model": model_name or type(model).__name__,
        "model_class": type(model).__name__,
        "vocab_size": embedding.num_embeddings,
        "embedding_dim": embedding.embedding_dim,
        "settings": asdict(options)
        | {
            "groups": options.groups or DEFAULT_GROUPS,
            "spearman_ci": "95% Fisher z interval with Fieller's variance 1.06/(n-3)",
            "delta": "HGCN protocol: Gromov products at base point 0, exact (max, min) product; relative = 2δ/diam",
            "delta_exact": "top-N clouds: the four-point δ (max over base points w of δ_w on the points after w), "
            "or the certified bracket [running max, 2 δ_0] when exact_budget_s runs out",
            "controls": list(CONTROLS),
            "delta_null": "iid N(0, I_d) clouds with each prompt's point count, relative δ at base point 0, seeded repeats",
        },
        "missing": {key: spec.note for key, spec in PAPER_DATASETS.items() if spec.source is None and key not in keys},
        "datasets": {},
    }
    result = AnalysisResult(summary)
    pooled: Counter = Counter()
    for dataset in tqdm(datasets, desc="datasets", unit="set"):
        counts = _dataset_counts(dataset, tokenizer, options.include_answers)
        pooled.update(counts)
        entry, arrays, power_law = _analyse_dataset(model, tokenizer, dataset, counts, options)
        entry["delta_null"] = per_prompt_null(
            entry["delta_per_prompt"]["num_points"], null_dimensions(embedding.embedding_dim), seed=options.seed
        )
        summary["datasets"][dataset.key], result.token_arrays[dataset.key], result.power_laws[dataset.key] = (
            entry,
            arrays,
            power_law,
        )
    pooled_ids = np.fromiter(pooled, dtype=np.int64)
    summary["pooled"] = {
        "num_types": len(pooled),
        "spearman": spearman_with_ci(
            [pooled[t] for t in pooled_ids.tolist()], token_norms(model, pooled_ids)
        ).to_dict(),
        "groups": group_statistics(
            options.groups or DEFAULT_GROUPS,
            tokenizer,
            pooled,
            lambda ids: token_norms(model, ids),
            multi_token=options.multi_token,
        ),
    }
    return result


def _dataset_counts(dataset: AnalysisDataset, tokenizer, include_answers: bool) -> Counter:
    texts = [record_text(r, include_answer=include_answers) for r in dataset.records]
    counts = count_tokens(tqdm(texts, desc=f"{dataset.key}: tokenize", leave=False, unit="rec"), tokenizer)
    if not counts:
        raise InputError(f"--datasets {dataset.key}: no text to tokenize in {len(texts)} records")
    return counts


def _analyse_dataset(model, tokenizer, dataset: AnalysisDataset, counts: Counter, options: AnalysisOptions):
    ids = np.fromiter(counts, dtype=np.int64)
    frequencies = np.array([counts[t] for t in ids])
    norms = token_norms(model, ids)
    arrays = {"frequencies": frequencies, "norms": norms}
    power_law = fit_power_law(frequencies)
    prompts = [record_text(r) for r in dataset.records[: options.prompt_limit]]
    entry = {
        "label": dataset.label,
        "note": dataset.note,
        "num_records": len(dataset.records),
        "num_tokens": int(frequencies.sum()),
        "num_types": int(ids.size),
        "power_law": power_law.to_dict(),
        "norm_vs_frequency": {
            "spearman": spearman_with_ci(frequencies, norms).to_dict(),
            "bins": binned_by_frequency(frequencies, norms, num_bins=options.num_bins),
        },
        "delta_per_prompt": per_prompt_delta(
            model,
            tokenizer,
            tqdm(prompts, desc=f"{dataset.key}: δ per prompt", leave=False, unit="prompt"),
            max_tokens=options.max_prompt_tokens,
            seed=options.seed,
        ),
        "delta_top_n": top_tokens_delta(
            model, counts, top_n=options.top_n, seed=options.seed, exact_budget_s=options.exact_budget_s
        ),
    }
    if options.hidden_layer is not None:
        hidden = hidden_state_norms(
            model,
            tokenizer,
            tqdm(prompts, desc=f"{dataset.key}: hidden states", leave=False, unit="prompt"),
            options.hidden_layer,
            max_tokens=options.max_prompt_tokens,
        )
        seen = np.fromiter(hidden, dtype=np.int64)
        arrays["hidden_frequencies"] = np.array([counts[t] for t in seen])
        arrays["hidden_norms"] = np.array([hidden[t] for t in seen.tolist()])
        entry["hidden_norm_vs_frequency"] = {
            "layer": options.hidden_layer,
            "prompts": len(prompts),
            "spearman": spearman_with_ci(arrays["hidden_frequencies"], arrays["hidden_norms"]).to_dict(),
            "bins": binned_by_frequency(
                arrays["hidden_frequencies"], arrays["hidden_norms"], num_bins=options.num_bins
            ),
        }
    return entry, arrays, power_law
