"""Test-set and training-set loading: registry, conversions, overlap removal, levels, bad input."""

import json
import sys
import types

import pytest

from hyplora.errors import InputError
from hyplora.harness import data
from hyplora.harness.data import (
    DATA_DIR,
    MIXTURES,
    NOT_SHIPPED,
    TEST_SETS,
    TRAIN_SETS,
    AnswerFormat,
    answer_format,
    domain,
    equation_rationale,
    load_test_set,
    load_train_set,
    question_key,
    split_validation,
    worked_steps,
)
from hyplora.harness.extraction import extract_answer

SHIPPED_TESTS = [name for name, test in TEST_SETS.items() if test.shipped]
MATH_SOURCES = [name for name, source in TRAIN_SETS.items() if source.domain == "math"]


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", SHIPPED_TESTS)
def test_every_shipped_test_set_loads_with_its_registered_size(name):
    records = load_test_set(name)
    assert len(records) == TEST_SETS[name].size
    for record in records:
        assert set(record) == {"instruction", "input", "output", "answer"}
        assert all(isinstance(value, str) for value in record.values())
        assert record["instruction"].strip() and record["answer"].strip() and record["input"] == ""


def test_upstream_folder_names_limit_and_fresh_copies():
    assert load_test_set("SVAMP", limit=3) == load_test_set("svamp")[:3]
    assert load_test_set("ARC-Easy", limit=2) == load_test_set("arc-e", limit=2)
    first = load_test_set("gsm8k", limit=1)
    first[0]["answer"] = "changed"
    assert load_test_set("gsm8k", limit=1)[0]["answer"] != "changed"
    assert load_test_set("aqua", limit=0) == []


def test_domains_of_names():
    assert {domain(name) for name in ("gsm8k", "svamp", "math", "asdiv-a", "math10k")} == {"math"}
    assert {domain(name) for name in ("boolq", "ARC-Challenge", "commonsense", "obqa-train", "hellaswag")} == {
        "commonsense"
    }
    assert "unknown dataset name" in one_line_error(domain, "mnist")


@pytest.mark.parametrize("name", sorted(NOT_SHIPPED))
def test_names_without_files_say_how_to_supply_them(name):
    loader = load_test_set if name == "hellaswag" else load_train_set
    message = one_line_error(loader, name)
    assert "not shipped" in message and "JSON" in message and "hf:" in message


def test_unknown_names_are_rejected():
    assert "unknown test set" in one_line_error(load_test_set, "mnist")
    assert "unknown training set" in one_line_error(load_train_set, "mnist-train")
    assert "against" in one_line_error(load_train_set, "gsm8k-train", against=["mnist"])


# ----------------------------------------------------------------------------- bad files
BAD_FILES = {
    "empty.json": ("", "empty file"),
    "blank.jsonl": ("\n  \n", "empty file"),
    "no_records.json": ("[]", "no records"),
    "broken_array.json": (
        '[{"instruction": "a", "answer": "1"},\n {"instruction": "b", "answer": }]',
        "record 1: malformed JSON",
    ),
    "broken_lines.jsonl": (
        '{"instruction": "a", "answer": "1"}\n{"instruction": "b"\n',
        "record 1 (line 2): malformed JSON",
    ),
    "not_objects.json": ('[{"instruction": "a", "answer": "1"}, 7]', "record 1 is not a JSON object"),
    "single_object.json": ('{\n "instruction": "a",\n "answer": "1"\n}', "a single JSON object"),
    "missing_answer.json": (
        '[{"instruction": "a", "answer": "1"}, {"instruction": "b"}]',
        "record 1 has no 'answer' field",
    ),
    "list_field.json": ('[{"instruction": ["a"], "answer": "1"}]', "record 0: field 'instruction' must be a string"),
    "blank_instruction.jsonl": ('{"instruction": " ", "answer": "1"}', "record 0: empty 'instruction'"),
    "scalar.json": ("42", "expected a JSON array"),
}


