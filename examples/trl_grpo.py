"""GRPO with TRL's `GRPOTrainer` and a HypLoRA adapter on GSM8K-style prompts, rewarded for a correct answer.

Prompts are GSM8K training questions (hyplora's shipped `gsm8k-train`) in LLM-Adapters' evaluation prompt; the
reward is 1 when `hyplora eval`'s robust rules read the gold number out of a completion (the number after the
last "answer is" cue, else the last number; |prediction - gold| <= 1e-3), else 0. Completions come from HF
`generate` (TRL's default, `use_vllm=False`), and every other setting is TRL's default (bf16 mixed precision
included) unless a flag says otherwise.

vLLM: TRL's vLLM weight sync merges the adapter into the base weights before sending them
(`VLLMGeneration._iter_named_params` calls `model.merge_adapter()`). A HypLoRA adapter is not a matrix and
cannot be merged, so `use_vllm=True` stops at the first sync with hyplora's `NotImplementedError` that says so;
it never generates from a policy without the adapter.

    pip install 'hyplora[trl]'
    python examples/trl_grpo.py --output-dir runs/trl-grpo                 # SmolLM2-135M-Instruct, 20 steps
    python examples/trl_grpo.py --adapter runs/trl-sft --max-steps 200     # start from an SFT adapter
"""

import argparse

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from hyplora import HypLoraConfig, load_adapter
from hyplora.harness.base_models import load_model
from hyplora.harness.data import load_train_set
from hyplora.harness.extraction import extract_answer, is_correct, robust_response
from hyplora.harness.prompts import eval_prompt
from hyplora.harness.training import DEFAULT_TARGET_MODULES


def grpo_dataset(name: str, limit: int) -> Dataset:
    """TRL's prompt-only format: `prompt` (the evaluation prompt) and `answer` (the gold number), one per question."""
    records = load_train_set(name, limit=limit).records
    return Dataset.from_list([{"prompt": eval_prompt(r["instruction"]), "answer": str(r["answer"])} for r in records])


def correctness_reward(completions: list[str], answer: list[str], **_columns) -> list[float]:
    """1.0 for a completion whose robust-extracted number equals the gold `answer` (within 1e-3), else 0.0."""
    return [
        float(is_correct(extract_answer(robust_response(completion), "gsm8k", mode="robust"), gold, "gsm8k"))
        for completion, gold in zip(completions, answer)
    ]


def main(argv: list[str] | None = None):
    """Parse the flags, train, save the adapter; returns the trainer."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="anything hyplora's load_model takes (HF id, folder)")
    parser.add_argument("--adapter", help="continue training this saved HypLoRA adapter instead of a fresh one")
    parser.add_argument("--data", default="gsm8k-train", help="hyplora math training set (default: gsm8k-train)")
    parser.add_argument("--limit", type=int, default=200, help="prompts (default: 200)")
    parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps (default: 20)")
    parser.add_argument("--num-generations", type=int, default=4, help="completions per prompt (default: 4)")
    parser.add_argument("--batch-size", type=int, default=4, help="completions per device batch (default: 4)")
    parser.add_argument("--max-completion-length", type=int, default=128, help="new tokens (default: 128)")
    parser.add_argument(
        "--lr", type=float, default=1e-5, help="learning rate (default: 1e-5, ten times TRL's full-model default)"
    )
    parser.add_argument("--rank", type=int, default=32, help="adapter rank r of a fresh adapter (default: 32)")
    parser.add_argument(
        "--output-dir", default="runs/trl-grpo", help="adapter and checkpoints (default: runs/trl-grpo)"
    )
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model)
    tokenizer.padding_side = "left"  # batched generation
    if args.adapter:
        model, peft_config = load_adapter(model, args.adapter, is_trainable=True), None
    else:
        peft_config = HypLoraConfig(
            r=args.rank,
            lora_alpha=2 * args.rank,
            target_modules=list(DEFAULT_TARGET_MODULES),
            task_type="CAUSAL_LM",
        )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correctness_reward,
        args=GRPOConfig(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            learning_rate=args.lr,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),  # transformers refuses TRL's default bf16 on a CPU without it
        ),
        train_dataset=grpo_dataset(args.data, args.limit),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    print(f"adapter saved to {args.output_dir}")
    return trainer


if __name__ == "__main__":
    main()
