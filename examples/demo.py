"""The main job: SmolLM2-135M-Instruct before and after HypLoRA fine-tuning, on SVAMP and MAWPS.

    python examples/demo.py                # `make demo`; HypLoRA only
    python examples/demo.py --with-lora    # LoRA beside it: same data, rank, alpha and schedule

1. load the packaged SmolLM2-135M-Instruct (the first run converts its GGUF and caches it);
2. evaluate it on fixed slices of SVAMP and MAWPS (robust answer extraction, greedy decoding);
3. fine-tune it with HypLoRA on a slice of the `math` training mixture (test overlaps removed);
4. reload the base, attach the saved adapter from disk, evaluate again;
5. write report.md and report.json to --output-dir and print the table.

It calls the functions behind `hyplora train` and `hyplora eval` (`hyplora.harness.training.train`,
`hyplora.harness.evaluation.evaluate`, `hyplora.harness.base_models.load_model`, `hyplora.load_adapter`), so what it
shows is what the CLI does. The default sizes fit 15 minutes on 2 CPU cores (see the README).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m"
EVAL_SETS = ("svamp", "mawps")


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
    parser.add_argument("--eval-batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument(
        "--max-new-tokens", type=int, default=160, help="generation budget per problem (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def train_args(args: argparse.Namespace, method: str):
    """The paper's recipe (rank 32, alpha 64, dropout 0.05, micro-batch 4, lr 3e-4), one short epoch."""
    from hyplora.harness.training import TrainArgs

    return TrainArgs(
        model=MODEL,
        data="math",
        method=method,
        output_dir=str(args.output_dir / method),
        limit=args.train_examples,
        epochs=1,
        batch_size=8,  # the paper's 16 would leave too few steps in a few minutes
        warmup_steps=3,
        val_size=16,
        save_steps=10_000,  # checkpoints are for long runs; the final adapter is saved regardless
        eval_steps=8,
        logging_steps=2,
    )


def evaluate_on_slices(args: argparse.Namespace, label: str, adapter_dir: Path | None = None) -> dict:
    """Load the base (and the adapter from disk) and evaluate it as `hyplora eval` would."""
    from hyplora import load_adapter
    from hyplora.harness.base_models import load_model
    from hyplora.harness.evaluation import evaluate

    model, tokenizer = load_model(MODEL)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir)
    return evaluate(
        model,
        tokenizer,
        list(EVAL_SETS),
        limit=args.eval_limit,
        batch_size=args.eval_batch_size,
        mode="robust",
        output_dir=args.output_dir / f"eval-{label}",
        max_new_tokens=args.max_new_tokens,
        num_beams=1,
    )


def accuracy(summary: dict, dataset: str) -> float:
    """Accuracy in percent of one dataset in an `evaluate` summary."""
    return 100 * summary["datasets"][dataset]["accuracy"]


def report_rows(results: dict) -> list[dict]:
    rows = []
    for label, result in results.items():
        row = {"model": label, **{name: accuracy(result["summary"], name) for name in EVAL_SETS}}
        row["mean"] = sum(row[name] for name in EVAL_SETS) / len(EVAL_SETS)
        row.update({key: result.get(key) for key in ("val_loss", "train_s", "trainable_params")})
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], n_items: int) -> str:
    header = [
        "model",
        *(f"{name.upper()} (n={n_items})" for name in EVAL_SETS),
        "mean",
        "val loss",
        "train s",
        "trainable params",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], *(f"{row[name]:.1f}" for name in EVAL_SETS), f"{row['mean']:.1f}"]
        cells += [
            "-" if row[key] is None else f"{row[key]:{fmt}}"
            for key, fmt in (("val_loss", ".3f"), ("train_s", ".0f"), ("trainable_params", ","))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from hyplora.harness.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = ["hyplora", "lora"] if args.with_lora else ["hyplora"]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:  # a fresh demo each time: drop this script's previous runs
        shutil.rmtree(args.output_dir / method, ignore_errors=True)
    start, timings, results = time.perf_counter(), {}, {}

    def stage(name: str):
        print(f"\n== {name}  [{time.perf_counter() - start:.0f} s]", flush=True)

    stage(
        f"1. {MODEL}: load (first run: convert the GGUF) and evaluate on {', '.join(EVAL_SETS)}, first {args.eval_limit} each"
    )
    tick = time.perf_counter()
    results["base"] = {"summary": evaluate_on_slices(args, "base")}
    timings["eval base"] = time.perf_counter() - tick

    for method in methods:
        options = train_args(args, method)
        stage(
            f"2. fine-tune with {method}: {options.limit} examples of the math mixture, r={options.rank}, alpha={options.alpha:g}"
        )
        tick = time.perf_counter()
        adapter_dir = train(options)
        timings[f"train {method}"] = train_s = time.perf_counter() - tick
        record = json.loads((adapter_dir / "train_args.json").read_text())

        stage(f"3. evaluate base + {method} adapter loaded from {adapter_dir}")
        tick = time.perf_counter()
        results[method] = {
            "summary": evaluate_on_slices(args, method, adapter_dir),
            "val_loss": record["result"]["val_loss"],
            "train_s": train_s,
            "trainable_params": record["run"]["trainable_params"],
            "adapter": str(adapter_dir),
        }
        timings[f"eval {method}"] = time.perf_counter() - tick

    rows = report_rows(results)
    table = markdown_table(rows, args.eval_limit)
    total = time.perf_counter() - start
    settings = train_args(args, "hyplora").to_json()
    report = {
        "model": MODEL,
        "eval": {
            "datasets": list(EVAL_SETS),
            "limit": args.eval_limit,
            "mode": "robust",
            "decoding": "greedy",
            "max_new_tokens": args.max_new_tokens,
        },
        "train": {key: value for key, value in settings.items() if key not in ("method", "output_dir")},
        "rows": rows,
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
        "total_s": round(total, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (args.output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "report.md").write_text(
        f"# hyplora demo: {MODEL}, before and after fine-tuning\n\n{table}\n\n"
        f"Accuracy in % on the first {args.eval_limit} problems of each test set (robust extraction, greedy, "
        f"{args.max_new_tokens} new tokens). Training: {settings['limit']} examples of the `math` mixture, 1 epoch, "
        f"batch {settings['batch_size']}, lr {settings['lr']:g}, r={settings['rank']}, alpha={settings['alpha']:g} for every method. "
        f"With {args.eval_limit} problems per set, one problem is {100 / args.eval_limit:.1f} points: small differences are noise.\n\n"
        f"Total {total:.0f} s on {torch.get_num_threads()} torch threads; stages: "
        + ", ".join(f"{key} {value:.0f} s" for key, value in timings.items())
        + ".\n"
    )
    stage(f"done in {total:.0f} s; report in {args.output_dir / 'report.md'}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
