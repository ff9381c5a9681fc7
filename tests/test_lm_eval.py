"""lm-evaluation-harness integration: the commonsense parse on every shipped record, the `hyplora lm-eval` command
on a tiny model with a HypLoRA adapter (log-likelihoods checked against `hyplora.load_adapter`), the math scoring."""

import json
import sys
from collections import Counter

import pytest
import torch

pytest.importorskip("lm_eval")

from peft import get_peft_model  # noqa: E402

from hyplora import HypLoraConfig, load_adapter  # noqa: E402
from hyplora.cli import build_parser, main  # noqa: E402
from hyplora.errors import InputError  # noqa: E402
from hyplora.harness.base_models import load_model, tiny_model  # noqa: E402
from hyplora.harness.data import TEST_SETS, load_test_set  # noqa: E402
from hyplora.harness.lm_eval import TASKS_DIR, lm_eval_argv  # noqa: E402
from hyplora.harness.lm_eval.documents import LAYOUTS, load_test_split, math_results, multiple_choice_doc  # noqa: E402

COMMONSENSE = ("boolq", *LAYOUTS)
# choice counts per set, from the records (ARC has a few 3- and 5-choice questions)
CHOICE_COUNTS = {
    "boolq": {2: 3270},
    "arc-e": {4: 2365, 3: 7, 5: 4},
    "arc-c": {4: 1165, 3: 4, 5: 3},
    "obqa": {4: 500},
    "siqa": {3: 1954},
    "piqa": {2: 1838},
    "winogrande": {2: 1267},
}


@pytest.mark.parametrize("name", COMMONSENSE)
def test_every_commonsense_record_parses_into_question_choices_and_gold(name):
    records = load_test_set(name)
    docs = [multiple_choice_doc(record, name, i) for i, record in enumerate(records)]
    assert len(docs) == TEST_SETS[name].size
    assert Counter(len(doc["choices"]) for doc in docs) == CHOICE_COUNTS[name]
    for record, doc in zip(records, docs):
        assert doc["question"].strip() and all(choice.strip() for choice in doc["choices"])
        if name == "boolq":
            assert doc["choices"][doc["gold"]] == {"true": "yes", "false": "no"}[record["answer"]]
        else:  # the gold label word names the gold choice, and the choice text is in the instruction after it
            label = f"{LAYOUTS[name].label}{doc['gold'] + 1}: {doc['choices'][doc['gold']]}"
            assert (
                record["answer"] == f"{LAYOUTS[name].label.lower()}{doc['gold'] + 1}"
                and label in record["instruction"]
            )


def test_known_records_parse_to_their_parts():
    obqa = multiple_choice_doc(load_test_set("obqa")[0], "obqa")
    assert obqa["choices"] == [
        "make more phone calls",
        "quit eating lunch out",
        "buy less with monopoly money",
        "have lunch with friends",
    ]
    assert obqa["gold"] == 1 and obqa["question"].endswith("the best way to save money is to")
    wino = multiple_choice_doc(load_test_set("winogrande")[0], "winogrande")
    assert wino == {
        "question": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
        "choices": ["Sarah", "Maria"],
        "gold": 1,
    }


@pytest.mark.parametrize(
    "instruction, answer",
    [
        (
            "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2/answer3",
            "answer1",
        ),
        (
            "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2",
            "answer3",
        ),
        (
            "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: Answer1: b\n\nAnswer format: answer1/answer2",
            "answer1",
        ),
        ("Choose: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2", "answer1"),
    ],
)
def test_a_record_off_the_layout_is_an_input_error_naming_it(instruction, answer):
    with pytest.raises(InputError, match="obqa record 7"):
        multiple_choice_doc({"instruction": instruction, "answer": answer}, "obqa", 7)


def test_math_split_keeps_the_gold_answer_and_scores_with_the_robust_rules():
    split = load_test_split("gsm8k")["test"]
    assert len(split) == 1319 and split[0]["answer"] == "576.0" and split[0]["dataset"] == "gsm8k"
    assert math_results(split[0], ["24 * 24 = 576 tiles. The answer is 576."]) == {"acc": 1.0}
    assert math_results(split[0], ["\n ### Response:\n The answer is 576.\n### Instruction: 3"]) == {"acc": 1.0}
    assert math_results(split[0], ["The answer is 577."]) == {"acc": 0.0}


