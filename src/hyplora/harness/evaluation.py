"""Evaluate a causal LM on the LLM-Adapters benchmarks: the options, the run, its files.

The orchestration layer, after lm-evaluation-harness' `evaluator.py`: test sets come from
`hyplora.harness.data`, generation from `hyplora.harness.generation`, the response and answer
rules from `hyplora.harness.extraction` (`paper`: LLM-Adapters' rules and 4-beam search, 256 new
tokens for math and 32 for commonsense; `robust`: fixed rules, greedy decoding unless told
otherwise), and the table and plot from `hyplora.harness.reports`. The model runs in `eval()`
mode (LLM-Adapters left LoRA dropout active on CUDA) under `torch.inference_mode`.

`evaluate` writes into `output_dir`, each file with `hyplora.files.write_atomic`:
`<dataset>.jsonl` (one line per item), `summary.json`, `results.md` and `accuracy.png`. A re-run
reuses every item already generated under the same settings key (model weights, mode, beams,
new-token budget, and in robust mode `ROBUST_RULES_VERSION`) and the same prompt tokens, and only
re-scores them. Items of other settings stay in the file (`merge_items`, under a file lock, so
concurrent runs into one folder lose nothing); `summary.json` describes the latest run.
"""

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hyplora.errors import InputError
from hyplora.files import check_output_dir, write_atomic
from hyplora.harness.data import ANSWER_KINDS, AnswerFormat, answer_format, find_test_set, load_test_set
from hyplora.harness.extraction import (
    MODES,
    PAPER_NOTES,
    ROBUST_CHANGES,
    ROBUST_RULES_VERSION,
    check_mode,
    extract_answer,
    is_correct,
    response_text,
)
from hyplora.harness.generation import base_model, eos_token_ids, generate_batched, pad_token_id
from hyplora.harness.prompts import TEMPLATES, chat_prompt, eval_prompt
from hyplora.harness.reports import markdown_table, plot_accuracy

MAX_NEW_TOKENS = {"math": 256, "commonsense": 32}
PAPER_NUM_BEAMS = 4
GREEDY_BATCH_SIZE = 64
CPU_THREADS_BATCHED = 2
"""On a CPU greedy batches hold `GREEDY_BATCH_SIZE` prompts per thread, for up to this many threads (measured)."""
BEAM_BATCH_SIZE = 32


