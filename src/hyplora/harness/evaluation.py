"""Evaluate a causal LM on the LLM-Adapters benchmarks: batched generation, answer extraction, reports.

Two modes:

- `paper` reproduces LLM-Adapters' `evaluate.py` (math) and `commonsense_evaluate.py` exactly:
  4-beam search, 256 new tokens for math and 32 for commonsense, the response is the decoded
  prompt + output split on `"### Response:"`; numbers: the last number once every comma is
  removed, correct when ``|pred - gold| <= 0.001``; AQuA: the first capital A-E anywhere in the
  response; label words: the first case-sensitive match of the label alternation.
- `robust` fixes the known flaws of those rules (see `ROBUST_CHANGES`, also written into the
  summary) and decodes greedily unless told otherwise.

Either way the model runs in `eval()` mode (LLM-Adapters left LoRA dropout active on CUDA) under
`torch.inference_mode`, on length-sorted left-padded batches with a KV cache. Greedy decoding uses
its own loop (`generate_greedy`): the cache is written into a buffer allocated once instead of
being concatenated at every step, and rows that have produced EOS leave the batch. Beam search
uses `transformers`' `generate`.

`evaluate` writes into `output_dir`, each file atomically (temporary file + `os.replace`):
`<dataset>.jsonl` (one line per item), `summary.json`, `results.md` and `accuracy.png`. A re-run
reuses every item already generated under the same settings key (model weights, mode, beams,
new-token budget) and the same prompt tokens, and only re-scores them.
"""

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hyplora.errors import InputError
from hyplora.harness.data import TEST_SETS, domain, load_test_set
from hyplora.harness.generation import base_model, eos_token_ids, generate_batched
from hyplora.harness.prompts import RESPONSE_SPLIT, TEMPLATES, chat_prompt, eval_prompt

MODES = ("paper", "robust")
NUMBER_TOLERANCE = 0.001
MAX_NEW_TOKENS = {"math": 256, "commonsense": 32}
PAPER_NUM_BEAMS = 4

NUMBER_SETS = ("gsm8k", "svamp", "mawps", "addsub", "multiarith", "singleeq")
LETTER_SETS = ("aqua",)
_ANSWER_N = tuple(f"answer{i}" for i in range(1, 6))
LABEL_WORDS = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "siqa": _ANSWER_N,
    "arc-e": _ANSWER_N,
    "arc-c": _ANSWER_N,
    "obqa": _ANSWER_N,
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
}

PAPER_NOTES = (
    "LLM-Adapters evaluate.py / commonsense_evaluate.py rules verbatim; the model runs in eval() mode "
    "(upstream left LoRA dropout active on CUDA) and prompts are batched with left padding.",
)
ROBUST_CHANGES = (
    "response: the generated tokens only, special tokens skipped, a leading echo of the '### Response:' header "
    "dropped, cut at the next '### Instruction:', '### Input:' or '### Response:' header (paper: decoded "
    "prompt+output split on '### Response:', so an echoed header leaves an empty response)",
    "numbers: the number right after the last 'answer is' / 'answer:' cue, else the last number; commas are "
    "removed only as thousands separators and a/b reads as a fraction (paper: every comma removed, last number)",
    "AQuA: the letter after the last 'answer is' / 'answer:' / 'option' cue or in \\boxed{}, else a response "
    "that starts with a letter, else the only distinct '(X)'; the 'A' of 'Answer' never counts "
    "(paper: the first capital A-E anywhere)",
    "label words: whole words, any case, 'Answer 1' equals 'answer1', the label after the last 'answer is' "
    "cue else the first one (paper: first case-sensitive substring)",
    "decoding: greedy unless num_beams is given (paper: 4-beam search)",
)


# ----------------------------------------------------------------------------- answer formats
@dataclass(frozen=True)
class AnswerFormat:
    """How a dataset's answers look: `"number"`, `"letter"` (A-E) or `"label"` (one of `labels`)."""

    kind: str
    labels: tuple[str, ...] = ()


def registered_name(spec: str) -> str | None:
    """The `TEST_SETS` name of `spec` (a registry name or an upstream folder name such as `SVAMP`), else None."""
    key = str(spec).lower()
    return next((t.name for t in TEST_SETS.values() if key in (t.name, t.folder.lower())), None)


