"""Evaluate a model (and optionally an adapter) on the LLM-Adapters math and commonsense benchmarks.

`--mode paper` reproduces LLM-Adapters' protocol exactly (4-beam search, 256 new tokens for math,
32 for commonsense, its answer-extraction rules); `--mode robust` fixes the known extraction
flaws (listed in summary.json) and decodes greedily. Writes <dataset>.jsonl (one line per item:
prompt, output, prediction, gold, correct, level when known), summary.json, results.md and
accuracy.png to --output-dir; running the same command again reuses every finished item.
"""

import argparse

from hyplora.harness.prompts import TEMPLATES

EPILOG = """examples:
  hyplora eval --model smollm2-135m --datasets svamp mawps --limit 50 --output-dir runs/eval-base
  hyplora eval --model smollm2-135m --adapter runs/smol-hyplora --datasets svamp,mawps --mode robust \\
      --output-dir runs/eval-hyplora
  hyplora eval --model meta-llama/Meta-Llama-3-8B --adapter runs/llama3-hyplora \\
      --datasets gsm8k svamp aqua mawps --levels-dir ../HypLLM/dataset --output-dir runs/llama3-math
  hyplora eval --model smollm2-135m --datasets my_test.json --greedy --max-new-tokens 64 --output-dir runs/mine
"""

MODES = ("paper", "robust")  # hyplora.harness.evaluation.MODES, written out so that `hyplora --help` needs no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="HF id, local folder, .gguf, or smollm2-135m / gemma3-270m (default: %(default)s)",
    )
    parser.add_argument(
        "--adapter", default=None, help="HypLoRA / LoRA / DoRA adapter folder written by save_pretrained"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge a LoRA / DoRA adapter into the weights before decoding (same function up to "
        "rounding; DoRA then decodes as fast as the base model). HypLoRA cannot be merged",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        help="test sets (gsm8k svamp aqua mawps addsub multiarith singleeq boolq piqa siqa winogrande "
        "arc-e arc-c obqa) or JSON/JSONL files; space- or comma-separated",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N items of each set")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="prompts per generation batch; beam search runs batch x beams sequences (default: %(default)s; "
        "greedy decoding on a CPU is faster at 64, see benchmarks/README-eval.md)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="paper",
        help="paper: LLM-Adapters exactly; robust: fixed extraction, greedy (default: %(default)s)",
    )
    parser.add_argument(
        "--output-dir", required=True, help="folder for the JSONL, summary.json, results.md and accuracy.png"
    )
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument(
        "--num-beams", type=int, default=None, help="beam width (default: 4 in paper mode, 1 in robust)"
    )
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (same as --num-beams 1)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="new-token budget (default: 256 math, 32 commonsense)"
    )
    parser.add_argument(
        "--prompt-template",
        choices=TEMPLATES,
        default="alpaca",
        help="alpaca: LLM-Adapters' evaluation prompt; chat: the tokenizer's chat template (default: %(default)s)",
    )
    parser.add_argument(
        "--levels-dir",
        default=None,
        help="folder with HypLLM's <Name>/updated_level1.json files, for per-level accuracy",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="model weights dtype (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from hyplora.errors import InputError
    from hyplora.harness.base_models import load_model
    from hyplora.harness.evaluation import check_options, evaluate, markdown_table

    datasets = [name for entry in args.datasets for name in entry.split(",") if name]
    options = dict(
        limit=args.limit,
        batch_size=args.batch_size,
        mode=args.mode,
        output_dir=args.output_dir,
        max_new_tokens=args.max_new_tokens,
        num_beams=1 if args.greedy else args.num_beams,
        prompt_template=args.prompt_template,
        levels_dir=args.levels_dir,
    )
    check_options(datasets, **options)
    if args.merge and args.adapter is None:
        raise InputError("--merge: needs --adapter")
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    if args.adapter is not None:
        from hyplora import load_adapter

        model = load_adapter(model, args.adapter)
        if args.merge:
            try:
                model = model.merge_and_unload()
            except NotImplementedError as err:  # HypLoRA layers refuse merging before touching a weight
                raise InputError(f"--merge: {args.adapter}: {err}") from None
    summary = evaluate(
        model,
        tokenizer,
        datasets,
        **options,
        run_info={"model": args.model, "adapter": args.adapter, "merged": args.merge, "dtype": args.dtype},
    )
    print(markdown_table(summary), end="")
    print(f"results in {args.output_dir} (summary.json, results.md, accuracy.png, <dataset>.jsonl)")
    return 0