# ----------------------------------------------------------------------------- options
@dataclass
class EvalOptions:
    """What to evaluate and how; every option is checked when the object is built, before any model loads.

    `hyplora eval`'s options are generated from these fields (their `help` and `choices`).

    Raises:
        InputError: a bad option, an unknown or unreadable test set, or two specs naming the same set.
    """

    datasets: tuple[str, ...] = field(
        metadata={
            "help": "test sets (gsm8k svamp aqua mawps addsub multiarith singleeq boolq piqa siqa winogrande "
            "arc-e arc-c obqa) or JSON/JSONL files; space- or comma-separated",
            "nargs": "+",
        }
    )
    output_dir: str | os.PathLike = field(
        metadata={"help": "folder for the JSONL, summary.json, results.md and accuracy.png"}
    )
    limit: int | None = field(default=None, metadata={"help": "evaluate the first N items of each set"})
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": f"prompts per generation batch (default: {GREEDY_BATCH_SIZE} for greedy decoding, "
            f"on a CPU {GREEDY_BATCH_SIZE} per torch thread up to {GREEDY_BATCH_SIZE * CPU_THREADS_BATCHED}; "
            f"{BEAM_BATCH_SIZE} for beam search, which runs batch x beams sequences)"
        },
    )
    mode: str = field(
        default="paper",
        metadata={
            "help": "paper: LLM-Adapters exactly; robust: fixed extraction, greedy decoding",
            "choices": MODES,
        },
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "new-token budget (default: 256 math, 32 commonsense)"}
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "beam width (default: 4 in paper mode, 1 in robust)", "exclusive": "decoding"}
    )
    prompt_template: str = field(
        default="alpaca",
        metadata={
            "help": "alpaca: LLM-Adapters' evaluation prompt; chat: the tokenizer's chat template",
            "choices": TEMPLATES,
        },
    )
    answer_format: str | None = field(
        default=None,
        metadata={
            "help": "answer format of the JSON/JSONL test files: number, letter (A-E) or label (words; commonsense). "
            "Default: from the gold answers; a file mixing numbers and other answers is refused",
            "choices": ANSWER_KINDS,
        },
    )
    levels_dir: str | None = field(
        default=None,
        metadata={"help": "folder with HypLLM's <Name>/updated_level1.json files, for per-level accuracy"},
    )
    progress: bool = field(default=True, metadata={"help": "a tqdm bar per dataset", "cli": False})

    def __post_init__(self):
        check_mode(self.mode)
        for option in ("batch_size", "max_new_tokens", "num_beams", "limit"):
            value = getattr(self, option)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"option {option} must be a positive integer, got {value!r}")
        if self.prompt_template not in TEMPLATES:
            raise InputError(f"unknown prompt template {self.prompt_template!r}: choose one of {', '.join(TEMPLATES)}")
        if self.output_dir is None:
            raise InputError("option output_dir is required")
        check_output_dir(self.output_dir)
        if isinstance(self.datasets, (str, os.PathLike)) or not self.datasets:
            raise InputError("datasets must be a non-empty list of test-set names or files")
        self.datasets = tuple(str(spec) for spec in self.datasets)
        labels = [file_label(spec) for spec in self.datasets]
        if len(set(labels)) != len(labels):
            raise InputError(f"datasets name the same set twice: {', '.join(labels)}")
        for spec in self.datasets:
            answer_format(spec, load_test_set(spec, levels_dir=self.levels_dir), self.answer_format)

    @property
    def beams(self) -> int:
        """`num_beams`, else the mode's default: 4 in `paper` mode (LLM-Adapters), 1 (greedy) in `robust`."""
        if self.num_beams is not None:
            return self.num_beams
        return PAPER_NUM_BEAMS if self.mode == "paper" else 1

    def batch_for(self, device: torch.device) -> int:
        """`batch_size`, else for greedy decoding 64 prompts, on a CPU 64 per torch thread up to 128 (a 64-item run
        1.2x faster at 64 than at 32 at 1 thread; at 2 threads 128 items 1.09x faster at 128 than at 64:
        benchmarks/README-eval.md), and 32 for beam search (32 x 4 beams = 128 sequences; a 7B model's KV cache at
        64 x 4 sequences would not fit 80 GB)."""
        if self.batch_size is not None:
            return self.batch_size
        if self.beams > 1:
            return BEAM_BATCH_SIZE
        if torch.device(device).type == "cpu":
            return GREEDY_BATCH_SIZE * min(torch.get_num_threads(), CPU_THREADS_BATCHED)
        return GREEDY_BATCH_SIZE