def answer_format(dataset: str, records: list[dict] = ()) -> AnswerFormat:
    """The answer format of a registered test set, or, for a file, inferred from its gold answers.

    A file whose answers all parse as numbers is numeric, one whose answers are all single letters
    A-E is multiple choice, and anything else is a label-word set made of its distinct answers.
    """
    name = registered_name(dataset)
    if name in NUMBER_SETS:
        return AnswerFormat("number")
    if name in LETTER_SETS:
        return AnswerFormat("letter")
    if name in LABEL_WORDS:
        return AnswerFormat("label", LABEL_WORDS[name])
    golds = [str(record["answer"]).strip() for record in records]
    if not golds:
        raise InputError(f"{dataset}: no records, so the answer format cannot be inferred")
    if all(_parse_float(gold) is not None for gold in golds):
        return AnswerFormat("number")
    if all(re.fullmatch(r"[A-E]", gold) for gold in golds):
        return AnswerFormat("letter")
    return AnswerFormat("label", tuple(sorted(set(golds), key=lambda label: (-len(label), label))))


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _as_format(dataset: "str | AnswerFormat") -> AnswerFormat:
    if isinstance(dataset, AnswerFormat):
        return dataset
    name = registered_name(dataset)
    if name is None:
        raise InputError(f"unknown dataset {dataset!r}: pass a registered name or an AnswerFormat")
    return answer_format(name)


# ----------------------------------------------------------------------------- extraction: paper
_PAPER_NUMBER = re.compile(r"-?\d+\.?\d*")
_PAPER_LETTER = re.compile(r"A|B|C|D|E")


def _paper_number(response: str) -> float:
    numbers = _PAPER_NUMBER.findall(response.replace(",", ""))
    return float(numbers[-1]) if numbers else math.inf


def _paper_letter(response: str) -> str:
    letters = _PAPER_LETTER.findall(response.strip())
    return letters[0] if letters else ""


def _paper_label(response: str, labels: tuple[str, ...]) -> str:
    found = re.findall("|".join(map(re.escape, labels)), response.strip())
    return found[0] if found else ""


# ----------------------------------------------------------------------------- extraction: robust
_SECTION_HEADER = re.compile(r"###\s*(?:Instruction|Input|Response)\s*:")
_LEADING_RESPONSE_HEADERS = re.compile(r"^(?:\s*###\s*Response\s*:)+")
_NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|(?<![\w.])-?\.\d+"
_ROBUST_NUMBER = re.compile(_NUMBER)
_ANSWER_CUE = r"(?i:answer\s+is|answer\s*:|answer\s*=)"
_CUED_NUMBER = re.compile(_ANSWER_CUE + r"\s*[:=]?\s*\$?\s*(" + _NUMBER + ")")
_CUED_LETTER = re.compile(
    r"(?i:(?:answer|option)(?:\s+is)?)\s*[:=]?\s*\(?([A-E])\)?(?![A-Za-z])|\\boxed\{\s*\(?([A-E])\)?\s*\}"
)
_LEADING_LETTER = re.compile(r"\(?([A-E])(?:\)|\.|:|\s*$)")
_PARENTHESISED_LETTER = re.compile(r"\(([A-E])\)")


def _number_value(text: str) -> float:
    numerator, _, denominator = text.replace(",", "").partition("/")
    if not denominator:
        return float(numerator)
    return float(numerator) / float(denominator) if float(denominator) else math.inf


def _robust_number(response: str) -> float:
    cued = _CUED_NUMBER.findall(response)
    if cued:
        return _number_value(cued[-1])
    numbers = _ROBUST_NUMBER.findall(response)
    return _number_value(numbers[-1]) if numbers else math.inf


def _robust_letter(response: str) -> str:
    cued = [a or b for a, b in _CUED_LETTER.findall(response)]
    if cued:
        return cued[-1]
    leading = _LEADING_LETTER.match(response.strip())
    if leading:
        return leading.group(1)
    parenthesised = set(_PARENTHESISED_LETTER.findall(response))
    return parenthesised.pop() if len(parenthesised) == 1 else ""


def _label_pattern(labels: tuple[str, ...]) -> str:
    """Whole-word alternation of the labels, where `answer1` also matches `Answer 1`."""
    parts = []
    for label in labels:
        stem, digits = re.fullmatch(r"(.*?)(\d*)", label).groups()
        parts.append(re.escape(stem) + (r"\s*" + digits if stem and digits else digits))
    return r"\b(?:" + "|".join(parts) + r")\b"


