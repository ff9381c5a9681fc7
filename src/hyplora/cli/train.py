"""Fine-tune a causal LM with HypLoRA, LoRA or DoRA (transformers Trainer; the paper's recipe by default).

Writes the adapter (adapter_config.json + adapter_model.safetensors), train_args.json,
loss_log.jsonl, loss.png and checkpoint-<step>/ folders to --output-dir. The defaults are the
HypLoRA paper's: r=32, alpha=64 for every method, batch 16 from micro-batches of 4, 3 epochs,
lr 3e-4, cutoff 256, warmup 100, dropout 0.05, targets q,k,v,up,down, 120 validation examples.
"""

import argparse

EPILOG = """examples:
  hyplora train --model smollm2-135m --data math --method hyplora --output-dir runs/smol-hyplora
  hyplora train --model smollm2-135m --data math --method lora --limit 200 --max-steps 20 --warmup-steps 2
  hyplora train --output-dir runs/smol-hyplora --resume          # after an interruption, same other flags
  torchrun --nproc_per_node 8 -m hyplora.cli train --model meta-llama/Meta-Llama-3-8B-Instruct \\
      --data math_10k.json --method hyplora --output-dir runs/llama3-hyplora
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyplora.harness.training import DEFAULT_TARGET_MODULES, METHODS, PRECISIONS, TrainArgs

    d = TrainArgs()
    model = parser.add_argument_group("model and adapter")
    model.add_argument(
        "--model",
        default=d.model,
        help="HF id, local folder, .gguf, or smollm2-135m / gemma3-270m (default: %(default)s)",
    )
    model.add_argument("--method", choices=METHODS, default=d.method, help="adapter (default: %(default)s)")
    model.add_argument("--rank", type=int, default=d.rank, help="adapter rank r (default: %(default)s)")
    model.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help="scaling alpha, output x alpha/r; the same for every method (default: %(default)s)",
    )
    model.add_argument("--dropout", type=float, default=d.dropout, help="adapter input dropout (default: %(default)s)")
    model.add_argument(
        "--target-modules",
        default=",".join(DEFAULT_TARGET_MODULES),
        help="comma-separated linear layer names, or one regular expression over full module names (default: %(default)s)",
    )
    model.add_argument(
        "--curvature", type=float, default=None, help="hyplora: initial curvature K (default: HypLoraConfig's)"
    )
    model.add_argument(
        "--learn-curvature", action=argparse.BooleanOptionalAction, default=None, help="hyplora: train K"
    )
    model.add_argument(
        "--input-scaling",
        choices=("none", "unit", "rms"),
        default=None,
        help="hyplora: input scaling before the exponential map",
    )
    model.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="auto = bf16 on a bf16 GPU, else fp32 (default: %(default)s)",
    )
    model.add_argument(
        "--gradient-checkpointing", action="store_true", help="trade compute for activation memory (non-reentrant)"
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=d.data,
        help="training set name (math, commonsense, gsm8k-train, ...) or a JSON/JSONL file (default: %(default)s)",
    )
    data.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use at most this many training examples (after the validation carve-out)",
    )
    data.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help="held-out validation examples carved from the data (default: %(default)s)",
    )
    data.add_argument(
        "--cutoff-len", type=int, default=d.cutoff_len, help="maximum tokens per example (default: %(default)s)"
    )
    data.add_argument(
        "--template", choices=("alpaca", "chat"), default=d.template, help="prompt template (default: %(default)s)"
    )
    data.add_argument(
        "--train-on-inputs",
        action=argparse.BooleanOptionalAction,
        default=d.train_on_inputs,
        help="loss on the prompt too (LLM-Adapters' default: on)",
    )

    schedule = parser.add_argument_group("optimisation")
    length = schedule.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=d.epochs, help="training epochs (default: %(default)s)")
    length.add_argument(
        "--max-steps", type=int, default=d.max_steps, help="optimizer steps; overrides --epochs when > 0"
    )
    schedule.add_argument(
        "--lr", type=float, default=d.lr, help="peak learning rate, linear decay (default: %(default)s)"
    )
    schedule.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (default: %(default)s)")
    schedule.add_argument(
        "--micro-batch-size",
        type=int,
        default=d.micro_batch_size,
        help="per-process micro-batch (default: %(default)s)",
    )
    schedule.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default: %(default)s)"
    )
    schedule.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed for adapter init, dropout, and (without --data-seed) the data (default: %(default)s)",
    )
    schedule.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed for the mixture shuffle, the validation carve-out and the batch order, so that runs of different --seed see the same data (default: --seed)",
    )

    run = parser.add_argument_group("output and checkpoints")
    run.add_argument("--output-dir", default=d.output_dir, help="adapter, logs and checkpoints (default: %(default)s)")
    run.add_argument(
        "--resume", action="store_true", help="continue from the last complete checkpoint in --output-dir"
    )
    run.add_argument(
        "--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps (default: %(default)s)"
    )
    run.add_argument(
        "--eval-steps", type=int, default=None, help="validation loss every N steps (default: --save-steps)"
    )
    run.add_argument(
        "--logging-steps", type=int, default=d.logging_steps, help="log the loss every N steps (default: %(default)s)"
    )
    run.add_argument(
        "--save-total-limit",
        type=int,
        default=d.save_total_limit,
        help="keep the newest N checkpoints (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from hyplora.harness.training import TrainArgs, is_main_process, train

    names = {option.name for option in dataclasses.fields(TrainArgs) if option.init}
    adapter_dir = train(TrainArgs(**{name: value for name, value in vars(args).items() if name in names}))
    if is_main_process():
        print(f"adapter saved to {adapter_dir}")
    return 0
