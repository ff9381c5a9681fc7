"""The shipped test sets as lm-eval documents: `load_test_split` is the tasks' `custom_dataset`.

The LLM-Adapters commonsense records hold one `instruction` string that embeds the question and
its choices, and a label word as `answer`. `multiple_choice_doc` recovers `question`, `choices`
and the gold index from that string by the exact layout each set was written in (`LAYOUTS`), and
checks that the layout rebuilt from the parts gives the instruction back character for character;
a record that does not fit raises `InputError` naming the set and the record.

The math records are passed through unchanged (with their set's name); `math_prompt` renders the
LLM-Adapters evaluation prompt and `math_results` scores a generation with `hyplora eval`'s
`robust` rules.
"""

from dataclasses import dataclass

from hyplora.errors import InputError
from hyplora.harness.data import TEST_SETS, load_test_set
from hyplora.harness.extraction import extract_answer, is_correct, robust_response
from hyplora.harness.prompts import eval_prompt


@dataclass(frozen=True)
class Layout:
    """How a commonsense instruction is written:
    ``prefix + question + "\\n\\n" + separator.join(f"{label}{k}: {choice}") + tail + "Answer format: " + formats``,
    where `formats` is ``"/".join(f"{label.lower()}{k}")`` over the choices k = 1..n."""

    prefix: str
    label: str
    separator: str
    tail: str


_ANSWER_LAYOUT = Layout("Please choose the correct answer to the question: ", "Answer", " ", "\n\n")
LAYOUTS = {
    "arc-e": _ANSWER_LAYOUT,
    "arc-c": _ANSWER_LAYOUT,
    "obqa": _ANSWER_LAYOUT,
    "siqa": _ANSWER_LAYOUT,
    "piqa": Layout("Please choose the correct solution to the question: ", "Solution", "\n\n", "\n\n"),
    "winogrande": Layout(
        "Please choose the correct answer to fill in the blank to complete the given sentence: ", "Option", " ", " "
    ),
}
BOOLQ_PREFIX = "Please answer the following question with true or false, question: "
BOOLQ_TAIL = "\n\nAnswer format: true/false"
BOOLQ_CHOICES = ("no", "yes")
"""lm-eval's BoolQ choices; gold `false` is index 0, `true` index 1."""


def _rebuild(layout: Layout, question: str, choices: list[str]) -> str:
    body = layout.separator.join(f"{layout.label}{k}: {choice}" for k, choice in enumerate(choices, 1))
    formats = "/".join(f"{layout.label.lower()}{k}" for k in range(1, len(choices) + 1))
    return f"{layout.prefix}{question}\n\n{body}{layout.tail}Answer format: {formats}"


def multiple_choice_doc(record: dict, name: str, index: int = 0) -> dict:
    """`{"question", "choices", "gold"}` of one commonsense record of set `name` (`gold`: index into `choices`).

    Raises `InputError` when the instruction does not follow the set's layout exactly, a choice label
    occurs more than once (the split would be ambiguous), or the answer is not one of the choice labels.
    """
    where = f"{name} record {index}"
    text, answer = record["instruction"], str(record["answer"])
    if name == "boolq":
        if not (text.startswith(BOOLQ_PREFIX) and text.endswith(BOOLQ_TAIL)) or answer not in ("false", "true"):
            raise InputError(f"{where}: not a BoolQ instruction with answer true/false")
        question = text[len(BOOLQ_PREFIX) : -len(BOOLQ_TAIL)]
        return {"question": question, "choices": list(BOOLQ_CHOICES), "gold": int(answer == "true")}
    layout = LAYOUTS[name]
    head, marker, formats = text.rpartition(f"{layout.tail}Answer format: ")
    n = formats.count("/") + 1
    if not (marker and text.startswith(layout.prefix)):
        raise InputError(f"{where}: instruction does not follow the {name} layout ({layout.prefix!r}...)")
    labels = [f"{layout.label}{k}: " for k in range(1, n + 1)]
    if any(head.count(label) != 1 for label in labels) or head.count(f"{layout.label}{n + 1}: "):
        raise InputError(f"{where}: each of {', '.join(labels)} must occur exactly once in the instruction")
    starts = [head.index(label) for label in labels]
    question = head[len(layout.prefix) : starts[0] - 2]
    ends = [start - len(layout.separator) for start in starts[1:]] + [len(head)]
    choices = [head[start + len(label) : end] for start, label, end in zip(starts, labels, ends)]
    gold_labels = [label[:-2].lower() for label in labels]
    if _rebuild(layout, question, choices) != text or answer not in gold_labels:
        raise InputError(f"{where}: instruction or answer {answer!r} does not follow the {name} layout")
    if name == "winogrande" and question.count("_") != 1:
        raise InputError(f"{where}: the sentence must hold exactly one blank '_'")
    return {"question": question, "choices": choices, "gold": gold_labels.index(answer)}


def load_test_split(name: str, **metadata):
    """lm-eval `custom_dataset`: the shipped test set `name` as a `datasets.DatasetDict` with one split, `test`.

    Commonsense sets become `multiple_choice_doc`s; math records keep their fields and gain `dataset`.
    `metadata` (the task's and `--metadata`'s keys, which lm-eval passes too) is not used.
    """
    import datasets

    test = TEST_SETS.get(name)
    if test is None:
        raise InputError(f"unknown test set {name!r}: choose one of {', '.join(TEST_SETS)}")
    records = load_test_set(name)
    if test.domain == "commonsense":
        docs = [multiple_choice_doc(record, name, i) for i, record in enumerate(records)]
    else:
        docs = [{"instruction": r["instruction"], "answer": str(r["answer"]), "dataset": name} for r in records]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def winogrande_contexts(doc: dict) -> list[str]:
    """lm-eval's WinoGrande partial scoring: the sentence up to the blank, filled with each option."""
    blank = doc["question"].index("_")
    return [doc["question"][:blank] + option for option in doc["choices"]]


def winogrande_continuation(doc: dict) -> str:
    """The rest of the sentence after the blank: the text whose log-likelihood is compared."""
    return doc["question"][doc["question"].index("_") + 1 :].strip()


def winogrande_gold(doc: dict) -> int:
    """lm-eval's `doc_to_text` for partial scoring: the index of the correct context."""
    return doc["gold"]


def math_prompt(doc: dict) -> str:
    """The LLM-Adapters evaluation prompt (`hyplora.harness.prompts.eval_prompt`) of a math record."""
    return eval_prompt(doc["instruction"])


def math_results(doc: dict, results: list[str]) -> dict:
    """`{"acc": 1.0 or 0.0}`: `hyplora eval`'s robust rules on the generation (response cut, answer, comparison)."""
    prediction = extract_answer(robust_response(results[0]), doc["dataset"], mode="robust")
    return {"acc": float(is_correct(prediction, doc["answer"], doc["dataset"]))}
