"""The main job in one run: SmolLM2-135M-Instruct's embedding geometry, then HypLoRA fine-tuning, evaluated before and after.

    python examples/demo.py                # `make demo`; HypLoRA only
    python examples/demo.py --with-lora    # LoRA beside it: same data, rank, alpha and schedule

1. geometry (`hyplora analyze` on one dataset): the power law of SVAMP's token frequencies, and the
   Gromov δ of its prompts' input embeddings beside the Gaussian and shuffled controls and the null
   of structureless points at the model's dimension and at the paper's 4096;
2. evaluate the base model on fixed slices of SVAMP and MAWPS (robust answer extraction, greedy);
3. fine-tune it with HypLoRA on a slice of the `math` training mixture (test overlaps removed);
4. attach the saved adapter from disk and evaluate again: accuracy with 95% Wilson intervals, the
   change with a 95% paired-bootstrap interval over the same items, the loss curve as a PNG;
5. where HypLoRA stands against LoRA in the committed CPU study (docs/results.md), and what a run
   of this size can resolve.

It calls the functions behind `hyplora analyze`, `hyplora train` and `hyplora eval`, so what it shows
is what the CLI does. Writes report.md, report.json, loss_curve.png and geometry/ to --output-dir.
"""

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m"
EVAL_SETS = ("svamp", "mawps")
GEOMETRY_SET = "svamp"
# The CPU study's learning rates, chosen per method on validation loss at this budget (docs/results.md).
LEARNING_RATES = {"hyplora": 3e-3, "lora": 1e-3}
STUDY_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
STUDY_TABLES = STUDY_RESULTS.parent / "results" / "tables.md"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="default: %(default)s")
    parser.add_argument("--with-lora", action="store_true", help="also train and evaluate LoRA (same alpha)")
    parser.add_argument(
        "--train-examples", type=int, default=192, help="training slice of the math mixture (default: %(default)s)"
    )
    parser.add_argument(
        "--eval-limit", type=int, default=30, help="first N problems of each test set (default: %(default)s)"
    )
    parser.add_argument(
        "--geometry-prompts", type=int, default=50, help="prompts in the per-prompt δ (default: %(default)s)"
    )
    parser.add_argument("--eval-batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument(
        "--max-new-tokens", type=int, default=160, help="generation budget per problem (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def train_args(args: argparse.Namespace, method: str):
    """Rank 32, alpha 64, dropout 0.05 (the paper's), the study's learning rate, one short epoch."""
    from hyplora.harness.training import TrainArgs

    return TrainArgs(
        model=MODEL,
        data="math",
        method=method,
        output_dir=str(args.output_dir / method),
        limit=args.train_examples,
        epochs=1,
        lr=LEARNING_RATES[method],
        batch_size=8,  # the paper's 16 would leave too few steps in a few minutes
        warmup_steps=3,
        val_size=16,
        save_steps=10_000,  # checkpoints are for long runs; the final adapter is saved regardless
        eval_steps=8,
        logging_steps=2,
    )


def geometry(model, tokenizer, args: argparse.Namespace) -> dict:
    """`hyplora analyze --datasets svamp` (no hidden states): its summary entry, with the report in geometry/."""
    from hyplora.geometry.datasets import load_analysis_dataset
    from hyplora.geometry.pipeline import AnalysisOptions, run_analysis
    from hyplora.geometry.report import write_report

    options = AnalysisOptions(prompt_limit=args.geometry_prompts, top_n=500)
    result = run_analysis(model, tokenizer, [load_analysis_dataset(GEOMETRY_SET)], options, model_name=MODEL)
    write_report(result, args.output_dir / "geometry")
    return result.summary | {"dataset": result.summary["datasets"][GEOMETRY_SET]}


def geometry_lines(summary: dict) -> list[str]:
    """What the geometry step found, in a few sentences."""
    from hyplora.geometry.report import PAPER_POWER_LAW_ALPHA, PAPER_RELATIVE_DELTA

    entry, dim = summary["dataset"], summary["embedding_dim"]
    fit, delta, null = entry["power_law"], entry["delta_per_prompt"], entry["delta_null"]
    tests = ", ".join(
        f"vs {name}: " + ("did not fit" if t["status"] != "fitted" else f"R = {t['R']:.1f}, p = {t['p']:.2g}")
        for name, t in (("lognormal", fit["vs_lognormal"]), ("exponential", fit["vs_exponential"]))
    )
    clouds = ", ".join(f"{c} {delta[c]['mean']:.3f} ± {delta[c]['std']:.3f}" for c in ("gaussian", "shuffled"))
    nulls = ", ".join(f"d = {d}: {n['mean']:.3f}" for d, n in null.items())
    lo, hi = PAPER_RELATIVE_DELTA
    return [
        f"- Power law of {entry['label']}'s token frequencies: α = {fit['alpha']:.3f} ± {fit['sigma']:.3f} "
        f"(paper ≈ {PAPER_POWER_LAW_ALPHA}; {tests}).",
        f"- Relative δ per prompt ({len(delta['num_points'])} prompts, {dim}-d input embeddings): "
        f"{delta['embeddings']['mean']:.3f} ± {delta['embeddings']['std']:.3f}; controls of the same size: {clouds}.",
        f"- Null (iid Gaussian clouds of the same point counts): {nulls}. The paper's {lo}-{hi} is for 4096-d "
        "embeddings: compare it with the null at 4096, not with these numbers.",
    ]


def evaluate_on_slices(model, tokenizer, args: argparse.Namespace, label: str) -> dict:
    """Evaluate as `hyplora eval --mode robust` would; returns the summary plus each set's per-item correctness."""
    from hyplora.harness.evaluation import EvalOptions, evaluate, read_items

    options = EvalOptions(
        list(EVAL_SETS),
        args.output_dir / f"eval-{label}",
        limit=args.eval_limit,
        batch_size=args.eval_batch_size,
        mode="robust",
        max_new_tokens=args.max_new_tokens,
        num_beams=1,
    )
    summary = evaluate(model, tokenizer, options)
    correct = {
        name: [bool(item["correct"]) for item in read_items(Path(options.output_dir) / f"{name}.jsonl")]
        for name in summary["datasets"]
    }
    return {"summary": summary, "correct": correct}


def wilson(correct: list[bool]) -> tuple[float, float, float]:
    """Accuracy and its 95% Wilson score interval, in %."""
    from scipy.stats import binomtest

    ci = binomtest(sum(correct), len(correct)).proportion_ci(0.95, method="wilson")
    return 100 * sum(correct) / len(correct), 100 * ci.low, 100 * ci.high


def paired_change(after: list[bool], before: list[bool]) -> tuple[float, float, float]:
    """Mean of after - before over the same items, in points, with a 95% percentile bootstrap interval (10,000 resamples)."""
    import numpy as np
    from scipy.stats import bootstrap

    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if np.all(diff == diff[0]):  # no spread to resample: the interval is the point
        return 100 * diff[0], 100 * diff[0], 100 * diff[0]
    ci = bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile", random_state=0).confidence_interval
    return 100 * diff.mean(), 100 * ci.low, 100 * ci.high


def pooled(result: dict) -> list[bool]:
    return [c for name in EVAL_SETS for c in result["correct"][name]]


def accuracy_table(results: dict, n_items: int) -> str:
    header = [
        "model",
        *(f"{name.upper()} (n={n_items})" for name in EVAL_SETS),
        f"pooled (n={len(EVAL_SETS) * n_items})",
    ]
    header += ["change vs base (points)", "val loss", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = pooled(results["base"])
    for label, result in results.items():
        cells = [label]
        for correct in [result["correct"][name] for name in EVAL_SETS] + [pooled(result)]:
            cells.append("{:.1f} [{:.1f}, {:.1f}]".format(*wilson(correct)))
        cells.append(
            "—" if label == "base" else "{:+.1f} [{:+.1f}, {:+.1f}]".format(*paired_change(pooled(result), base))
        )
        cells += [
            "—" if result.get(k) is None else f"{result[k]:{fmt}}"
            for k, fmt in (("val_loss", ".4f"), ("train_s", ".0f"))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_lines(path: Path = STUDY_RESULTS) -> list[str]:
    """The CPU study's first findings on validation loss and on HypLoRA - LoRA accuracy, quoted from docs/results.md."""
    if not path.is_file():
        return [f"- {path} is not here: the committed CPU study results are missing."]
    items, in_findings = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            in_findings = line.strip() == "### Findings"
        elif in_findings and re.match(r"\d+\. ", line):
            items.append(re.sub(r"^\d+\. ", "", line))
        elif in_findings and items and line.startswith("   "):
            items[-1] += " " + line.strip()
    wanted = [next((i for i in items if key in i), None) for key in ("validation loss", "HypLoRA − LoRA")]
    if not any(wanted):
        return [f"- {path.name} has no findings on validation loss or HypLoRA − LoRA: read it directly."]
    return [f"- {item} (docs/results.md)" for item in dict.fromkeys(w for w in wanted if w)]


def resolution_lines(results: dict, method: str, tables: Path = STUDY_TABLES) -> list[str]:
    """How large a difference this run and the study can tell from noise (the half-width of a 95% interval)."""
    _, low, high = paired_change(pooled(results[method]), pooled(results["base"]))
    _, acc_low, acc_high = wilson(pooled(results[method]))
    n = len(pooled(results[method]))
    lines = [
        f"- This run: {n} items, so one item is {100 / n:.1f} points; the {method} accuracy's 95% interval is "
        f"{acc_high - acc_low:.1f} points wide and the change against the base ±{(high - low) / 2:.1f} points: "
        "only changes larger than that are more than noise."
    ]
    number = r"([-+]?\d+\.?\d*)"
    row = re.compile(rf"^\| HypLoRA − LoRA \| (\d+) \| (\d+) \| {number} \[{number}, {number}\]", re.MULTILINE)
    match = row.search(tables.read_text(encoding="utf-8")) if tables.is_file() else None
    if match:
        seeds, items, low, high = int(match[1]), int(match[2]), float(match[4]), float(match[5])
        lines.append(
            f"- The study's paired HypLoRA − LoRA interval over {items} items and {seeds} seed(s) is "
            f"±{(high - low) / 2:.1f} points (docs/results/tables.md): accuracy differences smaller than that are "
            "not resolved even there."
        )
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from hyplora import load_adapter
    from hyplora.harness.base_models import load_model
    from hyplora.harness.training import LOSS_PLOT_FILE, train

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = ["hyplora", "lora"] if args.with_lora else ["hyplora"]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:  # a fresh demo each time: drop this script's previous runs
        shutil.rmtree(args.output_dir / method, ignore_errors=True)
    start, timings, results = time.perf_counter(), {}, {}

    def stage(name: str):
        print(f"\n== {name}  [{time.perf_counter() - start:.0f} s]", flush=True)

    stage(f"1. {MODEL}: load (first run: convert the GGUF); geometry of its input embeddings on {GEOMETRY_SET}")
    tick = time.perf_counter()
    model, tokenizer = load_model(MODEL)
    geo = geometry_lines(geometry(model, tokenizer, args))
    timings["geometry"] = time.perf_counter() - tick
    print("\n".join(geo))

    stage(f"2. evaluate the base model on {', '.join(EVAL_SETS)}, first {args.eval_limit} each")
    tick = time.perf_counter()
    results["base"] = evaluate_on_slices(model, tokenizer, args, "base")
    timings["eval base"] = time.perf_counter() - tick
    del model

    for method in methods:
        options = train_args(args, method)
        stage(
            f"3. fine-tune with {method}: {options.limit} examples of the math mixture, r={options.rank}, "
            f"alpha={options.alpha:g}, lr {options.lr:g}"
        )
        tick = time.perf_counter()
        adapter_dir = train(options)
        timings[f"train {method}"] = train_s = time.perf_counter() - tick
        record = json.loads((adapter_dir / "train_args.json").read_text())
        shutil.copyfile(adapter_dir / LOSS_PLOT_FILE, args.output_dir / f"loss_curve_{method}.png")

        stage(f"4. evaluate base + {method} adapter loaded from {adapter_dir}")
        tick = time.perf_counter()
        model, tokenizer = load_model(MODEL)
        results[method] = evaluate_on_slices(load_adapter(model, adapter_dir), tokenizer, args, method)
        results[method] |= {"val_loss": record["result"]["val_loss"], "train_s": train_s, "adapter": str(adapter_dir)}
        timings[f"eval {method}"] = time.perf_counter() - tick
        del model

    table = accuracy_table(results, args.eval_limit)
    study = study_lines()
    resolution = resolution_lines(results, "hyplora")
    total = time.perf_counter() - start
    settings = train_args(args, "hyplora").to_json()
    report = {
        "model": MODEL,
        "geometry": {"dataset": GEOMETRY_SET, "report": str(args.output_dir / "geometry" / "report.md")},
        "eval": {"datasets": list(EVAL_SETS), "limit": args.eval_limit, "mode": "robust", "decoding": "greedy"},
        "train": {key: value for key, value in settings.items() if key not in ("method", "output_dir", "lr")},
        "lr": {method: LEARNING_RATES[method] for method in methods},
        "rows": {
            label: {
                "accuracy_wilson95": {name: wilson(r["correct"][name]) for name in EVAL_SETS}
                | {"pooled": wilson(pooled(r))},
                "change_vs_base_bootstrap95": None
                if label == "base"
                else paired_change(pooled(r), pooled(results["base"])),
                **{key: r.get(key) for key in ("val_loss", "train_s", "adapter")},
            }
            for label, r in results.items()
        },
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
        "total_s": round(total, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (args.output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "report.md").write_text(
        f"# hyplora demo: {MODEL}\n\n## 1. Geometry of the input embeddings ({GEOMETRY_SET})\n\n"
        + "\n".join(geo)
        + "\n\nFull report: [geometry/report.md](geometry/report.md).\n\n## 2. Before and after fine-tuning\n\n"
        f"{table}\n\n"
        f"Accuracy in % with 95% Wilson intervals on the first {args.eval_limit} problems of each test set (robust "
        f"extraction, greedy, {args.max_new_tokens} new tokens); the change is the paired difference on the same "
        "items with a 95% bootstrap interval. Training: "
        f"{settings['limit']} examples of the `math` mixture, 1 epoch, batch {settings['batch_size']}, "
        f"r={settings['rank']}, alpha={settings['alpha']:g}. Loss curves: "
        + ", ".join(f"[loss_curve_{m}.png](loss_curve_{m}.png)" for m in methods)
        + ".\n\n## 3. Against LoRA, and what a run this size resolves\n\n"
        + "\n".join(study + resolution)
        + f"\n\nTotal {total:.0f} s on {torch.get_num_threads()} torch threads; stages: "
        + ", ".join(f"{key} {value:.0f} s" for key, value in timings.items())
        + ".\n"
    )
    stage(f"done in {total:.0f} s; report in {args.output_dir / 'report.md'}")
    print(table, "", *study, *resolution, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
