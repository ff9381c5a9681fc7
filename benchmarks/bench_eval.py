"""Speed of `hyplora eval` against the reference scripts' evaluation loop, same model, same SVAMP slice, same run.

Methods, all greedy with 256 new tokens on SmolLM2-135M-Instruct (`load_model("smollm2-135m")`), fp32:

- ``hyplora``: `hyplora.harness.evaluation.evaluate(..., mode="paper", num_beams=1)`, the whole evaluation
  (tokenising, length-sorted batches, preallocated KV cache, finished rows dropped, JSONL writes).
- ``reference``: LLM-Adapters / HypLLM `evaluate.py` re-implemented as written: one item at a time,
  `generate(use_cache=False)` (every step re-runs the whole sequence), `output_scores=True`, the decoded
  sequence split on "### Response:" (only `num_beams` is 1 instead of 4). It costs minutes per item, so
  it runs on a few items picked at evenly spaced quantiles of the output lengths, and its time for the
  whole slice is estimated: measured seconds per token-forward x the token-forwards the slice needs
  (an item with prompt P and T new tokens runs T forwards over P, P+1, ..., P+T-1 tokens).
- ``hf-batch16``: a plain batched loop: `model.generate` with the KV cache on left-padded batches of 16
  in file order, on the whole slice.

``hyplora`` and ``hf-batch16`` alternate `--repeats` times and the table shows medians, with the load
average at the start of each run: on a shared machine the load drifts during a run of minutes.

Agreement: greedy predictions of ``hyplora`` against ``reference`` on its items and against one-item
`generate` with the KV cache (the reference's computation, fast enough for more items).
Rates: items/s, generated tokens/s, and the matmul-bound token rate = measured peak fp32 matmul
FLOP/s / (2 x parameters), all measured in this run. Check `uptime` first: the machine is shared.

--profile-step B: instead, the time of one greedy decoding step at batch B as the evaluator runs it (packed linears,
the CPU kernels) split by module (attention core,
q/k/v/o projections, MLP, norms, LM head, the adapter branch with --adapter lora|hyplora, rank 32 on the
training defaults' targets, random weights, unmerged), with torch.profiler's top operators.

--compare branch|linear|all: HypLoRA's autograd branch against its fused C++ one (`hyplora.adapter.layer.fused_branch`),
the linear layers through MKL (`F.linear`) against packed oneDNN (`hyplora.harness.packed_linear`), or PyTorch's stock
CPU path (those two and SDPA) against all of hyplora's (with the attention kernel): a run with each
(tokens compared), then runs alternating the setting step by step (robust to the load drifting). `--branch autograd`
and `--linear mkl` run every other mode with the old setting.

    python benchmarks/bench_eval.py --threads 1          # the figures in benchmarks/README-eval.md
    python benchmarks/bench_eval.py --threads 1 --compare linear --repeats 2
    python benchmarks/bench_eval.py --threads 1 --profile-step 64 --adapter hyplora
    python benchmarks/bench_eval.py --threads 1 --profile-beam 8     # paper mode's 4-beam search, profiled
    python benchmarks/bench_eval.py --items 128 --batch-size 64 32 --reference-items 2 --check-items 16
"""

import argparse
import functools
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from hyplora import kernels
from hyplora.adapter import layer as hyplora_layer
from hyplora.harness import decode_attention, packed_linear
from hyplora.harness.base_models import load_model
from hyplora.harness.data import load_test_set
from hyplora.harness.evaluation import EvalOptions, evaluate, read_items
from hyplora.harness.extraction import extract_answer
from hyplora.harness.generation import (
    _forward_kwargs,
    _left_padded,
    base_model,
    eos_token_ids,
    generate_beam,
    generate_greedy,
    new_cache,
    pad_token_id,
)
from hyplora.harness.prompts import RESPONSE_SPLIT, eval_prompt