def _robust_label(response: str, labels: tuple[str, ...]) -> str:
    words = _label_pattern(labels)
    canonical = {label.lower(): label for label in labels}
    cued = re.findall(_ANSWER_CUE + r"\s*[:=]?\s*(" + words + ")", response, flags=re.IGNORECASE)
    found = cued[-1:] or re.findall(words, response, flags=re.IGNORECASE)[:1]
    return canonical.get(re.sub(r"\s+", "", found[0]).lower(), "") if found else ""


def robust_response(generated_text: str) -> str:
    """The generated text up to the next Alpaca section header, stripped, after any leading echo of the
    prompt's own `### Response:` header (a model that repeats it before answering has still answered)."""
    return _SECTION_HEADER.split(_LEADING_RESPONSE_HEADERS.sub("", generated_text), maxsplit=1)[0].strip()


def extract_answer(response: str, dataset: "str | AnswerFormat", mode: str = "paper") -> "float | str":
    """The predicted answer in a response: a float for numeric sets (`inf` when there is no number), else a string.

    Args:
        response (`str`): the model's response (see `response_text`).
        dataset (`str` or `AnswerFormat`): a registered test-set name, or the format itself.
        mode (`str`): `"paper"` (LLM-Adapters' rules) or `"robust"` (see `ROBUST_CHANGES`).

    Returns:
        `float` or `str`: `""` when no letter / label is found, which always scores wrong.
    """
    fmt = _as_format(dataset)
    _check_mode(mode)
    paper = mode == "paper"
    if fmt.kind == "number":
        return _paper_number(response) if paper else _robust_number(response)
    if fmt.kind == "letter":
        return _paper_letter(response) if paper else _robust_letter(response)
    return _paper_label(response, fmt.labels) if paper else _robust_label(response, fmt.labels)


def is_correct(prediction: "float | str", gold: str, dataset: "str | AnswerFormat") -> bool:
    """Numbers: ``|prediction - float(gold)| <= 0.001``; letters and labels: string equality."""
    if _as_format(dataset).kind == "number":
        return abs(float(gold) - prediction) <= NUMBER_TOLERANCE
    return prediction == gold


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


def response_text(tokenizer, prompt_ids: list[int], generated: list[int], *, mode: str, domain_name: str) -> str:
    """The response the answer is extracted from.

    `paper`: ``decode(prompt + output).split("### Response:")[1].strip()``, special tokens kept for
    math (`evaluate.py`) and skipped for commonsense (`commonsense_evaluate.py`); a prompt without
    that marker (chat template) falls back to the decoded output. `robust`: see `robust_response`.
    """
    if mode == "robust":
        return robust_response(tokenizer.decode(generated, skip_special_tokens=True))
    text = tokenizer.decode(prompt_ids + generated, skip_special_tokens=domain_name == "commonsense")
    parts = text.split(RESPONSE_SPLIT)
    if len(parts) > 1:
        return parts[1].strip()
    return tokenizer.decode(generated, skip_special_tokens=domain_name == "commonsense").strip()


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
    """The key finished items are stored under; batch size is not part of it. Items keep the cut response, not the
    raw generation, so the robust response rule is part of the key: changing it regenerates."""
    settings = {"model": fingerprint, "mode": mode, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    if mode == "robust":
        settings["response_rule"] = ROBUST_CHANGES[0]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _token_hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- files
def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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


def _file_label(spec: str) -> str:
    """The registered name, else a file-system-safe `<folder>-<stem>` of the file."""
    name = registered_name(spec)
    if name is not None:
        return name
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


def _prepare(spec: str, tokenizer, *, limit, levels_dir, prompt_template, max_new_tokens) -> _Dataset:
    records = load_test_set(spec, limit, levels_dir=levels_dir)
    name = registered_name(spec)
    fmt = answer_format(spec, records)
    domain_name = domain(name) if name is not None else "commonsense" if fmt.kind == "label" else "math"
    if prompt_template == "alpaca":
        prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in records]
        prompt_ids = tokenizer(prompts)["input_ids"]
    else:  # the chat template writes its own special tokens
        prompts = [chat_prompt(tokenizer, r["instruction"], r.get("input", "")) for r in records]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    budget = max_new_tokens if max_new_tokens is not None else MAX_NEW_TOKENS[domain_name]
    return _Dataset(spec, _file_label(spec), domain_name, fmt, records, prompts, prompt_ids, budget)


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


