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
  torchrun --nproc_per_node 2 -m hyplora.cli train --fsdp --precision bf16 ...   # FSDP2, CPU (gloo) or GPU
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyplora.cli.options import add_dataclass_options
    from hyplora.harness.training import TrainArgs

    add_dataclass_options(parser, TrainArgs)


def run(args: argparse.Namespace) -> int:
    from hyplora.cli.options import dataclass_values
    from hyplora.harness.training import TrainArgs, is_main_process, train

    adapter_dir = train(TrainArgs(**dataclass_values(TrainArgs, args)))
    if is_main_process():
        print(f"adapter saved to {adapter_dir}")
    return 0
