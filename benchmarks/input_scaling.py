"""Which `input_scaling` should be the default? Held-out loss after a short fine-tune of a real model.

SmolLM2-135M-Instruct, the `math` training mixture (test overlaps removed), a validation split carved from
it, the same seed, rank, alpha, learning rate and batches for every arm; arms: PEFT LoRA and HypLoRA with
``input_scaling`` none / unit / rms. Also reports the per-token tangent norm |u| each scaling produces on
the real hidden states (the exp map saturates at sqrt(K) * 11.09). Writes a JSON next to the table.

    python benchmarks/input_scaling.py --steps 40            # the figures in benchmarks/README.md
"""

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tqdm import tqdm

from hyplora import HypLoraConfig
from hyplora.adapter.layer import HypLoraLinear, tangent_scale
from hyplora.harness.base_models import load_model
from hyplora.harness.data import load_train_set, split_validation
from hyplora.harness.prompts import tokenize_example

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
ARMS = ("lora", "none", "unit", "rms")


def batches(examples, size, pad_id):
    for start in range(0, len(examples) - size + 1, size):
        chunk = examples[start : start + size]
        width = max(len(e["input_ids"]) for e in chunk)
        pad = lambda seq, value, width=width: seq + [value] * (width - len(seq))  # noqa: E731
        yield {
            "input_ids": torch.tensor([pad(e["input_ids"], pad_id) for e in chunk]),
            "attention_mask": torch.tensor([pad(e["attention_mask"], 0) for e in chunk]),
            "labels": torch.tensor([pad(e["labels"], -100) for e in chunk]),
        }


@torch.no_grad()
def mean_loss(model, data):
    model.eval()
    losses = [model(**b).loss.item() for b in data]
    model.train()
    return sum(losses) / len(losses)


def tangent_norms(model, batch) -> dict:
    """Median |u| per scaling over the real inputs of every targeted layer (fresh adapter, s = 0)."""
    norms = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: norms.append(args[0].detach().flatten(0, -2).norm(dim=-1)))
        for m in model.modules()
        if isinstance(m, HypLoraLinear)
    ]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    in_dims = [m.in_features for m in model.modules() if isinstance(m, HypLoraLinear)]
    out = {}
    for scaling in ("none", "unit", "rms"):
        u = torch.cat([tangent_scale(n, scaling, torch.zeros(1), d) * n for n, d in zip(norms, in_dims)])
        out[scaling] = {
            "median": u.median().item(),
            "p99": u.quantile(0.99).item(),
            "saturated": (u > math.asinh(2**15)).float().mean().item(),
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cutoff-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/results/input_scaling.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, tokenizer = load_model(args.model)
    records = load_train_set("math", limit=args.steps * args.batch_size + args.val_size).records
    train, val = split_validation(records, args.val_size, seed=0)
    encode = lambda rs: [tokenize_example(tokenizer, r, args.cutoff_len, False) for r in rs]  # noqa: E731
    train_batches = list(batches(encode(train), args.batch_size, tokenizer.pad_token_id))[: args.steps]
    val_batches = list(batches(encode(val), args.batch_size, tokenizer.pad_token_id))
    results = {"settings": vars(args), "arms": {}}
    for arm in ARMS:
        common = dict(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS)
        cfg = LoraConfig(**common) if arm == "lora" else HypLoraConfig(input_scaling=arm, **common)
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(base), cfg)
        if arm == "none":
            results["tangent_norm"] = tangent_norms(model, val_batches[0])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        model.train()
        curve, start = [], time.perf_counter()
        for batch in tqdm(train_batches, desc=arm):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            curve.append(loss.item())
        results["arms"][arm] = {
            "val_loss_before": mean_loss(get_peft_model(copy.deepcopy(base), cfg), val_batches)
            if arm == "lora"
            else None,
            "val_loss": mean_loss(model, val_batches),
            "train_curve": curve,
            "seconds": time.perf_counter() - start,
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(
        f"\n{args.model}, {args.steps} steps x {args.batch_size}, r={args.rank}, lr={args.lr}; "
        f"validation loss before: {results['arms']['lora']['val_loss_before']:.4f}"
    )
    print("| arm | val loss | last-10 train loss |\n|---|---|---|")
    for arm, r in results["arms"].items():
        print(f"| {arm} | {r['val_loss']:.4f} | {sum(r['train_curve'][-10:]) / 10:.4f} |")
    print("\n| scaling | median |u| | p99 |u| | saturated |\n|---|---|---|---|")
    for scaling, r in results["tangent_norm"].items():
        print(f"| {scaling} | {r['median']:.3g} | {r['p99']:.3g} | {r['saturated']:.1%} |")


if __name__ == "__main__":
    main()
