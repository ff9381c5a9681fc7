"""LLM-Adapters prompt templates byte for byte, chat prompts, and training-example tokenization."""

import pytest

from hyplora.errors import InputError
from hyplora.harness.prompts import (
    IGNORE_INDEX,
    RESPONSE_SPLIT,
    chat_prompt,
    eval_prompt,
    tokenize_example,
    train_prompt,
)

# The upstream strings as Python literals (finetune.py and evaluate.py @ 8166572); every space counts.
TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n"
    "                ### Instruction:\n                What is 2+3?\n                \n"
    "                ### Response:\n                The answer is 5."
)
TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    "                ### Instruction:\n                Add them.\n                \n"
    "                ### Input:\n                2 and 3\n                \n"
    "                ### Response:\n                5"
)
EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n"
    "                ### Instruction:\n                What is 2+3?\n\n"
    "                ### Response:\n                "
)
EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "                ### Instruction:\n                Add them.\n\n"
    "                ### Input:\n                2 and 3\n\n"
    "                ### Response:\n                "
)


def test_train_prompt_matches_finetune_py_byte_for_byte():
    assert train_prompt("What is 2+3?", "", "The answer is 5.") == TRAIN_NO_INPUT
    assert train_prompt("Add them.", "2 and 3", "5") == TRAIN_WITH_INPUT


def test_eval_prompt_matches_evaluate_py_byte_for_byte():
    assert eval_prompt("What is 2+3?") == EVAL_NO_INPUT
    assert eval_prompt("Add them.", "2 and 3") == EVAL_WITH_INPUT


def test_training_and_evaluation_templates_differ_only_in_whitespace():
    train, evaluate = train_prompt("Q"), eval_prompt("Q")
    assert train != evaluate
    assert train.split() == evaluate.split()
    assert train.splitlines()[0].endswith("request.  ")  # two trailing spaces
    assert evaluate.splitlines()[0].endswith("request. ")  # one
    assert evaluate.endswith("### Response:\n" + " " * 16)


def test_braces_and_newlines_in_the_question_are_kept_verbatim():
    question = "Solve {x} + {{y}}\n\nAnswer format: true/false"
    assert question in eval_prompt(question)
    assert question in train_prompt(question, output="{z}")
    assert train_prompt(question, output="{z}").endswith(" " * 16 + "{z}")


def test_response_split_recovers_the_generated_answer():
    generated = eval_prompt("What is 2+3?") + "2 + 3 = 5. The answer is 5."
    assert generated.split(RESPONSE_SPLIT)[1].strip() == "2 + 3 = 5. The answer is 5."


class ByteTokenizer:
    """A deterministic stand-in tokenizer: BOS 1, EOS 2, byte b -> b + 3."""

    bos_token_id, eos_token_id, chat_template, name_or_path = 1, 2, None, "byte-tokenizer"

    def __call__(self, text, truncation=False, max_length=None, padding=False, add_special_tokens=True):
        ids = ([self.bos_token_id] if add_special_tokens else []) + [b + 3 for b in text.encode()]
        ids = ids[:max_length] if truncation else ids
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i > 2).decode()


RECORD = {"instruction": "What is 2+3?", "input": "", "output": "The answer is 5."}


def test_tokenize_example_trains_on_inputs_and_appends_eos():
    tokenizer = ByteTokenizer()
    example = tokenize_example(tokenizer, RECORD, cutoff_len=512, train_on_inputs=True)
    expected = tokenizer(train_prompt(**RECORD))["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == expected
    assert example["labels"] == expected
    assert example["attention_mask"] == [1] * len(expected)


def test_tokenize_example_masks_the_prompt_when_not_training_on_inputs():
    tokenizer = ByteTokenizer()
    example = tokenize_example(tokenizer, RECORD, cutoff_len=512, train_on_inputs=False)
    prompt_len = len(tokenizer(train_prompt(RECORD["instruction"]))["input_ids"])
    assert example["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert example["labels"][prompt_len:] == example["input_ids"][prompt_len:]
    assert tokenizer.decode(example["labels"][prompt_len:]) == RECORD["output"]
    assert example["labels"][-1] == tokenizer.eos_token_id


def test_tokenize_example_truncates_at_cutoff_without_eos():
    tokenizer = ByteTokenizer()
    example = tokenize_example(tokenizer, RECORD, cutoff_len=40, train_on_inputs=False)
    assert len(example["input_ids"]) == len(example["labels"]) == len(example["attention_mask"]) == 40
    assert tokenizer.eos_token_id not in example["input_ids"]
    assert set(example["labels"]) == {IGNORE_INDEX}  # the whole window is prompt


def test_tokenize_example_rejects_bad_options():
    with pytest.raises(InputError, match="template"):
        tokenize_example(ByteTokenizer(), RECORD, 64, True, template="vicuna")
    with pytest.raises(InputError, match="cutoff_len"):
        tokenize_example(ByteTokenizer(), RECORD, 0, True)


def test_chat_prompt_needs_a_chat_template():
    with pytest.raises(InputError, match="no chat template"):
        chat_prompt(ByteTokenizer(), "What is 2+3?")
    with pytest.raises(InputError, match="no chat template"):
        tokenize_example(ByteTokenizer(), RECORD, 64, True, template="chat")


def test_chat_prompt_uses_the_models_template(smollm2_tokenizer):
    prompt = chat_prompt(smollm2_tokenizer, "Add them.", "2 and 3")
    assert "<|im_start|>user\nAdd them.\n\n2 and 3<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    full = chat_prompt(smollm2_tokenizer, "Add them.", "2 and 3", output="5")
    assert full.startswith(prompt) and full.rstrip().endswith("5<|im_end|>")


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_tokenize_example_with_smollm2_supervises_exactly_the_answer(smollm2_tokenizer, template):
    example = tokenize_example(smollm2_tokenizer, RECORD, cutoff_len=256, train_on_inputs=False, template=template)
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert smollm2_tokenizer.decode(supervised).strip() == RECORD["output"] + "<|im_end|>"
    assert example["input_ids"][-1] == smollm2_tokenizer.eos_token_id
    assert example["input_ids"][-2] != smollm2_tokenizer.eos_token_id  # one EOS, never two
