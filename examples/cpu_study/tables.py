"""The CPU study's tables (markdown, 95% bootstrap intervals from `stats.py`) and figures, from `results/`.

Accuracy cells are `estimate [low, high]` in %: with several seeds each item's correctness is first averaged over the
seeds. Differences are paired (the same items), in points. Cites no prose: `docs/results.md` does that.

    python examples/cpu_study/tables.py        # docs/results/tables.md and docs/results/*.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from grid import (
    COMMONSENSE,
    GEMMA,
    GRID,
    MATH,
    MODEL,
    RESULTS_DIR,
    STUDY_DIR,
    Best,
    Eval,
    Train,
    expand,
    read_summary,
    resolve,
)
from stats import accuracy_ci, mcnemar_exact, paired_bootstrap

from hyplora.files import pyplot, save_png

DOCS_DIR = STUDY_DIR.parents[1] / "docs" / "results"
LABELS = {"base": "base (no adapter)", "lora": "LoRA", "hyplora": "HypLoRA", "dora": "DoRA"}
PAIRS = (("HypLoRA", "LoRA"), ("HypLoRA", "DoRA"), ("DoRA", "LoRA"))
SEEDS = (0, 1, 2)


def method_label(method: str, variant: str = "") -> str:
    """A method's name in tables and figures, with its variant (a HypLoRA form or an ablation) when it has one."""
    return f"{LABELS[method]} {variant}".strip()


class Study:
    """The committed summaries, looked up through grid lines (a `Best` rate resolves to the chosen one)."""

    def __init__(self, results_dir: Path = RESULTS_DIR):
        self.dir = results_dir
        self.jobs = {job.name: job for job in expand(GRID, results_dir)[0]}

    def summary(self, line: Train | Eval) -> dict | None:
        """The summary of `line` (its `Best` rate resolved), or None when it has none yet."""
        job = resolve(line, self.dir)
        return None if job is None else read_summary("runs" if isinstance(job, Train) else "evals", job.name, self.dir)

    def loss(self, run: Train) -> float | None:
        summary = self.summary(run)
        return None if summary is None else summary["result"]["val_loss"]

    def correct(self, evaluations: list[Eval], datasets, n: int | None = None) -> np.ndarray:
        """Correctness `(evaluations, items)` over `datasets` in order (the first `n` items of each)."""
        rows = []
        for evaluation in evaluations:
            items = self.summary(evaluation)["items"]
            rows.append(np.concatenate([items[d]["correct"][:n] for d in datasets]).astype(float))
        return np.vstack(rows)


def chosen(method: str, seed: int = 0, stage: str | None = None, rate_of: str | None = None, **train) -> Train:
    """The run of `method` at the rate `stage`'s runs chose (default `lr-grid`, `gemma-lr` for Gemma; the rate of
    variant `rate_of`, default the run's own)."""
    stage = stage or ("gemma-lr" if train.get("model") == GEMMA else "lr-grid")
    return Train(stage, method, Best(stage, rate_of), seed, **train)


def evals(method: str, datasets, limit: int, seeds=SEEDS, mode: str = "robust", **train) -> list[Eval]:
    """The evaluations of `method` (or `base`) at its chosen rate, one per seed."""
    if method == "base":
        return [Eval("", None, datasets, limit, mode, train.get("model", MODEL), train.get("task", "math"))]
    return [Eval("", chosen(method, seed, **train), datasets, limit, mode) for seed in seeds]


# ----------------------------------------------------------------------------- cells
def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(scores: np.ndarray) -> str:
    interval = accuracy_ci(scores)
    return f"{pct(interval.estimate)} [{pct(interval.low)}, {pct(interval.high)}]"


def diff(d) -> str:
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---" + "|---:" * (len(header) - 1) + "|",
        *("| " + " | ".join(map(str, row)) + " |" for row in rows),
        "",
    ]