# ----------------------------------------------------------------------------- settings key
def model_fingerprint(model) -> str:
    """A hash of the model's class and every tensor's name, dtype, shape and a strided sample of up to 4096 values.

    Cheap for billion-parameter models, and any retrained adapter or different checkpoint changes it.
    """
    digest = hashlib.sha256(type(base_model(model)).__name__.encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.float64)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def settings_key(fingerprint: str, *, mode: str, num_beams: int, max_new_tokens: int) -> str:
    """The key finished items are stored under; batch size is not part of it. Items keep the cut response, not
    the raw generation, so in robust mode the response rule's `ROBUST_RULES_VERSION` is part of the key."""
    settings = {"model": fingerprint, "mode": mode, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    if mode == "robust":
        settings["robust_rules"] = ROBUST_RULES_VERSION
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _token_hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- per-item files
def read_items(path: "str | os.PathLike") -> list[dict]:
    """The items of a per-item JSONL file written by `evaluate` (none when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{path}: line {number} is not valid JSON ({err.msg}); delete the file to regenerate"
            ) from None
        if not isinstance(item, dict) or not {"index", "settings_key", "prompt_hash", "output"} <= item.keys():
            raise InputError(
                f"{path}: line {number} is not an item written by hyplora eval; delete the file to regenerate"
            )
        items.append(item)
    return items


def _jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _sort_index(index) -> tuple:
    return (0, index, "") if isinstance(index, int) else (1, 0, str(index))


def merge_items(path: "str | os.PathLike", items: list[dict]) -> None:
    """Write `items` into the per-item file `path`, keeping every item already there under another settings key,
    prompt or index (other adapters, models, budgets, or another process's work). Items are identified by
    `(settings_key, prompt_hash, index)`; `items` replace their namesakes. A file lock (`.<name>.lock`) makes
    the read-merge-write one step, so evaluations writing the same folder at once lose nothing."""
    from filelock import FileLock

    path = Path(path)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        merged = {(old["settings_key"], old["prompt_hash"], old["index"]): old for old in read_items(path)}
        merged |= {(item["settings_key"], item["prompt_hash"], item["index"]): item for item in items}
        ordered = sorted(merged.values(), key=lambda item: (str(item["settings_key"]), _sort_index(item["index"])))
        write_atomic(path, _jsonl(ordered))


def file_label(spec: str) -> str:
    """The name of a spec's results (`<label>.jsonl`): the registered name, else a file-system-safe
    `<folder>-<stem>` of the file."""
    test = find_test_set(spec)
    if test is not None:
        return test.name
    path = Path(spec.removeprefix("hf:"))
    label = f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem
    return re.sub(r"[^\w.-]+", "_", label)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class _Dataset:
    spec: str
    label: str
    domain: str
    fmt: AnswerFormat
    records: list[dict]
    prompts: list[str]
    prompt_ids: list[list[int]]
    max_new_tokens: int


def _prepare(spec: str, tokenizer, options: EvalOptions) -> _Dataset:
    records = load_test_set(spec, levels_dir=options.levels_dir)
    fmt = answer_format(spec, records, options.answer_format)  # from every record, as training decides it
    records = records[: options.limit] if options.limit is not None else records
    if options.prompt_template == "alpaca":
        prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in records]
        prompt_ids = tokenizer(prompts)["input_ids"]
    else:  # the chat template writes its own special tokens
        prompts = [chat_prompt(tokenizer, r["instruction"], r.get("input", "")) for r in records]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    budget = options.max_new_tokens if options.max_new_tokens is not None else MAX_NEW_TOKENS[fmt.domain]
    return _Dataset(spec, file_label(spec), fmt.domain, fmt, records, prompts, prompt_ids, budget)


def _scored_item(data: _Dataset, index: int, output: str, generated_tokens: int, key: str, mode: str) -> dict:
    record = data.records[index]
    gold = str(record["answer"]).strip()
    prediction = extract_answer(output, data.fmt, mode)
    item = {
        "index": index,
        "prompt": data.prompts[index],
        "output": output,
        "prediction": prediction if not (isinstance(prediction, float) and math.isinf(prediction)) else None,
        "gold": gold,
        "correct": is_correct(prediction, gold, data.fmt),
        "generated_tokens": generated_tokens,
        "settings_key": key,
        "prompt_hash": _token_hash(data.prompt_ids[index]),
    }
    if "level" in record:
        item["level"] = record["level"]
    return item


def _accuracy(items: list[dict]) -> dict:
    correct = sum(item["correct"] for item in items)
    return {"accuracy": correct / len(items) if items else 0.0, "correct": correct, "count": len(items)}


def evaluate(model, tokenizer, options: EvalOptions, *, run_info: dict | None = None) -> dict:
    """Evaluate `model` on `options.datasets` and write per-item JSONL, `summary.json`, `results.md`, `accuracy.png`.

    Args:
        model: a causal LM (or `PeftModel`); it is put in `eval()` mode and restored afterwards.
        tokenizer: its tokenizer.
        options (`EvalOptions`): the test sets, output folder and decoding settings.
        run_info (`dict`, *optional*): extra fields for the summary (e.g. model and adapter names).

    Returns:
        `dict`: the summary written to `summary.json`: per-dataset `accuracy`, `correct`, `count`
        (and `levels`), `macro_mean` (mean of the accuracies), `weighted_mean` (all items pooled,
        i.e. weighted by test size), the settings and what the mode changes.
    """
    from tqdm.auto import tqdm

    prepared = [_prepare(spec, tokenizer, options) for spec in options.datasets]
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    was_training = model.training
    model.eval()
    fingerprint = model_fingerprint(model)
    batch = options.batch_for(next(model.parameters()).device)
    per_dataset, timing = {}, {"seconds": 0.0, "generated_items": 0, "generated_tokens": 0}
    try:
        for data in prepared:
            per_dataset[data.label] = _evaluate_one(
                model,
                tokenizer,
                data,
                options,
                batch=batch,
                fingerprint=fingerprint,
                eos_ids=eos_ids,
                pad_id=pad_id,
                output_dir=output_dir,
                timing=timing,
                tqdm=tqdm,
            )
    except KeyboardInterrupt:
        kept = sum(_kept_items(data, output_dir, fingerprint, options) for data in prepared)
        raise KeyboardInterrupt(f"interrupted, {kept} items kept in {output_dir} (run again to continue)") from None
    finally:
        model.train(was_training)
    summary = _summary(
        per_dataset, prepared, options, batch=batch, fingerprint=fingerprint, timing=timing, run_info=run_info
    )
    write_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(output_dir / "results.md", markdown_table(summary))
    plot_accuracy(summary, output_dir / "accuracy.png")
    return summary


def _kept_items(data: _Dataset, output_dir: Path, fingerprint: str, options: EvalOptions) -> int:
    """How many of this run's items `<label>.jsonl` holds (those a re-run reuses)."""
    key = settings_key(fingerprint, mode=options.mode, num_beams=options.beams, max_new_tokens=data.max_new_tokens)
    return sum(item["settings_key"] == key for item in read_items(output_dir / f"{data.label}.jsonl"))


def _evaluate_one(
    model,
    tokenizer,
    data: _Dataset,
    options: EvalOptions,
    *,
    batch,
    fingerprint,
    eos_ids,
    pad_id,
    output_dir,
    timing,
    tqdm,
) -> dict:
    mode, num_beams = options.mode, options.beams
    key = settings_key(fingerprint, mode=mode, num_beams=num_beams, max_new_tokens=data.max_new_tokens)
    path = output_dir / f"{data.label}.jsonl"
    items: dict[int, dict] = {}
    for old in read_items(path):
        index = old["index"]
        if (
            isinstance(index, int)
            and 0 <= index < len(data.records)
            and old["settings_key"] == key
            and old["prompt_hash"] == _token_hash(data.prompt_ids[index])
        ):
            items[index] = _scored_item(data, index, old["output"], old.get("generated_tokens", 0), key, mode)
    reused = len(items)
    pending = [i for i in range(len(data.records)) if i not in items]
    bar = tqdm(total=len(data.records), initial=reused, desc=data.label, unit="item", disable=not options.progress)
    start = time.perf_counter()

    def on_batch(batch_indices, outputs):
        for position, tokens in zip(batch_indices, outputs):
            index = pending[position]
            output = response_text(tokenizer, data.prompt_ids[index], tokens, mode=mode, domain_name=data.domain)
            items[index] = _scored_item(data, index, output, len(tokens), key, mode)
            timing["generated_tokens"] += len(tokens)
        timing["generated_items"] += len(batch_indices)
        merge_items(path, [items[i] for i in sorted(items)])
        bar.update(len(batch_indices))

    try:
        if pending:
            generate_batched(
                model,
                [data.prompt_ids[i] for i in pending],
                max_new_tokens=data.max_new_tokens,
                num_beams=num_beams,
                batch_size=batch,
                eos_ids=eos_ids,
                pad_id=pad_id,
                on_batch=on_batch,
            )
        else:
            merge_items(path, [items[i] for i in sorted(items)])
    finally:  # an error message then starts on a line of its own
        bar.close()
    timing["seconds"] += time.perf_counter() - start
    ordered = [items[i] for i in range(len(data.records))]
    result = {**_accuracy(ordered), "reused": reused, "generated": len(pending), "max_new_tokens": data.max_new_tokens}
    levels = sorted({item["level"] for item in ordered if "level" in item})
    if levels:
        result["levels"] = {
            str(level): _accuracy([it for it in ordered if it.get("level") == level]) for level in levels
        }
    return result


def _summary(per_dataset, prepared, options: EvalOptions, *, batch, fingerprint, timing, run_info) -> dict:
    mode, beams = options.mode, options.beams
    notes = list(PAPER_NOTES if mode == "paper" else ROBUST_CHANGES)
    budgets = {data.domain: data.max_new_tokens for data in prepared}
    if mode == "paper" and (beams != PAPER_NUM_BEAMS or any(MAX_NEW_TOKENS[d] != n for d, n in budgets.items())):
        notes.append(
            f"decoding differs from the paper's: {beams} beam(s) (paper: {PAPER_NUM_BEAMS}), new-token budgets "
            f"{budgets} (paper: {MAX_NEW_TOKENS})"
        )
    accuracies = [result["accuracy"] for result in per_dataset.values()]
    correct = sum(result["correct"] for result in per_dataset.values())
    count = sum(result["count"] for result in per_dataset.values())
    seconds = timing["seconds"]
    return {
        **(run_info or {}),
        "mode": mode,
        "mode_notes": notes,
        "num_beams": beams,
        "batch_size": batch,
        "limit": options.limit,
        "prompt_template": options.prompt_template,
        "model_fingerprint": fingerprint,
        "datasets": {
            data.label: {"source": data.spec, "domain": data.domain, **per_dataset[data.label]} for data in prepared
        },
        "macro_mean": sum(accuracies) / len(accuracies),
        "weighted_mean": correct / count if count else 0.0,
        "generation": {
            "seconds": round(seconds, 3),
            "items": timing["generated_items"],
            "tokens": timing["generated_tokens"],
            "items_per_second": round(timing["generated_items"] / seconds, 4) if seconds else None,
            "tokens_per_second": round(timing["generated_tokens"] / seconds, 2) if seconds else None,
        },
    }
