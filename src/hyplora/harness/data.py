"""Benchmark test sets and training splits by name, in the LLM-Adapters Alpaca schema.

Every record is a dict with `instruction`, `input`, `output` and `answer` (strings; test records
may also carry an int `level`). Test sets are the LLM-Adapters files; training splits are
converted to the same schema, math ones with a worked rationale ending in "The answer is N."
The data ships in `hyplora/datasets/` (provenance and licences in its README.md).

Every test set's answers have a format (`AnswerFormat`: numbers, letters A-E or label words), and
the format gives the domain (label words: commonsense; otherwise math). A file's format comes from
its gold answers (`answer_format`), the one rule that training and evaluation both use.

Training sets never contain test items: `load_train_set` drops the records listed in the source's
`overlap.txt` and, as a second check, every record whose normalised question equals the question
of a test record of the same domain, and reports the counts.

Names whose files are not shipped (HellaSwag, Math10K, Commonsense170K, ...) raise `InputError`
saying how to supply them: a JSON / JSONL file in the same schema, or `hf:<dataset>[:<split>]`
(needs the `datasets` package and network).
"""

import ast
import json
import math
import os
import random
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from hyplora.errors import InputError, first_line
from hyplora.files import looks_like_path

DATA_DIR = Path(__file__).resolve().parents[1] / "datasets"
LEVELS_ENV = "HYPLORA_LEVELS_DIR"
LEVELS_FILE = "updated_level1.json"
DOMAINS = ("math", "commonsense")
ANSWER_KINDS = ("number", "letter", "label")  # `AnswerFormat.kind`


@dataclass(frozen=True)
class AnswerFormat:
    """How a dataset's answers look: `"number"`, `"letter"` (A-E) or `"label"` (one of `labels`).

    The format decides the domain: label words are `"commonsense"`, numbers and letters `"math"`.
    """

    kind: str
    labels: tuple[str, ...] = ()

    @property
    def domain(self) -> str:
        return "commonsense" if self.kind == "label" else "math"


NUMBER, LETTER = AnswerFormat("number"), AnswerFormat("letter")
_ANSWER_N = AnswerFormat("label", tuple(f"answer{i}" for i in range(1, 6)))


@dataclass(frozen=True)
class TestSet:
    """A registered benchmark test set.

    Attributes:
        name: registry name.
        folder: upstream folder name, `<domain>/<folder>/test.json` under `DATA_DIR`.
        size: number of records.
        answer: the format of its answers (which also gives its domain).
        shipped: whether the file ships with hyplora.
    """

    name: str
    folder: str
    size: int
    answer: AnswerFormat
    shipped: bool = True

    @property
    def domain(self) -> str:
        """`"math"` or `"commonsense"`: `self.answer.domain`."""
        return self.answer.domain

    @property
    def path(self) -> Path:
        return DATA_DIR / self.domain / self.folder / "test.json"


TEST_SETS = {
    t.name: t
    for t in [
        TestSet("gsm8k", "gsm8k", 1319, NUMBER),
        TestSet("svamp", "SVAMP", 1000, NUMBER),
        TestSet("aqua", "AQuA", 254, LETTER),
        TestSet("mawps", "mawps", 238, NUMBER),
        TestSet("addsub", "AddSub", 395, NUMBER),
        TestSet("multiarith", "MultiArith", 600, NUMBER),
        TestSet("singleeq", "SingleEq", 508, NUMBER),
        TestSet("boolq", "boolq", 3270, AnswerFormat("label", ("true", "false"))),
        TestSet("piqa", "piqa", 1838, AnswerFormat("label", ("solution1", "solution2"))),
        TestSet("siqa", "social_i_qa", 1954, _ANSWER_N),
        TestSet(
            "hellaswag",
            "hellaswag",
            10042,
            AnswerFormat("label", tuple(f"ending{i}" for i in range(1, 5))),
            shipped=False,
        ),
        TestSet("winogrande", "winogrande", 1267, AnswerFormat("label", ("option1", "option2"))),
        TestSet("arc-e", "ARC-Easy", 2376, _ANSWER_N),
        TestSet("arc-c", "ARC-Challenge", 1172, _ANSWER_N),
        TestSet("obqa", "openbookqa", 500, _ANSWER_N),
    ]
}