# ----------------------------------------------------------------------------- tables
def accuracy_table(study: Study, groups: dict[str, list[Eval]], datasets, extra=()) -> list[str]:
    """Per slice and pooled accuracy of each group (its seeds averaged per item); the seeds' pooled accuracies."""
    rows = []
    for label, group in groups.items():
        scores = study.correct(group, datasets)
        sizes = np.cumsum([0] + [len(study.summary(group[0])["items"][d]["correct"]) for d in datasets])
        per_slice = [ci(scores.mean(0)[lo:hi]) for lo, hi in zip(sizes, sizes[1:])]
        seeds = ", ".join(pct(s) for s in scores.mean(1)) if len(group) > 1 else ""
        rows.append([label, len(group), *per_slice, ci(scores.mean(0)), seeds])
    rows += [[label, "—", *(ci(s) for s in slices), ci(np.concatenate(slices)), ""] for label, slices in extra]
    return table(["", "seeds", *datasets, "pooled", "pooled per seed"], rows)


def comparisons(study: Study, pairs: dict[str, tuple[list[Eval], list[Eval]]], datasets) -> list[str]:
    """A − B on the same items: paired-bootstrap difference of the seed-averaged scores, and McNemar per seed."""
    rows = []
    for label, (a, b) in pairs.items():
        xa, xb = study.correct(a, datasets), study.correct(b, datasets)
        d = paired_bootstrap(xa.mean(0), xb.mean(0))
        tests = [mcnemar_exact(ra, rb) for ra, rb in zip(xa, xb)] if len(a) == len(b) else []
        mcnemar = "; ".join(f"{t.a_only} / {t.b_only}, p = {t.p_value:.3g}" for t in tests)
        rows.append([label, max(len(a), len(b)), d.n, diff(d), f"{d.p_value:.3g}", mcnemar])
    return table(["A − B", "seeds", "items", "points [95%]", "bootstrap p", "McNemar per seed: A only / B only"], rows)


def per_slice(study: Study, pairs: dict[str, tuple[list[Eval], list[Eval]]], datasets) -> list[str]:
    rows = []
    for label, (a, b) in pairs.items():
        rows.append(
            [label, *(diff(paired_bootstrap(*(study.correct(x, [d]).mean(0) for x in (a, b)))) for d in datasets)]
        )
    return table(["A − B (points [95%])", *datasets], rows)


def loss_grid(study: Study, methods, rates, seeds=SEEDS, **train) -> list[str]:
    """Final validation loss of each rate (seed 0), the chosen rate, its seeds, their mean ± sd."""
    rows = []
    for method in methods:
        run = {k: v for k, v in train.items() if k not in ("stage", "rate_of")}
        grid = [study.loss(Train("", method, lr, **run)) for lr in rates]
        losses = [study.loss(chosen(method, seed, **train)) for seed in seeds]
        losses = [x for x in losses if x is not None]
        spread = f"{np.mean(losses):.4f} ± {np.std(losses, ddof=1):.4f}" if len(losses) > 1 else "—"
        rows.append(
            [
                LABELS[method],
                *("—" if x is None else f"{x:.4f}" for x in grid),
                f"{resolve(chosen(method, **train), study.dir).lr:g}",
                ", ".join(f"{x:.4f}" for x in losses),
                spread,
            ]
        )
    header = ["", *(f"lr {lr:g}" for lr in rates), "chosen lr", "at chosen lr, per seed", "mean ± sd"]
    return table(header, rows)


def rate_grids(study: Study) -> list[str]:
    """Final validation loss (seed 0) of every rate tried, per method, variant and budget (the primary model's math
    runs), and the rate chosen once every line of that grid has trained."""
    grids: dict = {}
    for line in GRID:
        if isinstance(line, Train) and isinstance(line.lr, float) and line.stage in ("lr-grid", "lr-768"):
            if (line.model, line.task, line.seed) == (MODEL, "math", 0):
                grids.setdefault((line.method, line.variant, line.budget), {})[line.lr] = study.loss(line)
    rates = sorted({lr for grid in grids.values() for lr in grid})
    rows = []
    for (method, variant, budget), grid in grids.items():
        done = {lr: loss for lr, loss in grid.items() if loss is not None}
        best = f"{min(done, key=done.get):g}" if len(done) == len(grid) else f"— ({len(done)} of {len(grid)} trained)"
        cells = ["" if lr not in grid else "…" if grid[lr] is None else f"{grid[lr]:.4f}" for lr in rates]
        rows.append([method_label(method, variant), budget, *cells, best])
    header = ["", "training examples", *(f"lr {lr:g}" for lr in rates), "chosen lr"]
    return table(header, rows) + ["(… : in the grid, not trained yet.)", ""]