@pytest.mark.parametrize("file_name", sorted(BAD_FILES))
def test_bad_test_files_name_the_file_and_record(tmp_path, file_name):
    text, expected = BAD_FILES[file_name]
    path = tmp_path / file_name
    path.write_text(text)
    message = one_line_error(load_test_set, str(path))
    assert str(path) in message and expected in message


def test_bad_training_files_name_the_file_and_record(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "answer": "d"}\n')
    message = one_line_error(load_train_set, str(path))
    assert str(path) in message and "record 1 has no 'output' field" in message
    assert "no such file" in one_line_error(load_train_set, str(tmp_path / "missing.json"))


def test_user_files_in_json_and_json_lines(tmp_path):
    records = [
        {"instruction": "What is 1+1?", "answer": 2},
        {"instruction": "And 2+2?", "input": "", "output": "", "answer": "4"},
    ]
    array, lines = tmp_path / "set.json", tmp_path / "set.jsonl"
    array.write_text(json.dumps(records))
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    expected = [
        {"instruction": "What is 1+1?", "input": "", "output": "", "answer": "2"},
        {"instruction": "And 2+2?", "input": "", "output": "", "answer": "4"},
    ]
    assert load_test_set(str(array)) == load_test_set(lines) == expected


def test_hub_datasets_need_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    assert "`datasets` package" in one_line_error(load_test_set, "hf:openai/gsm8k")
    assert "`datasets` package" in one_line_error(load_train_set, "hf:openai/gsm8k:train")


def test_hub_datasets_offline_fail_fast(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    monkeypatch.setattr("hyplora.harness.base_models.hub_reachable", lambda: False)
    assert "unreachable" in one_line_error(load_test_set, "hf:openai/gsm8k")


# ----------------------------------------------------------------------------- levels (HypLLM)
def write_levels(folder, name, records, levels):
    path = folder / TEST_SETS[name].folder / data.LEVELS_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{**r, "level": level} for r, level in zip(records, levels)], indent=4))
    return path


def test_levels_come_from_a_user_folder_or_the_environment(tmp_path, monkeypatch):
    svamp = load_test_set("svamp")
    levels = [i % 3 for i in range(len(svamp))]
    write_levels(tmp_path, "svamp", svamp, levels)
    with_levels = load_test_set("svamp", levels_dir=tmp_path)
    assert [r["level"] for r in with_levels] == levels
    assert [{k: v for k, v in r.items() if k != "level"} for r in with_levels] == svamp
    assert "level" not in load_test_set("addsub", levels_dir=tmp_path)[0]  # no levels file for AddSub
    monkeypatch.setenv(data.LEVELS_ENV, str(tmp_path))
    assert load_test_set("svamp", limit=4) == with_levels[:4]


def test_levels_files_must_match_the_test_set(tmp_path):
    mawps = load_test_set("mawps")
    shuffled = mawps[1:] + mawps[:1]
    path = write_levels(tmp_path, "mawps", shuffled, [0] * len(mawps))
    message = one_line_error(load_test_set, "mawps", levels_dir=tmp_path)
    assert str(path) in message and "record 0" in message
    assert "levels folder not found" in one_line_error(load_test_set, "mawps", levels_dir=tmp_path / "nope")
    short = tmp_path / "short"
    write_levels(short, "mawps", mawps[:5], [1] * 5)
    assert "5 records" in one_line_error(load_test_set, "mawps", levels_dir=short)


# ----------------------------------------------------------------------------- conversions
def test_worked_steps_follow_the_expression_tree():
    assert worked_steps("((22.0-14.0)/4.0)") == (["22 - 14 = 8", "8 / 4 = 2"], 2.0)
    assert worked_steps("-3*(1.5+0.5)") == (["1.5 + 0.5 = 2", "-3 * 2 = -6"], -6.0)
    for bad in ("__import__('os').system('true')", "2**8", "1/(2-2)", "x+1", "3 r2"):
        with pytest.raises(ValueError):
            worked_steps(bad)