def test_the_command_adds_the_task_folder_and_refuses_a_second_include_path():
    assert lm_eval_argv(["--tasks", "hyplora_obqa"]) == ["--tasks", "hyplora_obqa", "--include_path", str(TASKS_DIR)]
    assert lm_eval_argv([]) == [] and lm_eval_argv(["--help"]) == ["--help"]
    with pytest.raises(InputError, match="--include_path"):
        lm_eval_argv(["--tasks", "x", "--include_path", "/elsewhere"])


def test_the_verb_keeps_its_own_leading_threads_option_and_passes_the_rest_verbatim():
    args = build_parser().parse_args(["lm-eval", "--threads", "1", "--model", "hf", "--threads", "x", "ls"])
    assert args.threads == 1 and args.lm_eval_args == ["--model", "hf", "--threads", "x", "ls"]
    assert build_parser().parse_args(["lm-eval", "run", "--tasks", "t"]).lm_eval_args == ["run", "--tasks", "t"]


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), encoded as lm-eval's HFLM does (the pair as one string, context tokens cut)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, n_context:]
    return logprobs[torch.arange(n_context - 1, len(whole) - 1), targets].sum().item()


def test_hyplora_lm_eval_runs_a_10_item_task_with_the_adapter_attached(tmp_path, smollm2_tokenizer):
    base_dir, adapter_dir, out = tmp_path / "tiny", tmp_path / "adapter", tmp_path / "out"
    tiny_model("llama").save_pretrained(base_dir)
    smollm2_tokenizer.save_pretrained(base_dir)
    peft_model = get_peft_model(
        tiny_model("llama"), HypLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: a fresh one is the identity and would hide a missing attach
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(adapter_dir)

    model_args = f"pretrained={base_dir},peft={adapter_dir},dtype=float32"
    argv = [
        "lm-eval",
        "--model",
        "hyplora-hf",
        "--model_args",
        model_args,
        "--tasks",
        "hyplora_obqa,hyplora_svamp",
        "--limit",
        "10",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--output_path",
        str(out),
        "--log_samples",
        "--gen_kwargs",
        "max_gen_toks=8",
    ]
    assert main(argv) == 0

    (results_file,) = out.glob("*/results_*.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["hyplora_obqa"]["effective"] == 10
    assert results["n-samples"]["hyplora_svamp"]["effective"] == 10
    assert 0.0 <= results["results"]["hyplora_svamp"]["acc,none"] <= 1.0
    (samples_file,) = out.glob("*/samples_hyplora_obqa_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 10 and results["results"]["hyplora_obqa"]["acc,none"] == pytest.approx(
        sum(sample["acc"] for sample in samples) / 10
    )

    # the math task is `hyplora eval --mode robust`: the same generations and the same scores, item for item
    eval_argv = [
        "eval",
        "--model",
        str(base_dir),
        "--adapter",
        str(adapter_dir),
        "--datasets",
        "svamp",
        "--limit",
        "10",
    ]
    assert main([*eval_argv, "--mode", "robust", "--max-new-tokens", "8", "--output-dir", str(tmp_path / "eval")]) == 0
    ours = [json.loads(line) for line in (tmp_path / "eval" / "svamp.jsonl").read_text().splitlines()]
    (svamp_file,) = out.glob("*/samples_hyplora_svamp_*.jsonl")
    theirs = sorted((json.loads(line) for line in svamp_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert [item["output"].strip() for item in ours] == [sample["resps"][0][0].strip() for sample in theirs]
    assert [float(item["correct"]) for item in ours] == [sample["acc"] for sample in theirs]

    base, tokenizer = load_model(base_dir)
    adapted = load_adapter(load_model(base_dir)[0], adapter_dir)
    first = samples[0]["arguments"]["gen_args_0"]
    logged = float(samples[0]["resps"][0][0][0])
    assert logged == pytest.approx(_loglikelihood(adapted, tokenizer, first["arg_0"], first["arg_1"]), abs=1e-3)
    assert abs(logged - _loglikelihood(base, tokenizer, first["arg_0"], first["arg_1"])) > 1e-2


def test_without_lm_eval_the_verb_says_how_to_install_it(monkeypatch, capsys):
    for name in [name for name in sys.modules if name.startswith(("lm_eval", "hyplora.harness.lm_eval"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without lm-eval imports
    assert main(["lm-eval", "--tasks", "hyplora_obqa"]) == 2
    assert "pip install 'hyplora[lm-eval]'" in capsys.readouterr().err