def by_budget(study: Study) -> dict[tuple[str, str], dict[int, list[float]]]:
    """Final validation losses `{(method, variant): {budget: [per seed]}}` of the primary model's math runs at their
    own chosen rate (the grid's `Best` lines without a variant override)."""
    found: dict = {}
    for line in GRID:
        own_rate = isinstance(line, Train) and isinstance(line.lr, Best) and line.lr.variant is None
        if own_rate and (line.model, line.task) == (MODEL, "math") and (loss := study.loss(line)) is not None:
            found.setdefault((line.method, line.variant), {}).setdefault(line.budget, {})[line.seed] = loss
    return {key: {b: list(s.values()) for b, s in sorted(v.items())} for key, v in found.items()}


def gap_to(values: list[float], reference: list[float]) -> tuple[float, float | None]:
    """mean(values) − mean(reference) and its standard error sqrt(s²_a/n_a + s²_b/n_b) (None unless both have two
    or more seeds)."""
    gap = float(np.mean(values) - np.mean(reference))
    if len(values) < 2 or len(reference) < 2:
        return gap, None
    return gap, float(np.sqrt(np.var(values, ddof=1) / len(values) + np.var(reference, ddof=1) / len(reference)))


def budget_table(losses: dict) -> list[str]:
    """Mean ± sd of the final validation loss per budget, and its gap to LoRA ± its standard error."""
    rows = []
    for (method, variant), per_budget in losses.items():
        for budget, values in per_budget.items():
            lora = losses.get(("lora", ""), {}).get(budget)
            gap = "—"
            if method != "lora" and lora:
                difference, se = gap_to(values, lora)
                gap = f"{difference:+.4f}" + ("" if se is None else f" ± {se:.4f}")
            loss = f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")
            rows.append([method_label(method, variant), budget, len(values), loss, gap])
    return table(["", "training examples", "seeds", "final val loss, mean ± sd", "− LoRA ± se"], rows)


def ablation_groups() -> dict[str, list[Eval]]:
    variants = [line.variant for line in GRID if isinstance(line, Train) and line.stage == "ablations"]
    return {v: evals("hyplora", MATH, 100, (0,), variant=v, rate_of="") for v in ["", *dict.fromkeys(variants)]}


def ablation_table(study: Study) -> list[str]:
    groups = ablation_groups()
    default = study.correct(groups[""], MATH)[0]
    rows = []
    for variant, group in groups.items():
        loss = study.loss(group[0].run)
        if loss is None:  # a later round's line still training
            continue
        delta_loss = f"{loss - study.loss(groups[''][0].run):+.4f}"
        if study.summary(group[0]) is None:  # trained, not evaluated
            rows.append([variant, f"{loss:.4f}", delta_loss, "—", "—"])
            continue
        scores = study.correct(group, MATH)[0]
        change = diff(paired_bootstrap(scores, default)) if variant else "—"
        rows.append([variant or "default", f"{loss:.4f}", delta_loss, ci(scores), change])
    return table(["variant", "final val loss", "− default", "pooled accuracy", "− default (points [95%])"], rows)


def level_table(study: Study, groups: dict[str, list[Eval]]) -> list[str]:
    """Accuracy by HypLLM difficulty level over the math slices that carry one; HypLoRA − LoRA per level."""
    reference = study.summary(groups[LABELS["base"]][0])["items"]
    datasets = [d for d in MATH if "level" in reference[d]]
    levels = np.concatenate([reference[d]["level"] for d in datasets])
    scores = {label: study.correct(group, datasets).mean(0) for label, group in groups.items()}
    rows = [[label, *(ci(x[levels == lv]) for lv in np.unique(levels))] for label, x in scores.items()]
    a, b = scores["HypLoRA"], scores["LoRA"]
    rows.append(
        ["HypLoRA − LoRA", *(diff(paired_bootstrap(a[levels == lv], b[levels == lv])) for lv in np.unique(levels))]
    )
    header = ["", *(f"level {lv} (n={int(np.sum(levels == lv))})" for lv in np.unique(levels))]
    return [f"Slices with a level: {', '.join(datasets)}.", "", *table(header, rows)]