def check_options(
    datasets,
    *,
    limit=None,
    batch_size=32,
    mode="paper",
    output_dir=None,
    max_new_tokens=None,
    num_beams=None,
    prompt_template="alpaca",
    levels_dir=None,
) -> None:
    """Raise `InputError` for a bad option or an unknown / unreadable test set, before any model is loaded."""
    _check_mode(mode)
    for option, value in (
        ("batch_size", batch_size),
        ("max_new_tokens", max_new_tokens),
        ("num_beams", num_beams),
        ("limit", limit),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"option {option} must be a positive integer, got {value!r}")
    if prompt_template not in TEMPLATES:
        raise InputError(f"unknown prompt template {prompt_template!r}: choose one of {', '.join(TEMPLATES)}")
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise InputError(f"output_dir {output_dir} exists and is not a folder")
    if isinstance(datasets, str) or not datasets:
        raise InputError("datasets must be a non-empty list of test-set names or files")
    labels = [_file_label(str(spec)) for spec in datasets]
    if len(set(labels)) != len(labels):
        raise InputError(f"datasets name the same set twice: {', '.join(labels)}")
    for spec in datasets:
        load_test_set(spec, 1, levels_dir=levels_dir)


def evaluate(
    model,
    tokenizer,
    datasets,
    *,
    limit=None,
    batch_size=32,
    mode="paper",
    output_dir,
    max_new_tokens=None,
    num_beams=None,
    prompt_template="alpaca",
    levels_dir=None,
    run_info=None,
    progress=True,
) -> dict:
    """Evaluate `model` on test sets and write per-item JSONL, `summary.json`, `results.md` and `accuracy.png`.

    Args:
        model: a causal LM (or `PeftModel`); it is put in `eval()` mode and restored afterwards.
        tokenizer: its tokenizer.
        datasets (`list[str]`): registered test-set names or JSON/JSONL files (see `hyplora.harness.data`).
        limit (`int`, *optional*): evaluate the first `limit` items of each set.
        batch_size (`int`): prompts per generation batch.
        mode (`str`): `"paper"` or `"robust"` (module docstring).
        output_dir: folder for the results; finished items found there are reused.
        max_new_tokens (`int`, *optional*): default 256 for math, 32 for commonsense.
        num_beams (`int`, *optional*): default 4 in `paper` mode, 1 (greedy) in `robust` mode.
        prompt_template (`str`): `"alpaca"` (LLM-Adapters' evaluation prompt) or `"chat"`.
        levels_dir (*optional*): folder of HypLLM `updated_level1.json` files, for per-level accuracy.
        run_info (`dict`, *optional*): extra fields for the summary (e.g. model and adapter names).
        progress (`bool`): show a tqdm bar per dataset.

    Returns:
        `dict`: the summary written to `summary.json`: per-dataset `accuracy`, `correct`, `count`
        (and `levels`), `macro_mean` (mean of the accuracies), `weighted_mean` (all items pooled,
        i.e. weighted by test size), the settings and what the mode changes.
    """
    from tqdm.auto import tqdm

    check_options(
        datasets,
        limit=limit,
        batch_size=batch_size,
        mode=mode,
        output_dir=output_dir,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        prompt_template=prompt_template,
        levels_dir=levels_dir,
    )
    beams = num_beams if num_beams is not None else PAPER_NUM_BEAMS if mode == "paper" else 1
    prepared = [
        _prepare(
            spec,
            tokenizer,
            limit=limit,
            levels_dir=levels_dir,
            prompt_template=prompt_template,
            max_new_tokens=max_new_tokens,
        )
        for spec in datasets
    ]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    was_training = model.training
    model.eval()
    fingerprint = model_fingerprint(model)
    per_dataset, timing = {}, {"seconds": 0.0, "generated_items": 0, "generated_tokens": 0}
    try:
        for data in prepared:
            per_dataset[data.label] = _evaluate_one(
                model,
                tokenizer,
                data,
                fingerprint=fingerprint,
                mode=mode,
                num_beams=beams,
                batch_size=batch_size,
                eos_ids=eos_ids,
                pad_id=pad_id,
                output_dir=output_dir,
                timing=timing,
                progress=progress,
                tqdm=tqdm,
            )
    finally:
        model.train(was_training)
    summary = _summary(
        per_dataset,
        prepared,
        mode=mode,
        beams=beams,
        batch_size=batch_size,
        limit=limit,
        prompt_template=prompt_template,
        fingerprint=fingerprint,
        timing=timing,
        run_info=run_info,
    )
    write_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(output_dir / "results.md", markdown_table(summary))
    plot_accuracy(summary, output_dir / "accuracy.png")
    return summary


