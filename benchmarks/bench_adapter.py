"""Speed and memory of every HypLoRA form's branch against PEFT LoRA, same shapes, same run.

Two measurements, each the median of repeats after warm-up, methods interleaved within each repeat:

1. branch: forward + backward of the adapter branch alone (``result + delta(x)``, grads for x and the adapter
   weights) at tokens x in -> out, rank r;
2. step: a whole training step (forward, backward, AdamW) of a SmolLM2-135M-shaped Llama with random weights,
   adapters on q,k,v,up,down.

Methods: ``lora`` (PEFT LoRA), the four forms of ``HypLoraConfig(form=...)`` (``seed``, ``llr``, ``llr-official``,
``stereographic``; the LoRA-shaped ones on LoRA's very A and B), and ``seed-literal`` (the seed form's concatenation
written out with `hyplora.adapter.lorentz`). Memory: bytes of tensors saved for backward (exact), and for the step also the peak RSS
during one step (after warm-up) of a fresh process per method (peak allocated CUDA memory on a GPU).

    python benchmarks/bench_adapter.py                      # the figures in benchmarks/README.md
    python benchmarks/bench_adapter.py --device cuda --dtype bfloat16 --dim 4096
    python benchmarks/bench_adapter.py --autocast bf16      # forward passes under torch.autocast (Trainer bf16=True)
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from hyplora.adapter.forms import RELEASE_DEFAULT_K
from hyplora.adapter.layer import (
    HypLoraLinear,
    HypLoraLinearVariant,
    hyplora_forward,
    hyplora_forward_literal,
    llr_forward,
    llr_official_forward,
    stereographic_forward,
)

FORMS = ("seed", "llr", "llr-official", "stereographic")
METHODS = ("lora", *FORMS, "seed-literal")


def autocast(args, device):
    """`torch.autocast` at `--autocast`'s dtype around a forward pass (disabled for `off`), as Trainer's bf16/fp16."""
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves while running ``fn``."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def branch_fns(args, device, dtype):
    g = torch.Generator().manual_seed(0)
    d_in, d_out, r, t = args.dim, args.dim, args.rank, args.tokens
    x = torch.randn(t, d_in, generator=g).mul(2.0).to(device, dtype).requires_grad_()
    result = torch.randn(t, d_out, generator=g).to(device, dtype).requires_grad_()
    a = (torch.randn(r, d_in + 1, generator=g) / d_in**0.5).to(device).requires_grad_()
    b = (torch.randn(d_out, r + 1, generator=g) * 0.01).to(device).requires_grad_()
    sqrt_k = torch.tensor(1.0, device=device)
    scale = torch.zeros(1, device=device, requires_grad=True)
    scaling = 2.0
    grad = torch.randn(t, d_out, generator=g).to(device, dtype)
    a_lora, b_lora = a[:, 1:].detach().clone().requires_grad_(), b[:, 1:].detach().clone().requires_grad_()

    def lora():  # PEFT's lora.Linear branch with the adapter in float32 (autocast_adapter_dtype)
        xx = x.to(a_lora.dtype)
        return result + (F.linear(F.linear(xx, a_lora), b_lora) * scaling).to(result.dtype)

    def lorentz(fn, a, b):  # seed and llr: rms input scaling, log-scale s
        return lambda: fn(result, x, a, b, sqrt_k=sqrt_k, scaling=scaling, input_scaling="rms", log_scale=scale)

    # the release's learned scalars, at their initial values
    k_official = torch.tensor(RELEASE_DEFAULT_K, device=device, requires_grad=True)
    s_official = torch.tensor([d_in**0.5], device=device, requires_grad=True)
    k_stereo = torch.tensor(1.0, device=device, requires_grad=True)
    fns = {
        "lora": lora,
        "seed": lorentz(hyplora_forward, a, b),
        "llr": lorentz(llr_forward, a_lora, b_lora),
        "llr-official": lambda: llr_official_forward(
            result, x, a_lora, b_lora, curvature=k_official, scaling=scaling, norm_scale=s_official
        ),
        "stereographic": lambda: stereographic_forward(result, x, a_lora, b_lora, curvature=k_stereo, scaling=scaling),
        "seed-literal": lorentz(hyplora_forward_literal, a, b),
    }
    fns["leaves"] = (x, result, a, b, scale, a_lora, b_lora, k_official, s_official, k_stereo)
    return fns, grad


class LiteralVariant(HypLoraLinearVariant):
    """The HypLoRA variant with the seed form's concatenation as its computation."""

    branches = {**HypLoraLinearVariant.branches, "seed": hyplora_forward_literal}


