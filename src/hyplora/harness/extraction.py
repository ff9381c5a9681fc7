"""Answer extraction for the LLM-Adapters benchmarks: the response a model gave, the answer in it, its score.

Two rule sets (`MODES`), after lm-evaluation-harness' filters (`lm_eval/filters/extraction.py`):

- `paper` reproduces LLM-Adapters' `evaluate.py` (math) and `commonsense_evaluate.py` exactly: the
  response is the decoded prompt + output split on `"### Response:"`; numbers: the last number once
  every comma is removed, correct when ``|pred - gold| <= 0.001``; AQuA: the first capital A-E
  anywhere in the response; label words: the first case-sensitive match of the label alternation.
- `robust` fixes the known flaws of those rules (`ROBUST_CHANGES`, also written into the summary).

What a dataset's answers look like (`AnswerFormat`: number, letter or label words) is decided in
`hyplora.harness.data.answer_format`, the one rule that training and evaluation share.
"""

import math
import re

from hyplora.errors import InputError
from hyplora.harness.data import AnswerFormat, answer_format
from hyplora.harness.prompts import RESPONSE_SPLIT

MODES = ("paper", "robust")
NUMBER_TOLERANCE = 0.001
ROBUST_RULES_VERSION = 2
"""Version of the robust response rule (`robust_response`), part of the cache key of robust-mode items.

Cached items store the cut response, so changing that rule must regenerate them: bump this number.
The other rules re-score stored responses on every run and need no bump. Version 2 replaced the
prose of `ROBUST_CHANGES[0]` in the key (changing the robust-mode keys of earlier results once).
"""
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
    check_mode(mode)
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


def check_mode(mode: str) -> None:
    """Raise `InputError` unless `mode` is one of `MODES`."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


def _as_format(dataset: "str | AnswerFormat") -> AnswerFormat:
    return dataset if isinstance(dataset, AnswerFormat) else answer_format(dataset)
