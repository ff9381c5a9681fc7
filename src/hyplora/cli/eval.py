"""Evaluate a model (and optionally an adapter) on the LLM-Adapters math and commonsense benchmarks.

`--mode paper` reproduces LLM-Adapters' protocol exactly (4-beam search, 256 new tokens for math,
32 for commonsense, its answer-extraction rules); `--mode robust` fixes the known extraction
flaws (listed in summary.json) and decodes greedily. Writes <dataset>.jsonl (one line per item:
prompt, output, prediction, gold, correct, level when known), summary.json, results.md and
accuracy.png to --output-dir; running the same command again reuses every finished item.
"""

import argparse

EPILOG = """examples:
  hyplora eval --model smollm2-135m --datasets svamp mawps --limit 50 --output-dir runs/eval-base
  hyplora eval --model smollm2-135m --adapter runs/smol-hyplora --datasets svamp,mawps --mode robust \\
      --output-dir runs/eval-hyplora
  hyplora eval --model meta-llama/Meta-Llama-3-8B --adapter runs/llama3-hyplora \\
      --datasets gsm8k svamp aqua mawps --levels-dir ../HypLLM/dataset --output-dir runs/llama3-math
  hyplora eval --model smollm2-135m --datasets my_test.json --greedy --max-new-tokens 64 --output-dir runs/mine
"""

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyplora.cli.options import add_dataclass_options
    from hyplora.harness.evaluation import EvalOptions

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
    decoding = add_dataclass_options(parser, EvalOptions)["decoding"]
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (same as --num-beams 1)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="model weights dtype (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from hyplora.cli.options import dataclass_values
    from hyplora.errors import InputError
    from hyplora.harness.base_models import load_model
    from hyplora.harness.evaluation import EvalOptions, evaluate
    from hyplora.harness.reports import markdown_table

    values = dataclass_values(EvalOptions, args)
    values["datasets"] = [name for entry in args.datasets for name in entry.split(",") if name]
    values["num_beams"] = 1 if args.greedy else args.num_beams
    options = EvalOptions(**values)
    if args.merge and args.adapter is None:
        raise InputError("--merge: needs --adapter")
    if args.adapter is not None:  # a bad adapter folder costs seconds, not a base model's load
        from hyplora.adapter.loading import check_adapter_folder

        check_adapter_folder(args.adapter)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    if args.adapter is not None:
        from hyplora import load_adapter

        model = load_adapter(model, args.adapter)
        if args.merge:
            try:
                model = model.merge_and_unload()
            except NotImplementedError as err:  # HypLoRA layers refuse merging before touching a weight
                raise InputError(f"--merge: {args.adapter}: {err}") from None
    run_info = {"model": args.model, "adapter": args.adapter, "merged": args.merge, "dtype": args.dtype}
    summary = evaluate(model, tokenizer, options, run_info=run_info)
    print(markdown_table(summary), end="")
    print(f"results in {args.output_dir} (summary.json, results.md, accuracy.png, <dataset>.jsonl)")
    return 0