def paper_table(study: Study) -> list[str]:
    rows = []
    for method in ("base", "lora", "hyplora"):
        paper = study.correct(evals(method, ("svamp",), 20, (0,), "paper"), ["svamp"])[0]
        robust = study.correct(evals(method, MATH, 100, (0,)), ["svamp"], paper.size)[0]
        t = mcnemar_exact(paper, robust)
        both = f"{t.a_only} / {t.b_only}, p = {t.p_value:.3g}"
        rows.append([LABELS[method], ci(paper), ci(robust), pct(np.mean(paper == robust)), both])
    header = ["first 20 svamp items", "paper mode", "robust mode", "same verdict (%)", "only paper / only robust"]
    return table(header, rows)


def constant_answer(datasets, n: int) -> list[np.ndarray]:
    """Per slice, the correctness of always giving its most frequent gold answer."""
    from hyplora.harness.data import load_test_set

    slices = []
    for dataset in datasets:
        golds = [record["answer"] for record in load_test_set(dataset, n)]
        slices.append(np.array([g == Counter(golds).most_common(1)[0][0] for g in golds], dtype=float))
    return slices


def input_norm_table(results_dir: Path) -> list[str]:
    report = json.loads((results_dir / "input_norms.json").read_text())
    rows = [
        [
            f"`{name}`",
            *(f"{v:.2f}" for v in m["norm_p5_p50_p95"]),
            f"{m['norm_max']:.1f}",
            pct(m["share_clipped_none"]),
            *(f"{m['time_at_median'][s]:.3g}" for s in ("none", "unit", "rms")),
        ]
        for name, m in report["modules"].items()
    ]
    header = ["layer", "‖x‖ 5%", "median", "95%", "max", "clipped with none (%)", "time: none", "unit", "rms"]
    return [
        f"`{report['model']}`, the first {report['examples']} training examples, clip ‖u‖ ≤ {report['clip']:.2f}.",
        "",
        *table(header, rows),
    ]


def compute_table(study: Study) -> list[str]:
    """Wall time of the finished jobs: round one's ledger (`compute.jsonl`) and, later, the summaries' `wall_s`."""
    ledger = [json.loads(line) for line in (study.dir / "compute.jsonl").read_text().splitlines() if line.strip()]
    later = [(job, s["wall_s"]) for job in study.jobs.values() if (s := study.summary(job)) and "wall_s" in s]
    groups = {}
    for kind in ("train", "eval"):
        every = [r for r in ledger if r["kind"] == kind]
        groups[f"round one, {kind}"] = (
            [r["wall_s"] for r in every if r["status"] == "done"],
            [r["wall_s"] for r in every],
        )
    for kind in (Train, Eval):
        walls = [wall for job, wall in later if isinstance(job, kind)]
        groups[f"later, {kind.__name__.lower()}"] = walls, walls
    rows = [
        [
            label,
            len(done),
            f"{np.median(done) / 60:.1f}",
            f"{min(done) / 60:.1f}–{max(done) / 60:.1f}",
            f"{sum(every) / 3600:.2f}",
        ]
        for label, (done, every) in groups.items()
        if done
    ]
    header = ["jobs", "finished", "median min (finishing attempt)", "range (min)", "hours, all attempts"]
    interrupted = sum(r["status"] != "done" for r in ledger)
    loads = [r["load_start"][1] for r in ledger]
    return [
        f"Round one's ledger: {len(ledger)} attempts, {interrupted} interrupted and resumed; 1 thread per job, one or"
        f" two jobs at a time, on 2 cores shared with other work (5-minute load at job starts {min(loads):.1f}–"
        f"{max(loads):.1f}).",
        "",
        *table(header, rows),
    ]


def math_groups() -> dict[str, list[Eval]]:
    """The math evaluations of the base model and of each method's seeds at its chosen rate."""
    return {LABELS[m]: evals(m, MATH, 100, (0,) if m == "base" else SEEDS) for m in LABELS}