def step_model(method: str, args, device, dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyplora import HypLoraConfig

    torch.manual_seed(0)
    config = LlamaConfig(  # SmolLM2-135M
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(device, dtype)
    common = dict(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    )
    if method == "lora":
        cfg = LoraConfig(**common)
    elif method in ("seed", "seed-literal"):
        cfg = HypLoraConfig(input_scaling="rms", **common)
    else:  # each form with its default input scaling and curvature (llr: rms, as the seed here)
        cfg = HypLoraConfig(form=method, **common)
    model = get_peft_model(model, cfg)
    if method == "seed-literal":  # swap this model's variants only; the class keeps the fused forward
        for module in model.modules():
            if isinstance(module, HypLoraLinear):
                module.lora_variant["default"] = LiteralVariant()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)

    def step():
        with autocast(args, device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, ids, step


def time_interleaved(fns: dict, repeats: int, warmup: int, device) -> dict:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def run_branch(args, device, dtype):
    fns, grad = branch_fns(args, device, dtype)
    leaves = [t for t in fns.pop("leaves") if t.requires_grad]

    def fwd_bwd(fn):
        for t in leaves:  # a fresh gradient each time, as inside a network (no accumulation pass)
            t.grad = None
        with autocast(args, device):
            out = fn()
        out.backward(grad.to(out.dtype))

    timed = {name: (lambda fn=fn: fwd_bwd(fn)) for name, fn in fns.items()}
    medians = time_interleaved(timed, args.repeats, args.warmup, device)
    with autocast(args, device):
        memory = {name: saved_bytes(fn) for name, fn in fns.items()}
    return medians, memory


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_step_child(args):
    """One method's whole training step in this (fresh) process; prints a JSON line."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, ids, step = step_model(args.child, args, device, dtype)
    step()
    with autocast(args, device):
        activations = saved_bytes(lambda: model(input_ids=ids, labels=ids).loss)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:  # Linux: writing 5 resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
    print(json.dumps({"method": args.child, "activations": activations, "peak": peak}))


def run_step(args, device, dtype):
    fns = {m: step_model(m, args, device, dtype)[2] for m in METHODS}
    medians = time_interleaved(fns, args.step_repeats, 1, device)
    memory = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        memory[method] = json.loads(out)
    return medians, memory


def table(title, medians, memory_cols):
    print(f"\n{title}")
    header = "| method | median ms | x LoRA | " + " | ".join(f"{c} | x LoRA" for c in memory_cols) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for m in METHODS:
        cells = [f"{medians[m] * 1e3:.1f}", f"{medians[m] / medians['lora']:.2f}"]
        for values in memory_cols.values():
            cells += [f"{values[m] / 2**20:.1f} MiB", f"{values[m] / values['lora']:.3f}"]
        print(f"| {m} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--autocast", default="off", choices=["off", "bf16", "fp16"], help="autocast the forwards")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--step-repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return run_step_child(args)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; dtype {args.dtype}; autocast {args.autocast}; torch {torch.__version__}")
    medians, memory = run_branch(args, device, dtype)
    table(
        f"branch fwd+bwd: tokens={args.tokens}, in=out={args.dim}, r={args.rank} (median of {args.repeats})",
        medians,
        {"saved for backward": memory},
    )
    if not args.skip_step:
        medians, memory = run_step(args, device, dtype)
        table(
            f"training step: SmolLM2-135M shape, {args.batch}x{args.seq} tokens, r={args.rank} on q,k,v,up,down "
            f"(median of {args.step_repeats})",
            medians,
            {
                "activations": {m: v["activations"] for m, v in memory.items()},
                "peak": {m: v["peak"] for m, v in memory.items()},
            },
        )


if __name__ == "__main__":
    main()