def test_equation_rationale_falls_back_to_the_equation_when_steps_disagree():
    assert equation_rationale("5+7", 12.0, "5+7=12") == "5 + 7 = 12\nThe answer is 12."
    assert equation_rationale("158/12", 14.0, "158/12=13 r2") == "The equation is 158/12=13 r2.\nThe answer is 14."


def test_gsm8k_rationales_lose_calculator_marks_and_end_in_the_answer():
    records = load_train_set("gsm8k-train").records
    assert records[0] == {
        "instruction": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "input": "",
        "output": "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is 72.",
        "answer": "72",
    }
    assert not any("<<" in r["output"] or "####" in r["output"] for r in records)
    assert all("," not in r["answer"] for r in records)


def test_mawps_aqua_and_asdiv_conversions():
    mawps = load_train_set("mawps-train", against=[]).records
    assert mawps[0]["output"] == "22 - 14 = 8\n8 / 4 = 2\nThe answer is 2."
    assert mawps[0]["answer"] == "2" and mawps[0]["instruction"].startswith("A waiter had 22 customers")
    aqua = load_train_set("aqua-dev").records[0]
    assert aqua["instruction"].endswith("Answer Choices: (A) 32400 (B) 6000 (C) 600 (D) 60000 (E) 10")
    assert aqua["output"].startswith("To calculate") and aqua["output"].endswith("\nThe answer is A.")
    assert aqua["answer"] == "A"
    asdiv = load_train_set("asdiv-a", against=[]).records[0]
    assert asdiv == {
        "instruction": "Cody had a bag of marbles. Later he gave five to his brother. Now Cody has seven "
        "marbles. How many marbles did Cody have to start with?",
        "input": "",
        "output": "5 + 7 = 12\nThe answer is 12.",
        "answer": "12",
    }


@pytest.mark.parametrize("name", MATH_SOURCES)
def test_math_rationales_end_in_the_answer(name):
    for record in load_train_set(name).records:
        assert record["output"].endswith(f"The answer is {record['answer']}.")
        assert set(record) == {"instruction", "input", "output", "answer"} and record["instruction"].strip()


def test_asdiv_a_carries_its_non_commercial_licence_note():
    with pytest.warns(UserWarning, match="CC BY-NC 4.0"):
        train_set = load_train_set("math,asdiv-a")
    assert any("CC BY-NC 4.0" in note for note in train_set.notes)
    assert "CC BY-NC 4.0" in train_set.summary()
    assert not load_train_set("math").notes


