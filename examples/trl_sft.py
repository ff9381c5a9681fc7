"""Supervised fine-tuning with TRL's `SFTTrainer` and a HypLoRA adapter (`peft_config=HypLoraConfig(...)`).

The data is hyplora's shipped `math` training mixture (GSM8K train, MAWPS train, AQuA dev, test questions
removed), each record rendered with LLM-Adapters' training prompt as one `text` field, so the loss covers
the prompt and the answer (LLM-Adapters' `train_on_inputs=True`); TRL appends EOS. The trainer keeps TRL's
own defaults (precision included: `SFTConfig` turns on bf16 mixed precision) unless a flag says otherwise.

    pip install 'hyplora[trl]'
    python examples/trl_sft.py --output-dir runs/trl-sft                       # SmolLM2-135M-Instruct, 200 examples
    python examples/trl_sft.py --model HuggingFaceTB/SmolLM2-360M-Instruct --limit 2000 --max-steps 500

The adapter lands in `--output-dir` (adapter_config.json + adapter_model.safetensors); evaluate it with
`hyplora eval --adapter DIR ...` or `hyplora lm-eval --model hyplora-hf --model_args pretrained=...,peft=DIR ...`.
"""

import argparse

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hyplora import HypLoraConfig
from hyplora.harness.base_models import load_model
from hyplora.harness.data import load_train_set
from hyplora.harness.prompts import train_prompt
from hyplora.harness.training import DEFAULT_TARGET_MODULES


def sft_dataset(name: str, limit: int) -> Dataset:
    """TRL's language-modelling format: one `text` per record, `train_prompt(instruction, input, output)`."""
    records = load_train_set(name, limit=limit).records
    return Dataset.from_list(
        [{"text": train_prompt(r["instruction"], r.get("input", ""), r["output"])} for r in records]
    )


def main(argv: list[str] | None = None):
    """Parse the flags, train, save the adapter; returns the trainer."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="anything hyplora's load_model takes (HF id, folder)")
    parser.add_argument("--data", default="math", help="hyplora training set or mixture (default: math)")
    parser.add_argument("--limit", type=int, default=200, help="training examples (default: 200)")
    parser.add_argument("--max-steps", type=int, default=50, help="optimizer steps (default: 50)")
    parser.add_argument("--batch-size", type=int, default=4, help="per-device batch (default: 4)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example (default: 256)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    parser.add_argument("--rank", type=int, default=32, help="adapter rank r (default: 32)")
    parser.add_argument("--output-dir", default="runs/trl-sft", help="adapter and checkpoints (default: runs/trl-sft)")
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            max_length=args.max_length,
            learning_rate=args.lr,
            logging_steps=max(1, args.max_steps // 10),
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),  # transformers refuses TRL's default bf16 on a CPU without it
        ),
        train_dataset=sft_dataset(args.data, args.limit),
        processing_class=tokenizer,
        peft_config=HypLoraConfig(
            r=args.rank,
            lora_alpha=2 * args.rank,
            lora_dropout=0.05,
            target_modules=list(DEFAULT_TARGET_MODULES),
            task_type="CAUSAL_LM",
        ),
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    print(f"adapter saved to {args.output_dir}")
    return trainer


if __name__ == "__main__":
    main()