def _evaluate_one(
    model,
    tokenizer,
    data: _Dataset,
    *,
    fingerprint,
    mode,
    num_beams,
    batch_size,
    eos_ids,
    pad_id,
    output_dir,
    timing,
    progress,
    tqdm,
) -> dict:
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
    bar = tqdm(total=len(data.records), initial=reused, desc=data.label, unit="item", disable=not progress)
    start = time.perf_counter()

    def on_batch(batch_indices, outputs):
        for position, tokens in zip(batch_indices, outputs):
            index = pending[position]
            output = response_text(tokenizer, data.prompt_ids[index], tokens, mode=mode, domain_name=data.domain)
            items[index] = _scored_item(data, index, output, len(tokens), key, mode)
            timing["generated_tokens"] += len(tokens)
        timing["generated_items"] += len(batch_indices)
        write_atomic(path, _jsonl([items[i] for i in sorted(items)]))
        bar.update(len(batch_indices))

    if pending:
        generate_batched(
            model,
            [data.prompt_ids[i] for i in pending],
            max_new_tokens=data.max_new_tokens,
            num_beams=num_beams,
            batch_size=batch_size,
            eos_ids=eos_ids,
            pad_id=pad_id,
            on_batch=on_batch,
        )
    else:
        write_atomic(path, _jsonl([items[i] for i in sorted(items)]))
    timing["seconds"] += time.perf_counter() - start
    bar.close()
    ordered = [items[i] for i in range(len(data.records))]
    result = {**_accuracy(ordered), "reused": reused, "generated": len(pending), "max_new_tokens": data.max_new_tokens}
    levels = sorted({item["level"] for item in ordered if "level" in item})
    if levels:
        result["levels"] = {
            str(level): _accuracy([it for it in ordered if it.get("level") == level]) for level in levels
        }
    return result


def _summary(
    per_dataset, prepared, *, mode, beams, batch_size, limit, prompt_template, fingerprint, timing, run_info
) -> dict:
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
        "batch_size": batch_size,
        "limit": limit,
        "prompt_template": prompt_template,
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


def markdown_table(summary: dict) -> str:
    """Per-dataset accuracy (%) and counts, then the macro mean and the test-size-weighted mean."""
    lines = [
        f"Mode `{summary['mode']}`, {summary['num_beams']} beam(s), prompt `{summary['prompt_template']}`"
        + (f", first {summary['limit']} items per set" if summary["limit"] else "")
        + ".",
        "",
        "| dataset | accuracy (%) | correct | count |",
        "|---|---:|---:|---:|",
    ]
    for label, result in summary["datasets"].items():
        lines.append(f"| {label} | {100 * result['accuracy']:.1f} | {result['correct']} | {result['count']} |")
        for level, stats in result.get("levels", {}).items():
            lines.append(
                f"| {label} level {level} | {100 * stats['accuracy']:.1f} | {stats['correct']} | {stats['count']} |"
            )
    total = sum(result["count"] for result in summary["datasets"].values())
    lines.append(f"| **macro mean** | {100 * summary['macro_mean']:.1f} | | |")
    lines.append(f"| **weighted mean** | {100 * summary['weighted_mean']:.1f} | | {total} |")
    return "\n".join(lines) + "\n"


def plot_accuracy(summary: dict, path: Path) -> None:
    """A bar chart of per-dataset accuracy with the two means as horizontal lines, saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["datasets"])
    values = [100 * summary["datasets"][label]["accuracy"] for label in labels]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(labels)), 3.2))
    bars = axes.bar(labels, values, color="#4c72b0")
    counts = [summary["datasets"][label]["count"] for label in labels]
    axes.bar_label(bars, labels=[f"{v:.1f}\nn={n}" for v, n in zip(values, counts)], fontsize="small")
    axes.axhline(100 * summary["macro_mean"], color="#dd8452", linestyle="--", label="macro mean")
    axes.axhline(100 * summary["weighted_mean"], color="#55a868", linestyle=":", label="weighted mean")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    adapter = f" + {Path(summary['adapter']).name}" if summary.get("adapter") else ""
    axes.set_title(f"{summary.get('model', 'model')}{adapter}: {summary['mode']} mode", fontsize="medium")
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)