def find_test_set(spec: str | os.PathLike) -> TestSet | None:
    """The registered test set `spec` names (its registry name or upstream folder name, any case), else None."""
    key = str(spec).lower()
    return next((t for t in TEST_SETS.values() if key in (t.name, t.folder.lower())), None)


# ----------------------------------------------------------------------------- conversions
_STEP_OPS = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a / b),
}


def format_number(value: float) -> str:
    """A number as a short string: at most 6 decimals, no trailing zeros (`22.0` -> `"22"`)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def worked_steps(expression: str) -> tuple[list[str], float]:
    """Evaluate an arithmetic expression innermost operation first, one line per operation.

    `"((22.0-14.0)/4.0)"` -> `(["22 - 14 = 8", "8 / 4 = 2"], 2.0)`. Only numbers, `+ - * /`,
    unary minus and parentheses are allowed (parsed with `ast`, never `eval`).

    Raises:
        ValueError: anything else in the expression, or a division by zero.
    """
    steps = []

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _STEP_OPS:
            symbol, apply = _STEP_OPS[type(node.op)]
            left, right = value(node.left), value(node.right)
            if symbol == "/" and right == 0:
                raise ValueError("division by zero")
            result = apply(left, right)
            steps.append(f"{format_number(left)} {symbol} {format_number(right)} = {format_number(result)}")
            return result
        raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from err
    return steps, value(tree.body)


def equation_rationale(expression: str, answer: float, equation: str) -> str:
    """Worked steps of `expression` ending in "The answer is N.", or the bare equation when the
    steps do not reproduce `answer` (e.g. ASDiv-A's remainder problems, `158/12=13 r2` -> 14)."""
    try:
        steps, result = worked_steps(expression)
    except ValueError:
        steps, result = [], float("nan")
    if not steps or abs(result - answer) > 1e-3 * max(1.0, abs(answer)):
        steps = [f"The equation is {equation.strip()}."]
    return "\n".join(steps) + f"\nThe answer is {format_number(answer)}."


def _record(instruction: str, output: str, answer: str, input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output, "answer": answer}


def _from_gsm8k(raw: dict) -> dict:
    """GSM8K: drop `<<...>>` calculator marks, turn the final `#### N` into "The answer is N."."""
    rationale, _, final = raw["answer"].rpartition("####")
    number = final.strip().replace(",", "")
    rationale = re.sub(r"<<[^>]*>>", "", rationale).strip()
    return _record(raw["question"], f"{rationale}\nThe answer is {number}.", number)


def _from_mawps(raw: dict) -> dict:
    """MAWPS (MWPToolkit): steps of `X=<expression>`; the text stays tokenized, like math/mawps/test.json."""
    answer = float(raw["ans"])
    equation = raw["equation"]
    expression = equation.split("=", 1)[1] if re.match(r"^[xX]=[^=]+$", equation) else ""
    return _record(raw["original_text"], equation_rationale(expression, answer, equation), format_number(answer))


def _from_aqua(raw: dict) -> dict:
    """AQuA-RAT: question + " Answer Choices: (A) ... (E) ..." as in math/AQuA/test.json; rationale + "The answer is X."."""
    choices = " ".join(f"({option[0]}) {option[2:]}" for option in raw["options"])
    output = f"{raw['rationale'].strip()}\nThe answer is {raw['correct']}."
    return _record(f"{raw['question']} Answer Choices: {choices}", output, raw["correct"])


def _from_asdiv(raw: dict) -> dict:
    """ASDiv-A (MWPToolkit): `Body + " " + Question` as in SVAMP; steps of the `Formula`'s left side."""
    number = re.match(r"\s*(-?[\d,]*\.?\d+)", raw["Answer"])
    if number is None:
        raise ValueError(f"no number at the start of Answer {raw['Answer']!r}")
    answer = float(number.group(1).replace(",", ""))
    formula = raw["Formula"]
    output = equation_rationale(formula.split("=", 1)[0], answer, formula)
    return _record(f"{raw['Body']} {raw['Question']}", output, format_number(answer))


def _from_template(raw: dict) -> dict:
    """LLM-Adapters files already in the schema (`output` = "the correct answer is <label>")."""
    return _record(raw["instruction"], raw["output"], str(raw["answer"]), raw.get("input", ""))


# ----------------------------------------------------------------------------- training registry
ASDIV_NOTE = "asdiv-a is ASDiv-A (Miao et al. 2020), licensed CC BY-NC 4.0: non-commercial use only, with attribution"


@dataclass(frozen=True)
class TrainSource:
    """A registered training split.

    Attributes:
        name: registry name.
        domain: `"math"` or `"commonsense"`.
        path: file under `DATA_DIR/train/`; its folder may hold an `overlap.txt`.
        fields: raw fields each record must have.
        convert: raw record -> Alpaca record.
        note: printed whenever the split is used (licence restrictions).
    """

    name: str
    domain: str
    path: str
    fields: tuple[str, ...]
    convert: Callable[[dict], dict]
    note: str = ""


TRAIN_SETS = {
    s.name: s
    for s in [
        TrainSource("gsm8k-train", "math", "gsm8k/train.jsonl", ("question", "answer"), _from_gsm8k),
        TrainSource("mawps-train", "math", "mawps/trainset.json", ("original_text", "equation", "ans"), _from_mawps),
        TrainSource("aqua-dev", "math", "AQuA/dev.json", ("question", "options", "rationale", "correct"), _from_aqua),
        TrainSource(
            "asdiv-a",
            "math",
            "asdiv-a/trainset.json",
            ("Body", "Question", "Answer", "Formula"),
            _from_asdiv,
            note=ASDIV_NOTE,
        ),
        TrainSource(
            "arc-e-train", "commonsense", "ARC-Easy/train.json", ("instruction", "output", "answer"), _from_template
        ),
        TrainSource(
            "arc-c-train",
            "commonsense",
            "ARC-Challenge/train.json",
            ("instruction", "output", "answer"),
            _from_template,
        ),
        TrainSource(
            "boolq-train", "commonsense", "boolq/train.json", ("instruction", "output", "answer"), _from_template
        ),
        TrainSource(
            "obqa-train", "commonsense", "openbookqa/train.json", ("instruction", "output", "answer"), _from_template
        ),
    ]
}
MIXTURES = {
    # the sources of LLM-Adapters' Math10K (GSM8K, MAWPS, AQuA), standing in for it; no NC data
    "math": ("gsm8k-train", "mawps-train", "aqua-dev"),
    "commonsense": ("arc-e-train", "arc-c-train", "boolq-train", "obqa-train"),
}
_LLM_ADAPTERS = "github.com/AGI-Edgerunners/LLM-Adapters"
NOT_SHIPPED = {
    "hellaswag": f"HellaSwag validation in the LLM-Adapters template ({_LLM_ADAPTERS} dataset/hellaswag/test.json, "
    "git blob 183c4920415f83ba4b793c4873a33e7e10bd1be5)",
    "piqa-train": f"PIQA train in the LLM-Adapters template ({_LLM_ADAPTERS} dataset/piqa/train.json)",
    "siqa-train": f"Social IQa train in the LLM-Adapters template ({_LLM_ADAPTERS} dataset/social_i_qa/train.json)",
    "winogrande-train": f"WinoGrande train in the LLM-Adapters template ({_LLM_ADAPTERS} dataset/winogrande/train.json)",
    "hellaswag-train": f"HellaSwag train in the LLM-Adapters template ({_LLM_ADAPTERS} dataset/hellaswag/train.json)",
    "math10k": f"Math10K ({_LLM_ADAPTERS} ft-training_set/math_10k.json, git blob 27dba77d6ed80aa118d78fbafa5cecd651f6d463); "
    "the shipped stand-in is the 'math' mixture",
    "math50k": f"Math50K ({_LLM_ADAPTERS} ft-training_set/math_50k.json, git blob 61fcf3e08fc90a922be320441019d6022e25f5d0)",
    "commonsense15k": f"Commonsense15K ({_LLM_ADAPTERS} ft-training_set/commonsense_15k.json)",
    "commonsense170k": f"Commonsense170K ({_LLM_ADAPTERS} ft-training_set/commonsense_170k.json, "
    "git blob 529e426b33d4cdb1d0c4a275a1a7245ad081fd91); the shipped stand-in is the 'commonsense' mixture",
}


def domain(name: str) -> str:
    """`"math"` or `"commonsense"` for a registered test set, training split or mixture name.

    A file's domain is `answer_format(spec, records).domain`.
    """
    test = find_test_set(name)
    if test is not None:
        return test.domain
    key = name.lower()
    if key in TRAIN_SETS:
        return TRAIN_SETS[key].domain
    if key in MIXTURES:
        return key
    if key in NOT_SHIPPED:
        return "math" if key.startswith("math") else "commonsense"
    raise InputError(f"unknown dataset name {name!r}: known names are {', '.join(_known_names())}")


# ----------------------------------------------------------------------------- reading files
def read_records(path: str | os.PathLike) -> list[dict]:
    """Read a JSON array of objects or a JSON-lines file (one object per line).

    Raises:
        InputError: missing, unreadable, empty or malformed file, or a record that is not an object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read: {err}") from err
    if not text.strip():
        raise InputError(f"{path}: empty file")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{path}: record {_failing_array_index(text)}: malformed JSON at line {err.lineno}, "
                f"column {err.colno}: {err.msg}"
            ) from err
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            records = _read_json_lines(path, text)
        if isinstance(records, dict):
            if "\n" in text.strip():
                raise InputError(f"{path}: a single JSON object; expected an array of records or one record per line")
            records = [records]
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    if not records:
        raise InputError(f"{path}: no records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}: record {index} is not a JSON object")
    return records


def _failing_array_index(text: str) -> int:
    """Index of the first element of a JSON array text that does not parse."""
    decoder = json.JSONDecoder()
    position, index = text.index("[") + 1, 0
    while True:
        position = len(text) - len(text[position:].lstrip())
        if text.startswith("]", position):
            return index
        try:
            _, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return index
        position = len(text) - len(text[position:].lstrip())
        if not text.startswith(",", position):
            return index if not text.startswith("]", position) else index + 1
        position, index = position + 1, index + 1


def _read_json_lines(path: Path, text: str) -> list:
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(
                    f"{path}: record {len(records)} (line {line_number}): malformed JSON: {err.msg}"
                ) from err
    return records


def _check_fields(records: list[dict], required: tuple[str, ...], label: str) -> None:
    for index, record in enumerate(records):
        for name in required:
            if name not in record:
                raise InputError(f"{label}: record {index} has no {name!r} field")
            if record[name] is None:
                raise InputError(f"{label}: record {index}: field {name!r} is null")


def _schema_records(records: list[dict], required: tuple[str, ...], label: str) -> list[dict]:
    """Validate records already in the Alpaca schema and normalise them to string fields (+ int `level`)."""
    _check_fields(records, required, label)
    out = []
    for index, raw in enumerate(records):
        record = {}
        for name in ("instruction", "input", "output", "answer"):
            value = raw.get(name, "")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise InputError(
                    f"{label}: record {index}: field {name!r} must be a string, got {type(value).__name__}"
                )
            record[name] = value if isinstance(value, str) else str(value)
        if not record["instruction"].strip():
            raise InputError(f"{label}: record {index}: empty 'instruction'")
        if "level" in raw:
            if isinstance(raw["level"], bool) or not isinstance(raw["level"], int):
                raise InputError(f"{label}: record {index}: field 'level' must be an integer")
            record["level"] = raw["level"]
        out.append(record)
    return out


def _read_hub(spec: str, default_split: str) -> list[dict]:
    """Records of `hf:<dataset>[:<split>]` through the `datasets` package (imported only here)."""
    dataset_id, _, split = spec[len("hf:") :].partition(":")
    if not dataset_id:
        raise InputError(f"{spec!r}: write a Hugging Face dataset as hf:<owner>/<name>[:<split>]")
    try:
        import datasets
    except ImportError as err:
        raise InputError(
            f"{spec}: reading a Hugging Face dataset needs the `datasets` package "
            "(pip install 'hyplora[hub]'); or pass a JSON/JSONL file in the same schema"
        ) from err
    from hyplora.harness.base_models import hub_reachable

    if not hub_reachable():
        raise InputError(
            f"{spec}: the Hugging Face hub is unreachable (offline); pass a local JSON/JSONL file instead"
        )
    try:
        dataset = datasets.load_dataset(dataset_id, split=split or default_split)
    except Exception as err:  # datasets raises many unrelated types (FileNotFoundError, ValueError, HTTP errors)
        raise InputError(f"{spec}: cannot load: {first_line(err)}") from err
    return [dict(row) for row in dataset]


def _not_shipped(name: str) -> InputError:
    return InputError(
        f"{name!r} is not shipped with hyplora ({NOT_SHIPPED[name]}): pass the path of a JSON or JSONL file with "
        f"instruction/input/output/answer records, or 'hf:<dataset>[:<split>]' with the `datasets` package when online"
    )


def _known_names() -> list[str]:
    return sorted({*TEST_SETS, *TRAIN_SETS, *MIXTURES, *NOT_SHIPPED})


# ----------------------------------------------------------------------------- test sets
def load_test_set(
    name_or_path: str | os.PathLike, limit: int | None = None, *, levels_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Load a benchmark test set by name, from a JSON/JSONL file, or from `hf:<dataset>[:<split>]`.

    Args:
        name_or_path: a `TEST_SETS` name (upstream folder names such as `SVAMP` also work), a file
            path, or `hf:<dataset>[:<split>]` (split `test` by default).
        limit: keep the first `limit` records (the file order, which is fixed).
        levels_dir: a folder laid out like LLM-Adapters' `dataset/` (or holding a `math/` folder of
            that layout) with HypLLM's `<Name>/updated_level1.json` files; their `level` (0/1/2) is
            added to the records of the sets that have one (AQuA, SVAMP, GSM8K, MAWPS). Defaults to
            `$HYPLORA_LEVELS_DIR`. These annotations are not redistributable, so they do not ship.

    Returns:
        Records with `instruction`, `input`, `output`, `answer` (and `level` where known).

    Raises:
        InputError: unknown or unshipped name, bad file, record missing `instruction`/`answer`,
            levels file not matching the test set.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    spec = str(name_or_path)
    test = find_test_set(spec)
    if test is not None:
        records = _load_registered_test(test.name)
        levels_dir = levels_dir if levels_dir is not None else os.environ.get(LEVELS_ENV) or None
        if levels_dir is not None:
            records = _with_levels(records, test, Path(levels_dir))
    elif spec.startswith("hf:"):
        records = _schema_records(_read_hub(spec, "test"), ("instruction", "answer"), spec)
    elif looks_like_path(spec):
        records = _schema_records(read_records(spec), ("instruction", "answer"), spec)
    else:
        raise InputError(f"unknown test set {spec!r}: choose one of {', '.join(TEST_SETS)}, or pass a JSON/JSONL file")
    return records[:limit] if limit is not None else records


def _load_registered_test(name: str) -> list[dict]:
    test = TEST_SETS[name]
    if not test.shipped:
        raise _not_shipped(name)
    return [dict(record) for record in _cached_test_records(name)]


@cache
def _cached_test_records(name: str) -> tuple[dict, ...]:
    path = TEST_SETS[name].path
    return tuple(_schema_records(read_records(path), ("instruction", "input", "output", "answer"), str(path)))


def _with_levels(records: list[dict], test: TestSet, levels_dir: Path) -> list[dict]:
    if not levels_dir.is_dir():
        raise InputError(f"{levels_dir}: levels folder not found (option levels_dir / ${LEVELS_ENV})")
    candidates = [levels_dir / test.folder / LEVELS_FILE, levels_dir / test.domain / test.folder / LEVELS_FILE]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return records
    levels = read_records(path)
    if len(levels) != len(records):
        raise InputError(f"{path}: {len(levels)} records, but {test.name} has {len(records)}")
    for index, (record, annotated) in enumerate(zip(records, levels)):
        if annotated.get("instruction") != record["instruction"]:
            raise InputError(f"{path}: record {index} is not {test.name} record {index} (instruction differs)")
        level = annotated.get("level")
        if isinstance(level, bool) or not isinstance(level, int):
            raise InputError(f"{path}: record {index} has no integer 'level' field")
        record["level"] = level
    return records


# ----------------------------------------------------------------------------- overlap with test sets
def question_key(instruction: str, domain: str) -> str:
    """The normalised question used to find training records that repeat a test question.

    The question is the instruction without AQuA's " Answer Choices: ..." (math), or the stem of
    an LLM-Adapters commonsense template (text after the first ": " of the first paragraph).
    Normalisation (as `overlap.txt`'s "alnum" match): lowercase, `12.0` -> `12`, keep only `a-z0-9`.
    """
    if domain == "commonsense":
        head = instruction.partition("\n\n")[0]
        text = head.split(": ", 1)[1] if ": " in head else head
    else:
        text = instruction.split(" Answer Choices:")[0]
    text = re.sub(r"(\d+)\.0+\b", r"\1", text.lower())
    return re.sub(r"[^a-z0-9]", "", text)


@cache
def _test_question_keys(name: str) -> frozenset[str]:
    test = TEST_SETS[name]
    return frozenset(question_key(r["instruction"], test.domain) for r in _cached_test_records(name))


def _listed_overlaps(source: TrainSource, protected: set[str]) -> set[int]:
    """Indices that the source's `overlap.txt` lists against one of the `protected` test sets."""
    train_file = DATA_DIR / "train" / source.path
    overlap_file = train_file.parent / "overlap.txt"
    if not overlap_file.is_file():
        return set()
    folders = {f"{TEST_SETS[name].domain}/{TEST_SETS[name].folder}/test.json" for name in protected}
    lines = [
        line for line in overlap_file.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
    ]
    indices = set()
    for line in lines[1:]:  # lines[0] is the column header
        file_name, index, test_file = line.split("\t")[:3]
        if file_name == train_file.name and test_file in folders:
            indices.add(int(index))
    return indices


# ----------------------------------------------------------------------------- training sets
@dataclass
class TrainSet:
    """Training records in the Alpaca schema, with the overlap report.

    Attributes:
        records: `instruction`, `input`, `output`, `answer` dicts.
        dropped: per source, the number of records removed because they repeat a test question.
        dropped_by_text: per source, how many of those the question-text check found beyond `overlap.txt`.
        kept: per source, the number of records kept (before `limit`).
        domains: per source, `"math"` or `"commonsense"` (a file's is `answer_format(file, records).domain`).
        notes: licence notes of the sources used.
    """

    records: list[dict]
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_by_text: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line per source: kept and dropped counts."""
        lines = [f"{len(self.records)} training records"]
        for source, kept in self.kept.items():
            dropped = self.dropped.get(source, 0)
            line = f"  {source}: kept {kept}, dropped {dropped} overlapping test questions"
            if dropped:
                by_text = self.dropped_by_text.get(source, 0)
                line += f" ({dropped - by_text} listed in overlap.txt, {by_text} more by question text)"
            lines.append(line)
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def load_train_set(
    name_or_path: str | os.PathLike,
    *,
    limit: int | None = None,
    seed: int = 0,
    against: list[str] | None = None,
    domain: str | None = None,
) -> TrainSet:
    """Load training records by name, mixture, comma-separated list, file or `hf:<dataset>[:<split>]`.

    Args:
        name_or_path: a `TRAIN_SETS` name, a `MIXTURES` name (`math`, `commonsense`), several of
            them joined by commas, a JSON/JSONL file in the Alpaca schema, or
            `hf:<dataset>[:<split>]` (split `train` by default).
        limit: keep the first `limit` records (after the seeded shuffle of a multi-source mix).
        seed: shuffles the records of a multi-source mix (one source keeps its file order).
        against: test sets whose questions must not appear; default all test sets of the
            source's domain.
        domain: domain of a file or `hf:` source (`math`/`commonsense`); inferred from the
            answers when omitted (label words such as `true`, `answer1` mean commonsense).

    Returns:
        A `TrainSet` with the records and the dropped counts.

    Raises:
        InputError: unknown or unshipped name, bad file, record missing `instruction`/`output`.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    protected_names = None if against is None else {_test_name(name, "`against`") for name in against}
    result = TrainSet(records=[])
    parts = _expand_train_spec(str(name_or_path))
    for part in parts:
        source, records, source_domain = _train_source_records(part, domain)
        protected = {
            name
            for name, test in TEST_SETS.items()
            if test.domain == source_domain and test.shipped and (protected_names is None or name in protected_names)
        }
        listed = _listed_overlaps(source, protected) if source is not None else set()
        kept, by_text = _drop_test_questions(records, source_domain, protected, listed)
        result.records.extend(kept)
        result.kept[part] = len(kept)
        result.domains[part] = source_domain
        result.dropped[part] = len(records) - len(kept)
        result.dropped_by_text[part] = by_text
        if source is not None and source.note and source.note not in result.notes:
            result.notes.append(source.note)
            warnings.warn(source.note, UserWarning, stacklevel=2)
    if len(parts) > 1:
        random.Random(seed).shuffle(result.records)
    if limit is not None:
        result.records = result.records[:limit]
    return result


def _test_name(name: str, where: str) -> str:
    test = find_test_set(name)
    if test is None:
        raise InputError(f"unknown test set {name!r} in {where}: choose among {', '.join(TEST_SETS)}")
    return test.name


def _drop_test_questions(records: list[dict], domain: str, protected: set[str], listed: set[int]):
    """(records not listed and whose question is in no `protected` test set, count dropped by question only)."""
    test_keys = frozenset().union(*(_test_question_keys(name) for name in protected))
    kept, by_text = [], 0
    for index, record in enumerate(records):
        if index in listed:
            continue
        key = question_key(record["instruction"], domain)
        if key and key in test_keys:
            by_text += 1
        else:
            kept.append(record)
    return kept, by_text


def _expand_train_spec(spec: str) -> list[str]:
    """`"math,asdiv-a"` -> `["gsm8k-train", "mawps-train", "aqua-dev", "asdiv-a"]`; a file or `hf:` spec stays whole."""
    parts = [p.strip().lower() for p in spec.split(",")]
    known = {*TRAIN_SETS, *MIXTURES, *NOT_SHIPPED}
    if spec.startswith("hf:") or (looks_like_path(spec) and not all(p in known for p in parts)):
        return [spec]
    expanded = []
    for part in parts:
        expanded += [name for name in MIXTURES.get(part, (part,)) if name not in expanded]
    return expanded


def _train_source_records(part: str, domain_name: str | None) -> tuple[TrainSource | None, list[dict], str]:
    """(registry entry or None, Alpaca records, domain) of one source: a registered name, a file or `hf:`."""
    if part in TRAIN_SETS:
        source = TRAIN_SETS[part]
        path = DATA_DIR / "train" / source.path
        raw = read_records(path)
        _check_fields(raw, source.fields, str(path))
        records = []
        for index, item in enumerate(raw):
            try:
                records.append(source.convert(item))
            except (ValueError, TypeError, IndexError) as err:
                raise InputError(f"{path}: record {index}: cannot convert: {err}") from err
        return source, records, source.domain
    if part in NOT_SHIPPED:
        raise _not_shipped(part)
    if part.startswith("hf:"):
        records = _schema_records(_read_hub(part, "train"), ("instruction", "output"), part)
    elif looks_like_path(part):
        records = _schema_records(read_records(part), ("instruction", "output"), part)
    else:
        raise InputError(
            f"unknown training set {part!r}: choose among {', '.join([*TRAIN_SETS, *MIXTURES])}, "
            "or pass a JSON/JSONL file"
        )
    if domain_name is not None and domain_name not in DOMAINS:
        raise InputError(f"unknown domain {domain_name!r}: choose math or commonsense")
    return None, records, domain_name or answer_format(part, records).domain


# ----------------------------------------------------------------------------- answer formats
_ANSWER_CUE = re.compile(r"answer is\s*:?", re.IGNORECASE)


def gold_answer(record: dict, label: str, index: int) -> str:
    """A record's gold answer: its non-empty `answer` field, else what its `output` states after the last "answer is"
    (LLM-Adapters' "The answer is 8." and "the correct answer is true"), without a final period."""
    answer = str(record.get("answer", "")).strip()
    if answer:
        return answer
    cues = list(_ANSWER_CUE.finditer(str(record.get("output", ""))))
    stated = record["output"][cues[-1].end() :].strip().removesuffix(".").strip() if cues else ""
    if not stated:
        raise InputError(
            f"{label}: record {index} has no 'answer' field and its output states no 'The answer is ...': "
            "add an 'answer' field so that its answer format (number, letter or label word) can be inferred"
        )
    return stated


def answer_format(spec: str | os.PathLike, records: list[dict] = (), kind: str | None = None) -> AnswerFormat:
    """The answer format of a registered test set, else the one `records`' gold answers (`gold_answer`) show.

    Numbers (all gold answers parse as finite floats) and single letters A-E are math; answers none of
    which is a number make a label-word set of the distinct answers (commonsense). A file whose answers
    are partly numbers is ambiguous (one "four" or "1/2" among numbers): `InputError`, unless `kind`
    (one of `ANSWER_KINDS`) says the format, and then every gold answer must fit it. Training and
    evaluation both take a file's domain from here (`AnswerFormat.domain`), so they cannot disagree.
    """
    if kind is not None and kind not in ANSWER_KINDS:
        raise InputError(f"answer format {kind!r} is unknown: choose one of {', '.join(ANSWER_KINDS)}")
    test = find_test_set(spec)
    if test is not None:
        if kind is not None and kind != test.answer.kind:
            raise InputError(f"{test.name}: its answers are {test.answer.kind}s, not {kind}s (answer format)")
        return test.answer
    if not records:
        raise InputError(
            f"unknown dataset {str(spec)!r}: not a registered test set, and no records to infer its answer format from"
        )
    golds = [gold_answer(record, str(spec), index) for index, record in enumerate(records)]
    numbers = [_is_number(gold) for gold in golds]
    if kind is None and all(numbers):
        kind = "number"
    elif kind is None and all(re.fullmatch(r"[A-E]", gold) for gold in golds):
        kind = "letter"
    elif kind is None and any(numbers):
        odd = numbers.index(False)
        raise InputError(
            f"{spec}: ambiguous answer format: {sum(numbers)} of {len(golds)} gold answers are numbers but record "
            f"{odd}'s is {golds[odd]!r}; fix the record, or state the format (hyplora eval --answer-format, "
            "hyplora train --domain)"
        )
    fits = {"number": _is_number, "letter": lambda gold: re.fullmatch(r"[A-E]", gold) is not None}
    if kind in fits:
        odd = next((index for index, gold in enumerate(golds) if not fits[kind](gold)), None)
        if odd is not None:
            raise InputError(f"{spec}: record {odd}: gold answer {golds[odd]!r} is not a {kind}")
        return NUMBER if kind == "number" else LETTER
    return AnswerFormat("label", tuple(sorted(set(golds), key=lambda label: (-len(label), label))))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def split_validation(records: list[dict], n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministically carve `n` validation records out of `records`.

    Returns:
        `(train, validation)`, both in the original order; the same `seed` gives the same split.
    """
    if not 0 <= n < len(records) or isinstance(n, bool):
        raise InputError(
            f"validation size must be between 0 and {len(records) - 1} (one record must stay for training), got {n}"
        )
    chosen = set(random.Random(seed).sample(range(len(records)), n))
    train = [r for i, r in enumerate(records) if i not in chosen]
    validation = [r for i, r in enumerate(records) if i in chosen]
    return train, validation