def budget_accuracy(study: Study, stage: str = "n1536") -> list[str]:
    """Accuracy of `stage`'s evaluations (round two: each method at 1536 examples, seed 0) and the paired
    differences of every hyperbolic form against LoRA and of the two forms; a line saying what is missing until
    every one of them has a summary."""
    lines = [line for line in GRID if isinstance(line, Eval) and line.stage == stage]
    groups = {method_label(e.run.method, e.run.variant): [e] for e in lines}
    done = sum(study.summary(e) is not None for e in lines)
    if done < len(lines):
        return [f"Not evaluated yet: {done} of {len(lines)} evaluations have a summary.", ""]
    forms = [label for label in groups if label != "LoRA"]
    which = [(form, "LoRA") for form in forms] + [(a, b) for i, a in enumerate(forms) for b in forms[i + 1 :]]
    return accuracy_table(study, groups, MATH) + comparisons(study, pairs(groups, which), MATH)


def pairs(groups: dict[str, list[Eval]], which=PAIRS) -> dict[str, tuple[list[Eval], list[Eval]]]:
    return {f"{a} − {b}": (groups[a], groups[b]) for a, b in which}


def write_tables(study: Study, output: Path) -> str:
    math = math_groups()
    same = {LABELS[m]: [Eval("", Train("", m, 1e-3), MATH, 100)] for m in ("lora", "hyplora", "dora")}
    cs = {LABELS[m]: evals(m, COMMONSENSE, 100, (0,), task="commonsense") for m in LABELS}
    gemma = {LABELS[m]: evals(m, MATH, 50, (0,), model=GEMMA) for m in ("base", "lora", "hyplora")}
    base = LABELS["base"]
    lines = [
        "# CPU study tables",
        "",
        "Written by `examples/cpu_study/tables.py` from `examples/cpu_study/results/`; read with `docs/results.md`.",
        "",
        "## 1. Validation loss: learning-rate grid and seeds (math, 192 examples)",
        "",
        *loss_grid(study, ("lora", "hyplora", "dora"), (3e-4, 1e-3, 3e-3, 1e-2)),
        "Every method's and budget's rate grid (seed 0):",
        "",
        *rate_grids(study),
        "## 2. Validation loss by training budget (each method at its chosen rate)",
        "",
        *budget_table(by_budget(study)),
        "## 3. Math accuracy (robust mode, 100 items per slice)",
        "",
        *accuracy_table(study, math, MATH),
        "## 4. Math, paired differences (seed-averaged)",
        "",
        *comparisons(study, pairs(math), MATH),
        *per_slice(study, pairs(math), MATH),
        "## 5. Math at one shared rate (1e-3, seed 0)",
        "",
        *accuracy_table(study, same, MATH),
        *comparisons(study, pairs(same), MATH),
        "## 6. Math accuracy by difficulty level",
        "",
        *level_table(study, math),
        "## 7. Paper mode vs robust mode (seed 0)",
        "",
        *paper_table(study),
        "## 8. HypLoRA ablations (seed 0, HypLoRA's chosen rate)",
        "",
        *ablation_table(study),
        "## 9. Inputs of the adapted layers and the exponential map's time coordinate at the median token",
        "",
        *input_norm_table(study.dir),
        "## 10. Commonsense accuracy (robust mode, 100 items per slice, seed 0)",
        "",
        *accuracy_table(study, cs, COMMONSENSE, [("most frequent answer, always", constant_answer(COMMONSENSE, 100))]),
        *comparisons(study, pairs(cs), COMMONSENSE),
        *per_slice(study, pairs(cs), COMMONSENSE),
        *loss_grid(study, ("lora", "hyplora", "dora"), (), (0,), task="commonsense"),
        "## 11. Gemma 3 270M base (math, 50 items per slice, seed 0)",
        "",
        *loss_grid(study, ("lora", "hyplora"), (1e-3, 3e-3), (0,), model=GEMMA),
        *accuracy_table(study, gemma, MATH),
        *comparisons(study, pairs(gemma, (("HypLoRA", "LoRA"), ("LoRA", base), ("HypLoRA", base))), MATH),
        "## 12. Compute",
        "",
        *compute_table(study),
        "## 13. Math accuracy at 1536 training examples (round two, seed 0, each method at its 768 rate)",
        "",
        *budget_accuracy(study),
    ]
    text = "\n".join(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return text


# ----------------------------------------------------------------------------- figures
def plot_curves(study: Study, path: Path) -> None:
    """Validation loss per step at each method's chosen rate (seed 0 opaque, other seeds faded; DoRA dashed)."""
    plt = pyplot()
    colors = {"lora": "#4c72b0", "dora": "#55a868", "hyplora": "#c44e52"}
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for method in ("lora", "hyplora", "dora"):
        for seed in SEEDS:
            run = study.summary(chosen(method, seed))
            steps, losses = zip(*run["val_curve"])
            label = f"{LABELS[method]} lr {run['lr']:g}" if seed == 0 else None
            style = "o--" if method == "dora" else "o-"
            axes.plot(
                steps, losses, style, color=colors[method], alpha=1 if seed == 0 else 0.4, markersize=3, label=label
            )
    axes.set(xlabel="optimizer step", ylabel="validation loss (nats/token)")
    axes.set_title("math mixture, 192 examples: held-out validation loss (seeds 1-2 faded)", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    save_png(figure, path)


def plot_accuracy(study: Study, groups: dict[str, list[Eval]], datasets, path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(groups)
    for k, (label, group) in enumerate(groups.items()):
        scores = study.correct(group, datasets).mean(0)
        n = len(scores) // len(datasets)
        cells = [accuracy_ci(scores[i * n : (i + 1) * n]) for i in range(len(datasets))] + [accuracy_ci(scores)]
        x = np.arange(len(cells)) + (k - (len(groups) - 1) / 2) * width
        estimate = np.array([c.estimate for c in cells])
        error = [estimate - [c.low for c in cells], [c.high for c in cells] - estimate]
        axes.bar(x, 100 * estimate, width, yerr=100 * np.array(error), capsize=2, label=label)
    axes.set_xticks(np.arange(len(datasets) + 1), [*datasets, "pooled"])
    axes.set_ylabel("accuracy (%)")
    axes.set_title("math: accuracy with 95% bootstrap intervals (seed-averaged)", fontsize="medium")
    axes.legend(fontsize="x-small")
    axes.grid(axis="y", alpha=0.3)
    save_png(figure, path)


def plot_budgets(losses: dict, path: Path) -> None:
    """Final validation loss against training examples (log x, ± sd over seeds), and each method's gap to LoRA with
    its 95% normal interval (± 1.96 se, where both sides have two or more seeds)."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    lora = losses[("lora", "")]
    every_budget = sorted({b for per_budget in losses.values() for b in per_budget})
    for k, ((method, variant), per_budget) in enumerate(losses.items()):
        style = {"label": method_label(method, variant), "color": f"C{k}", "marker": "o"}
        budgets = list(per_budget)
        means = [np.mean(v) for v in per_budget.values()]
        sds = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in per_budget.values()]
        left.errorbar(budgets, means, yerr=sds, capsize=3, **style)
        if method != "lora":
            shared = [b for b in budgets if b in lora]
            gaps = [gap_to(per_budget[b], lora[b]) for b in shared]
            errors = [0 if se is None else 1.96 * se for _, se in gaps]
            right.errorbar(shared, [gap for gap, _ in gaps], yerr=errors, capsize=3, **style)
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xticks(every_budget, [str(b) for b in every_budget])
        axes.minorticks_off()
        axes.set_xlabel("training examples (one epoch)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    left.set_ylabel("final validation loss (nats/token)")
    left.set_title("validation loss (± sd over seeds)", fontsize="medium")
    right.set_ylabel("− LoRA (nats/token)")
    right.set_title("gap to LoRA (95% interval where both have 2+ seeds)", fontsize="medium")
    right.axhline(0, color="black", linewidth=0.8)
    save_png(figure, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="summaries (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=DOCS_DIR, help="tables.md and PNGs (default: %(default)s)")
    args = parser.parse_args(argv)
    study = Study(args.results_dir)
    write_tables(study, args.output_dir / "tables.md")
    plot_curves(study, args.output_dir / "val_loss.png")
    plot_accuracy(study, math_groups(), MATH, args.output_dir / "accuracy_math.png")
    losses = by_budget(study)
    if len({b for per_budget in losses.values() for b in per_budget}) > 1:
        plot_budgets(losses, args.output_dir / "val_loss_budget.png")
    print(f"wrote {args.output_dir / 'tables.md'} and figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