def peak_matmul_gflops(size: int = 2048, repeats: int = 7, device: str = "cpu") -> float:
    """Best GFLOP/s of an fp32 ``size x size`` matmul (2 size^3 FLOPs) at the current thread count (on `device`):
    ``torch.matmul``'s and, on a CPU with oneDNN, the packed oneDNN product's that the evaluator's generation uses
    (`hyplora.harness.packed_linear`), whichever is higher, so that the bound is the machine's, not one library's.

    The best of `repeats`, not the median: a peak is what the machine can do, and on a shared VM the median of
    seven multiplications moved between 64 and 91 GFLOP/s from one minute to the next."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

    def matmul():
        a @ b
        synchronize(device)

    products = [matmul]
    if torch.device(device).type == "cpu" and packed_linear.available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, size)
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    peaks = [2 * size**3 / seconds_of(product, repeats, statistic=min) / 1e9 for product in products]
    print(
        "peak fp32 GFLOP/s: "
        + ", ".join(f"{name} {peak:.1f}" for name, peak in zip(("torch.matmul", "oneDNN packed"), peaks))
    )
    return max(peaks)


def synchronize(device) -> None:
    """Wait for queued GPU work, so that a timer reads the work's time (nothing to wait for on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def token_forwards(prompt_length: int, new_tokens: int) -> int:
    """Tokens a no-cache loop pushes through the model: one forward over P + t tokens for t = 0 .. T-1."""
    return new_tokens * prompt_length + new_tokens * (new_tokens - 1) // 2


def reference_loop(model, tokenizer, records, max_new_tokens: int) -> tuple[list[dict], float]:
    """LLM-Adapters' `evaluate()` per item, greedy: batch 1, no KV cache, the response split off the decoded text."""
    results, start = [], time.perf_counter()
    for record in records:
        inputs = tokenizer(eval_prompt(record["instruction"]), return_tensors="pt")
        config = GenerationConfig(temperature=0.1, top_p=0.75, top_k=40, num_beams=1)  # sampling is off: ignored
        with torch.no_grad():
            output = model.generate(
                input_ids=inputs["input_ids"],
                generation_config=config,
                return_dict_in_generate=True,
                output_scores=True,
                max_new_tokens=max_new_tokens,
                use_cache=False,
            )
        sequence = output.sequences[0]
        response = tokenizer.decode(sequence).split(RESPONSE_SPLIT)[1].strip()
        results.append(
            {
                "tokens": sequence[inputs["input_ids"].shape[1] :].tolist(),
                "response": response,
                "prompt_length": inputs["input_ids"].shape[1],
            }
        )
    return results, time.perf_counter() - start


def plain_batched_loop(
    model, tokenizer, records, batch_size: int, max_new_tokens: int
) -> tuple[list[list[int]], float]:
    """`generate` with the KV cache on left-padded batches in file order."""
    eos = tokenizer.eos_token_id
    outputs, start = [], time.perf_counter()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for first in range(0, len(records), batch_size):
            prompts = [eval_prompt(r["instruction"]) for r in records[first : first + batch_size]]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True)
            with torch.inference_mode():
                sequences = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            for row in sequences[:, inputs["input_ids"].shape[1] :].tolist():
                outputs.append(row[: row.index(eos) + 1] if eos in row else row)
    finally:
        tokenizer.padding_side = padding_side
    return outputs, time.perf_counter() - start