# ----------------------------------------------------------------------------- overlap with test sets
def overlap_indices(folder: str, file_name: str, tests=None) -> set[int]:
    lines = [
        line.split("\t")
        for line in (DATA_DIR / "train" / folder / "overlap.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ][1:]
    return {int(row[1]) for row in lines if row[0] == file_name and (tests is None or row[2] in tests)}


@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_mixtures_contain_no_test_question_of_their_domain(mixture):
    train_set = load_train_set(mixture)
    test_keys = {
        question_key(r["instruction"], mixture)
        for name in TEST_SETS
        if TEST_SETS[name].domain == mixture and TEST_SETS[name].shipped
        for r in load_test_set(name)
    }
    train_keys = {question_key(r["instruction"], mixture) for r in train_set.records}
    assert train_keys and not train_keys & test_keys
    assert set(train_set.kept) == set(MIXTURES[mixture])
    assert len(train_set.records) == sum(train_set.kept.values())


def test_drop_counts_follow_overlap_txt():
    mawps = load_train_set("mawps-train")
    listed = overlap_indices("mawps", "trainset.json")
    assert mawps.dropped == {"mawps-train": len(listed)} and len(listed) > 1000
    assert len(mawps.records) == 1898 - len(listed)
    only_mawps = load_train_set("mawps-train", against=["mawps"])
    assert only_mawps.dropped["mawps-train"] == len(
        overlap_indices("mawps", "trainset.json", {"math/mawps/test.json"})
    )
    assert load_train_set("mawps-train", against=[]).dropped["mawps-train"] == 0
    arc = load_train_set("arc-e-train")
    assert arc.dropped["arc-e-train"] == len(overlap_indices("ARC-Easy", "train.json")) > 0


def test_question_text_check_catches_test_items_in_user_files(tmp_path):
    svamp_question = load_test_set("svamp", limit=1)[0]["instruction"]
    boolq_question = load_test_set("boolq", limit=1)[0]["instruction"]
    math_file, commonsense_file = tmp_path / "math.jsonl", tmp_path / "cs.json"
    math_file.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"instruction": "  " + svamp_question.upper().replace(".", " . "), "output": "The answer is 8."},
                {
                    "instruction": "Tom has 3 apples and buys 2 more. How many now?",
                    "output": "3 + 2 = 5\nThe answer is 5.",
                },
            ]
        )
    )
    commonsense_file.write_text(
        json.dumps(
            [
                {
                    "instruction": boolq_question.replace("?", " ?"),
                    "output": "the correct answer is true",
                    "answer": "true",
                },
                {
                    "instruction": "Please answer: is water wet?\n\nAnswer format: true/false",
                    "output": "the correct answer is true",
                },
            ]
        )
    )
    math_set = load_train_set(str(math_file))
    assert len(math_set.records) == 1 and math_set.dropped_by_text == {str(math_file): 1}
    commonsense_set = load_train_set(str(commonsense_file))
    assert [r["instruction"] for r in commonsense_set.records] == [
        "Please answer: is water wet?\n\nAnswer format: true/false"
    ]
    assert "1 more by question text" in commonsense_set.summary()
    assert load_train_set(str(commonsense_file), domain="math").dropped_by_text[str(commonsense_file)] == 0


def test_mixture_order_is_seeded_and_limit_takes_a_prefix():
    first, again, other = (load_train_set("math", seed=s).records for s in (0, 0, 1))
    assert first == again and first != other and sorted(map(str, first)) == sorted(map(str, other))
    assert load_train_set("math", seed=0, limit=10).records == first[:10]
    sources = {name for name in MIXTURES["math"]}
    assert set(load_train_set("math,asdiv-a").kept) == sources | {"asdiv-a"}


# ----------------------------------------------------------------------------- validation split
def test_split_validation_is_deterministic_and_disjoint():
    records = [{"instruction": str(i)} for i in range(50)]
    train, validation = split_validation(records, 8, seed=3)
    assert (train, validation) == split_validation(records, 8, seed=3)
    assert split_validation(records, 8, seed=4)[1] != validation
    assert len(validation) == 8 and len(train) == 42
    assert sorted(train + validation, key=lambda r: int(r["instruction"])) == records
    assert train == sorted(train, key=lambda r: int(r["instruction"]))  # original order kept
    assert split_validation(records, 0) == (records, [])
    for bad in (50, -1):
        assert "validation size" in one_line_error(split_validation, records, bad)


# ----------------------------------------------------------------------------- answer formats
def test_answer_formats_of_registered_sets_and_files():
    assert answer_format("SVAMP") == AnswerFormat("number")
    assert answer_format("aqua") == AnswerFormat("letter")
    assert answer_format("ARC-Challenge") == AnswerFormat("label", tuple(f"answer{i}" for i in range(1, 6)))
    assert answer_format("a.json", [{"answer": "3"}, {"answer": "-1.5"}]).kind == "number"
    assert answer_format("b.json", [{"answer": "B"}, {"answer": "E"}]).kind == "letter"
    labels = answer_format("c.json", [{"answer": "yes"}, {"answer": "no"}, {"answer": "yes"}])
    assert labels == AnswerFormat("label", ("yes", "no"))
    assert extract_answer("Yes, it is", labels, "robust") == "yes" and extract_answer("Yes", labels, "paper") == ""
    assert "unknown dataset" in one_line_error(extract_answer, "1", "mnist")
    assert "unknown mode" in one_line_error(extract_answer, "1", "svamp", "strict")