def one_at_a_time_cached(model, tokenizer, records, max_new_tokens: int) -> list[list[int]]:
    """Greedy batch-1 `generate` with the KV cache: the reference computation, fast enough for more items."""
    outputs = []
    for record in records:
        ids = tokenizer(eval_prompt(record["instruction"]), return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            row = model.generate(
                input_ids=ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )[0]
        outputs.append(row[ids.shape[1] :].tolist())
    return outputs


def hyplora_evaluation(model, tokenizer, items: int, batch_size: int, max_new_tokens: int) -> tuple[list[dict], float]:
    """`hyplora.harness.evaluation.evaluate` in paper mode with greedy decoding, into a fresh folder (nothing reused)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        options = EvalOptions(
            ["svamp"],
            folder,
            limit=items,
            batch_size=batch_size,
            mode="paper",
            num_beams=1,
            max_new_tokens=max_new_tokens,
            progress=False,
        )
        evaluate(model, tokenizer, options)
        seconds = time.perf_counter() - start
        return read_items(Path(folder) / "svamp.jsonl"), seconds


def warm_up(model, tokenizer, records) -> None:
    """A few tokens through each code path first: the first calls pay for allocations and kernel selection (and the
    first use of the CPU kernels compiles them)."""
    kernels.extension()
    reference_loop(model, tokenizer, records[:1], 4)
    plain_batched_loop(model, tokenizer, records[:2], 2, 4)
    prompts = [tokenizer(eval_prompt(r["instruction"]))["input_ids"] for r in records[:2]]
    generate_greedy(model, prompts, max_new_tokens=4, eos_ids={tokenizer.eos_token_id}, pad_id=tokenizer.pad_token_id)


def quantile_items(lengths: list[int], count: int) -> list[int]:
    """Indices of `count` items at evenly spaced quantiles of `lengths` (shortest to longest)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    picks = [order[round(q * (len(order) - 1) / max(1, count - 1))] for q in range(count)]
    return sorted(set(picks))


def paper_response(tokenizer, record, tokens) -> str:
    prompt_ids = tokenizer(eval_prompt(record["instruction"]))["input_ids"]
    return tokenizer.decode(prompt_ids + tokens).split(RESPONSE_SPLIT)[1].strip()


def adapted(model, adapter: str):
    """`model` with a rank-32 LoRA or HypLoRA adapter (random weights drawn from seed 0, unmerged) on the training
    defaults' targets."""
    if adapter == "none":
        return model
    from peft import LoraConfig, get_peft_model

    from hyplora import HypLoraConfig
    from hyplora.harness.training import DEFAULT_TARGET_MODULES

    config_class = HypLoraConfig if adapter == "hyplora" else LoraConfig
    config = config_class(r=32, lora_alpha=64, target_modules=list(DEFAULT_TARGET_MODULES), init_lora_weights=False)
    torch.manual_seed(0)  # the same random adapter in every run, so runs write the same tokens
    return get_peft_model(model, config).eval()


@torch.inference_mode()
def profile_step(model, tokenizer, records, batch: int, context_steps: int = 100, steps: int = 20) -> None:
    """Median time of one greedy decoding step at `batch` rows after `context_steps` steps, split by module."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    cache_kwarg, _ = _forward_kwargs(model)
    prompts = [tokenizer(eval_prompt(r["instruction"]))["input_ids"] for r in records[:batch]]
    ids, mask = _left_padded(prompts, tokenizer.pad_token_id, "cpu")
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = new_cache(model, ids.shape[1] + context_steps + 2 * steps + 2)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_kwarg: cache}).logits
    state = {"mask": mask, "positions": positions[:, -1:], "next": logits[:, -1].argmax(-1)}

    def step():
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((len(prompts), 1))], 1)
        state["positions"] = state["positions"] + 1
        out = model(
            input_ids=state["next"][:, None],
            attention_mask=state["mask"],
            position_ids=state["positions"],
            **{cache_kwarg: cache},
        )
        state["next"] = out.logits[:, -1].max(-1).indices

    for _ in range(context_steps):
        step()
    spent, started = defaultdict(float), {}
    groups = {"q_proj": "q/k/v/o projections", "k_proj": "q/k/v/o projections", "v_proj": "q/k/v/o projections"}
    groups |= {"o_proj": "q/k/v/o projections", "self_attn": "attention incl. projections", "mlp": "MLP"}
    groups |= {"input_layernorm": "norms", "post_attention_layernorm": "norms", "norm": "norms", "lm_head": "LM head"}
    handles = []

    def timed(module, key: str) -> None:
        """Add the module's forward time to `spent[key]`."""
        handles.append(
            module.register_forward_pre_hook(lambda m, a: started.__setitem__((key, id(m)), time.perf_counter()))
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o: spent.__setitem__(key, spent[key] + time.perf_counter() - started.pop((key, id(m))))
            )
        )

    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if hasattr(module, "base_layer"):  # an adapted linear (base + branch), whatever group it is in
            timed(module, "adapted")
        key = "base of adapted" if leaf == "base_layer" else groups.get(leaf)
        if key is not None:
            timed(module, key)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    for handle in handles:
        handle.remove()
    total = sum(times)
    spent["attention core"] = spent.pop("attention incl. projections") - spent["q/k/v/o projections"]
    branch = spent.pop("adapted", 0.0) - spent.pop("base of adapted", 0.0)
    spent["rest (embedding, rotary, mask, argmax, Python)"] = total - sum(spent.values())
    if branch:
        spent["adapter branch (inside the projections and MLP)"] = branch
    context = state["mask"].shape[1]
    print(
        f"one greedy step, batch {len(prompts)}, context {context}, {torch.get_num_threads()} thread(s): "
        f"median {1000 * statistics.median(times):.1f} ms ({len(prompts) / statistics.median(times):.0f} tok/s); "
        f"load {os.getloadavg()[0]:.1f}"
    )
    for key, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {key:48s} {1000 * seconds / steps:8.1f} ms  {100 * seconds / total:5.1f}%")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


@torch.inference_mode()
def profile_beam(model, tokenizer, records, num_beams: int = 4, new_tokens: int = 48) -> None:
    """Paper mode's beam search (`generate`) on `records` under torch.profiler, beside greedy on as many rows."""
    from torch.profiler import ProfilerActivity, profile

    prompts = [tokenizer(eval_prompt(r["instruction"]))["input_ids"] for r in records]
    eos = eos_token_ids(model, tokenizer)
    pad = pad_token_id(tokenizer, eos)
    generate_beam(model, prompts[:1], max_new_tokens=2, num_beams=num_beams, eos_ids=eos, pad_id=pad)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_beam(model, prompts, max_new_tokens=new_tokens, num_beams=num_beams, eos_ids=eos, pad_id=pad)
    beam_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = [p for p in prompts for _ in range(num_beams)]
    generate_greedy(model, rows, max_new_tokens=new_tokens, eos_ids=set(), pad_id=pad)
    print(
        f"beam search, {len(prompts)} prompts x {num_beams} beams, {new_tokens} new tokens: {beam_s:.1f} s "
        f"(profiled); greedy on the same {len(rows)} rows without EOS: {time.perf_counter() - start:.1f} s; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


@torch.inference_mode()
def trace_phases(model, tokenizer, records, batch_size: int, max_new_tokens: int, bound: float) -> None:
    """Where one greedy `generate_batched` over `records` spends its time: every model forward timed, split into
    prefill and decoding steps, with the rows and the context of each step and the rate against the matmul bound."""
    import hyplora.harness.generation as generation

    prompts = [tokenizer(eval_prompt(r["instruction"]))["input_ids"] for r in records]
    calls, forward = [], model.forward

    def timed(*args, **kwargs):
        synchronize(kwargs["input_ids"].device)
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        synchronize(kwargs["input_ids"].device)
        rows, width = kwargs["input_ids"].shape
        calls.append((rows, width, kwargs["attention_mask"].shape[1], time.perf_counter() - start))
        return out

    model.forward = timed
    try:
        outputs, total = engine_run(generation, model, tokenizer, records, batch_size, max_new_tokens)
    finally:
        del model.forward
    generated = sum(map(len, outputs))
    prefill = [c for c in calls if c[1] > 1]
    steps = [c for c in calls if c[1] == 1]
    decode_s = sum(c[3] for c in steps)
    decoded = sum(c[0] for c in steps)
    print(
        f"{len(records)} items, batch {batch_size}, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.1f}: "
        f"{total:.1f} s, {generated} generated tokens = {generated / total:.1f} tok/s = {100 * generated / total / bound:.1f}% "
        f"of the matmul bound ({bound:.0f} tok/s)"
    )
    print(
        f"  prefill: {sum(c[3] for c in prefill):.1f} s in {len(prefill)} call(s), {sum(map(len, prompts))} prompt "
        f"tokens padded to {sum(c[0] * c[1] for c in prefill)}"
    )
    print(
        f"  decoding: {decode_s:.1f} s in {len(steps)} steps, {statistics.mean(c[0] for c in steps):.1f} rows and "
        f"context {statistics.mean(c[2] for c in steps):.0f} per step on average: {decoded / decode_s:.1f} tok/s = "
        f"{100 * decoded / decode_s / bound:.1f}% of the bound"
    )
    print(f"  outside the forwards (next token, bookkeeping, row dropping): {total - sum(c[3] for c in calls):.1f} s")
    print("  | decoding steps by context | rows | context | ms per step (median) | tok/s | % of bound |")
    print("  |---|---:|---:|---:|---:|---:|")
    first = min(c[2] for c in steps)
    for low in range(0, max_new_tokens, 64):
        part = [c for c in steps if low <= c[2] - first < low + 64]
        if part:
            rate = sum(c[0] for c in part) / sum(c[3] for c in part)
            print(
                f"  | {low}-{low + 63} | {statistics.mean(c[0] for c in part):.0f} | "
                f"{statistics.mean(c[2] for c in part):.0f} | {1000 * statistics.median(c[3] for c in part):.0f} | "
                f"{rate:.0f} | {100 * rate / bound:.1f} |"
            )


def seconds_of(function, repeats: int = 15, statistic=statistics.median) -> float:
    """`statistic` (the median) of the seconds of `repeats` calls of `function()`, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistic(times)


@torch.inference_mode()
def attention_kernels(
    batch: int, contexts=(120, 200, 320, 450), kv_heads: int = 3, groups: int = 3, layers: int = 30
) -> None:
    """One decoding step's attention over `layers` layers' caches (SmolLM2's GQA shapes, keys and values as views of
    a larger cache buffer, as the engine holds them; 30 layers' caches exceed the CPU's caches, so each layer's keys
    and values come from memory as in the model, where one layer's alone could stay in L3): SDPA, matmul + softmax,
    a `torch.compile`d fused form and hyplora's C++ kernel (`hyplora.harness.decode_attention`), in GB/s of keys and
    values read, beside a plain streaming read of the same bytes."""

    def fused(q, k, v, mask, scale: float):
        scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1) * scale + mask
        return (scores.softmax(-1).unsqueeze(-1) * v.unsqueeze(2)).sum(-2)

    def matmuls(q, k, v, mask, scale: float):
        return torch.matmul((torch.matmul(q, k.transpose(-1, -2)) * scale + mask).softmax(-1), v)

    def sdpa(q, k, v, mask, scale: float):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def streaming_read(q, k, v, mask, scale: float):
        return k.sum() + v.sum()

    def hyplora_kernel(q, k, v, mask, scale: float):
        step = decode_attention.decode_attention(q.reshape(batch, -1, 1, q.shape[-1]), k, v, mask[:, 0, 0] == 0, scale)
        return step.reshape(q.shape)

    def every_layer(f, q, caches, mask):
        for k, v in caches:
            f(q, k, v, mask, 0.125)

    compiled = torch.compile(fused, dynamic=True)
    kernels = (streaming_read, sdpa, matmuls, compiled, hyplora_kernel)
    print(
        f"decoding attention over {layers} layers' caches, batch {batch}, {torch.get_num_threads()} thread(s), "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        "| context | K+V MB | streaming read GB/s | SDPA GB/s | matmul + softmax GB/s | compiled GB/s | hyplora kernel "
        "GB/s | max diff to SDPA: compiled, kernel |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for context in contexts:
        caches = [torch.randn(2, batch, kv_heads, context + 64, 64)[..., :context, :] for _ in range(layers)]
        q = torch.randn(batch, kv_heads, groups, 64)
        mask = torch.zeros(batch, 1, 1, context)
        mask[: batch // 8, ..., : context // 4] = float("-inf")  # left padding of some rows
        bytes_read = sum(2 * cache[0].numel() * 4 for cache in caches)
        rates = [
            bytes_read / seconds_of(functools.partial(every_layer, f, q, caches, mask), repeats=7) / 1e9
            for f in kernels
        ]
        arguments = (q, *caches[0], mask, 0.125)
        differences = [(f(*arguments) - sdpa(*arguments)).abs().max().item() for f in (compiled, hyplora_kernel)]
        print(
            f"| {context} | {bytes_read / 1e6:.1f} | "
            + " | ".join(f"{r:.1f}" for r in rates)
            + f" | {differences[0]:.1e}, {differences[1]:.1e} |"
        )


def engine_at(revision: str):
    """`hyplora.harness.generation` as committed at git `revision`, imported under another name (the old engine)."""
    import importlib.util
    import subprocess

    source = subprocess.run(
        ["git", "show", f"{revision}:src/hyplora/harness/generation.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "generation_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("generation_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_run(engine, model, tokenizer, records, batch_size: int, max_new_tokens: int):
    """Greedy `generate_batched` of `engine` on the slice's prompts: (outputs, seconds)."""
    prompts = [tokenizer(eval_prompt(r["instruction"]))["input_ids"] for r in records]
    eos = eos_token_ids(model, tokenizer)
    start = time.perf_counter()
    outputs = engine.generate_batched(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        batch_size=batch_size,
        eos_ids=eos,
        pad_id=pad_token_id(tokenizer, eos),
    )
    return outputs, time.perf_counter() - start


FUSED_APPLIES = hyplora_layer._fused_applies
PACKED_FORWARD = packed_linear._packed_forward
LINEAR = ["onednn"]


def use_branch(branch: str) -> None:
    """HypLoRA's branch at inference from now on: ``fused`` (the C++ kernel inside the evaluator's generation, the
    default) or ``autograd`` (the PyTorch path, as before it)."""
    hyplora_layer._fused_applies = FUSED_APPLIES if branch == "fused" else (lambda *tensors: False)


def _switchable_forward(module):
    packed, own = PACKED_FORWARD(module), module.forward
    return lambda x: packed(x) if LINEAR[0] == "onednn" else own(x)


def use_linear(kind: str) -> None:
    """The evaluator's linear layers from now on, call by call: ``onednn`` (packed, the default) or ``mkl``
    (``F.linear``, as before `hyplora.harness.packed_linear`)."""
    LINEAR[0] = kind
    packed_linear._packed_forward = _switchable_forward


KERNEL_APPLIES = decode_attention._kernel_applies


def use_all(kind: str) -> None:
    """Every CPU inference change at once: ``hyplora`` (packed oneDNN linears, the attention kernel, the fused
    branch) or ``stock`` (PyTorch's own: MKL, SDPA, the autograd branch)."""
    on = kind == "hyplora"
    use_branch("fused" if on else "autograd")
    use_linear("onednn" if on else "mkl")
    decode_attention._kernel_applies = KERNEL_APPLIES if on else (lambda *args: False)


COMPARISONS = {
    "branch": (("autograd", "fused"), use_branch),
    "linear": (("mkl", "onednn"), use_linear),
    "all": (("stock", "hyplora"), use_all),
}


def compare_alternating(
    model, tokenizer, records, batch_size: int, budget: int, bound: float, repeats: int, what: str
):
    """Two settings of `what` (``branch``: HypLoRA's autograd branch against its fused one; ``linear``: MKL against
    packed oneDNN), old first: a greedy run with each (whole-run seconds, tokens compared), then `repeats` runs in
    which the setting alternates from one forward to the next, so that both see the same rows, contexts and machine
    load: decoding steps' median ms by context and the decoding rate against the matmul bound."""
    import hyplora.harness.generation as engine

    (old, new), use = COMPARISONS[what]
    outputs, whole = {}, {}
    for setting in (old, new):
        use(setting)
        outputs[setting], whole[setting] = engine_run(engine, model, tokenizer, records, batch_size, budget)
    identical = sum(a == b for a, b in zip(outputs[old], outputs[new]))

    steps, forward, turns = {old: [], new: []}, model.forward, itertools.cycle((old, new))

    def alternating(*args, **kwargs):
        setting = next(turns)
        use(setting)
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        rows, width = kwargs["input_ids"].shape
        if width == 1:
            steps[setting].append((rows, kwargs["attention_mask"].shape[1], time.perf_counter() - start))
        return out

    model.forward = alternating
    try:
        for _ in range(repeats):
            engine_run(engine, model, tokenizer, records, batch_size, budget)
    finally:
        del model.forward
        use(new)
    first = min(step[1] for step in steps[new])
    print(
        f"{what}: {old} against {new}; {len(records)} SVAMP items, batch {batch_size}, "
        f"{torch.get_num_threads()} thread(s), matmul bound {bound:.0f} tok/s"
    )
    print(f"whole runs: {old} {whole[old]:.1f} s, {new} {whole[new]:.1f} s (one each, in that order)")
    print(f"greedy tokens identical ({old} vs {new}): {identical}/{len(records)} items")
    print(f"decoding steps, the setting alternating step by step ({repeats} run(s)):")
    print(f"| steps by context | {old} ms (median) | {new} ms (median) | {old} / {new} | {new} % of bound |")
    print("|---|---:|---:|---:|---:|")
    for low in range(0, budget, 64):
        bucket = {
            setting: [step for step in runs if low <= step[1] - first < low + 64] for setting, runs in steps.items()
        }
        if not all(bucket.values()):
            continue
        ms = {setting: 1000 * statistics.median(step[2] for step in runs) for setting, runs in bucket.items()}
        rows = statistics.median(step[0] for step in bucket[new])
        print(
            f"| {low}-{low + 63} | {ms[old]:.0f} | {ms[new]:.0f} | {ms[old] / ms[new]:.2f} | "
            f"{100 * rows / (ms[new] / 1000) / bound:.1f} |"
        )
    for setting, runs in steps.items():
        rate = sum(step[0] for step in runs) / sum(step[2] for step in runs)
        print(f"{setting}: decoding {rate:.1f} tok/s = {100 * rate / bound:.1f}% of the bound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64, help="SVAMP items (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[64],
        help="hyplora batch size(s); agreement is checked for the first (default: %(default)s)",
    )
    parser.add_argument(
        "--reference-items", type=int, default=3, help="items for the no-cache loop (default: %(default)s)"
    )
    parser.add_argument("--check-items", type=int, default=16, help="items checked against batch-1 cached greedy")
    parser.add_argument("--skip-hf", action="store_true", help="skip the plain batch-16 generate row")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs of the fast methods (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="only to check this script quickly")
    parser.add_argument("--profile-step", type=int, default=0, help="profile one decoding step at this batch")
    parser.add_argument(
        "--before",
        default=None,
        help="also time the generation engine of this git revision against today's, interleaved (engine rows)",
    )
    parser.add_argument("--profile-beam", type=int, default=0, help="profile 4-beam search on this many prompts")
    parser.add_argument(
        "--adapter",
        choices=("none", "lora", "hyplora"),
        default="none",
        help="a rank-32 adapter with random weights, unmerged, on the model of every row (default: none)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="time every forward of one greedy run at the first batch size: phases"
    )
    parser.add_argument("--device", default="cpu", help="where the model runs (cuda: time with --trace)")
    parser.add_argument(
        "--attention", type=int, default=0, help="time one layer's decoding attention at this batch: kernels vs GB/s"
    )
    parser.add_argument(
        "--branch",
        choices=("fused", "autograd"),
        default="fused",
        help="HypLoRA's branch at inference in every mode: the C++ kernel or the PyTorch path (default: %(default)s)",
    )
    parser.add_argument(
        "--linear",
        choices=("onednn", "mkl"),
        default="onednn",
        help="the linear layers at inference in every mode: packed oneDNN or F.linear's MKL (default: %(default)s)",
    )
    parser.add_argument(
        "--compare",
        choices=tuple(COMPARISONS),
        default=None,
        help="time two settings alternating step by step, `--repeats` times: HypLoRA's autograd and fused branches "
        "(implies --adapter hyplora), the linear layers through MKL and packed oneDNN, or all of PyTorch's stock CPU "
        "path against all of hyplora's (those two and the attention kernel)",
    )
    args = parser.parse_args()
    budget = args.max_new_tokens

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    load_before = os.getloadavg()
    if args.attention:
        attention_kernels(args.attention)
        return
    use_branch(args.branch)
    use_linear(args.linear)
    model, tokenizer = load_model("smollm2-135m")
    model = adapted(model.to(args.device), "hyplora" if args.compare == "branch" else args.adapter)
    if args.profile_beam:
        profile_beam(model, tokenizer, load_test_set("svamp", args.profile_beam))
        return
    if args.profile_step:  # as the evaluator runs it: packed linears, the CPU kernels
        with decode_attention.decoding_kernel(base_model(model)):
            profile_step(model, tokenizer, load_test_set("svamp", args.profile_step), args.profile_step)
        return
    params = sum(p.numel() for p in model.parameters())
    records = load_test_set("svamp", args.items)
    prompt_lengths = [len(ids) for ids in tokenizer([eval_prompt(r["instruction"]) for r in records])["input_ids"]]
    peak = peak_matmul_gflops(device=args.device)
    bound = peak * 1e9 / (2 * params)
    warm_up(model, tokenizer, records)
    if args.trace:
        trace_phases(model, tokenizer, records, args.batch_size[0], budget, bound)
        return
    if args.compare:
        compare_alternating(model, tokenizer, records, args.batch_size[0], budget, bound, args.repeats, args.compare)
        return

    # hyplora and the plain batched loop alternate, `--repeats` times: the load of a shared machine drifts
    timings, runs = {}, {}
    before = engine_at(args.before) if args.before else None
    engines_identical = []
    for _ in range(args.repeats):
        if before is not None:  # the generation engine alone, old and new, in the same run
            import hyplora.harness.generation as now

            outputs = {}
            for name, engine in ((f"engine at {args.before}", before), ("engine now", now)):
                load = os.getloadavg()[0]
                outputs[name], seconds = engine_run(engine, model, tokenizer, records, args.batch_size[0], budget)
                label = f"{name} (batch {args.batch_size[0]})"
                timings.setdefault(label, []).append((seconds, sum(map(len, outputs[name])), load))
            engines_identical.append(sum(a == b for a, b in zip(*outputs.values())))
        for batch_size in args.batch_size:
            load = os.getloadavg()[0]
            runs[batch_size], seconds = hyplora_evaluation(model, tokenizer, args.items, batch_size, budget)
            tokens = sum(item["generated_tokens"] for item in runs[batch_size])
            timings.setdefault(f"hyplora (batch {batch_size})", []).append((seconds, tokens, load))
        if not args.skip_hf:
            load = os.getloadavg()[0]
            plain, seconds = plain_batched_loop(model, tokenizer, records, 16, budget)
            timings.setdefault("hf-batch16", []).append((seconds, sum(map(len, plain)), load))
    ours = runs[args.batch_size[0]]
    lengths = [item["generated_tokens"] for item in ours]

    picked = quantile_items(lengths, args.reference_items)
    load = os.getloadavg()[0]
    reference, measured = reference_loop(model, tokenizer, [records[i] for i in picked], budget)
    per_forward = measured / sum(token_forwards(r["prompt_length"], len(r["tokens"])) for r in reference)
    estimate = per_forward * sum(token_forwards(p, t) for p, t in zip(prompt_lengths, lengths))
    timings["reference (estimated)"] = [(estimate, sum(lengths), load)]
    checked = one_at_a_time_cached(model, tokenizer, records[: args.check_items], budget)
    load_after = os.getloadavg()

    def same(index, prediction):
        ours_prediction = ours[index]["prediction"]
        return (ours_prediction is None and prediction == float("inf")) or ours_prediction == prediction

    reference_agree = sum(same(i, extract_answer(r["response"], "svamp", "paper")) for i, r in zip(picked, reference))
    reference_tokens_agree = sum(len(r["tokens"]) == lengths[i] for i, r in zip(picked, reference))
    checked_responses = [paper_response(tokenizer, records[i], tokens) for i, tokens in enumerate(checked)]
    checked_agree = sum(same(i, extract_answer(text, "svamp", "paper")) for i, text in enumerate(checked_responses))
    checked_identical = sum(text == ours[i]["output"] for i, text in enumerate(checked_responses))

    base_rate, base_tokens = args.items / estimate, sum(lengths) / estimate
    print(
        f"SmolLM2-135M-Instruct ({params / 1e6:.1f}M params), first {args.items} SVAMP items, greedy, {budget} new "
        f"tokens, {args.threads} thread(s); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"peak fp32 matmul {peak:.1f} GFLOP/s -> matmul-bound rate {bound:.0f} tokens/s (2 x params FLOPs/token)")
    print(
        f"reference measured on items {picked} (new tokens {[len(r['tokens']) for r in reference]}): "
        f"{measured:.1f} s, {1000 * per_forward:.2f} ms per token-forward"
    )
    print()
    print(
        "| method | items | s (median) | s/item | items/s | x reference | gen tok/s | x reference | % of matmul bound "
        "| load at start |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    figures = {}
    for name, runs_of_method in timings.items():
        seconds = statistics.median(run[0] for run in runs_of_method)
        tokens = runs_of_method[0][1]
        rate, token_rate = args.items / seconds, tokens / seconds
        loads = ", ".join(f"{run[2]:.1f}" for run in runs_of_method)
        figures[name] = {
            "items": args.items,
            "seconds": [round(run[0], 2) for run in runs_of_method],
            "generated_tokens": tokens,
            "items_per_s": rate,
            "tokens_per_s": token_rate,
            "load_at_start": [run[2] for run in runs_of_method],
        }
        print(
            f"| {name} | {args.items} | {seconds:.1f} | {seconds / args.items:.2f} | {rate:.3f} | "
            f"{rate / base_rate:.1f} | {token_rate:.1f} | {token_rate / base_tokens:.1f} | {100 * token_rate / bound:.1f} "
            f"| {loads} |"
        )
    print()
    print(
        f"hyplora (batch {args.batch_size[0]}) greedy predictions identical: {reference_agree}/{len(reference)} vs the "
        f"reference loop (same output length: {reference_tokens_agree}/{len(reference)}), {checked_agree}/{len(checked)} "
        f"vs batch-1 generate with the KV cache (responses identical: {checked_identical}/{len(checked)})"
    )
    if engines_identical:
        print(
            f"engine at {args.before} and engine now: identical greedy tokens on {min(engines_identical)}/{len(records)} items"
        )
    for batch_size in args.batch_size[1:]:
        agree = sum(a["prediction"] == b["prediction"] for a, b in zip(ours, runs[batch_size]))
        print(
            f"predictions identical between hyplora batch {args.batch_size[0]} and batch {batch_size}: "
            f"{agree}/{len(ours)}"
        )
    if args.json:
        summary = {
            "params": params,
            "peak_gflops": peak,
            "matmul_bound_tokens_per_s": bound,
            "threads": args.threads,
            "load_before": load_before,
            "load_after": load_after,
            "max_new_tokens": budget,
            "reference_measured": {"items": picked, "seconds": measured, "seconds_per_token_forward": per_forward},
            "methods": figures,
            "agreement": {
                "reference": [reference_agree, len(reference)],
                "batch1_cached": [checked_agree, len(checked)],
                "batch1_cached_responses": [checked_identical, len(checked)],
            },
        }
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
