"""Prompt templates: the LLM-Adapters Alpaca templates, byte for byte, and the model's chat template.

LLM-Adapters (AGI-Edgerunners/LLM-Adapters @ 8166572) writes its Alpaca templates as indented
f-strings, so their whitespace is part of the prompt, and the training template (`finetune.py`)
differs from the evaluation template (`evaluate.py`, `commonsense_evaluate.py`):

- training, no input: the header line ends with two spaces; the blank line between the
  instruction and `### Response:` holds 16 spaces; the output follows the 16 spaces of the
  response line directly.
- evaluation, no input: the header ends with one space; blank lines are empty; the prompt ends
  with a newline and 16 spaces.

The constants below are those strings written out with every space visible. A model trained on
`train_prompt` and evaluated on `eval_prompt` sees a slightly different prompt, exactly as in the
paper's protocol.
"""

from hyplora.errors import InputError

_PAD = " " * 16  # the f-strings in LLM-Adapters are indented by 16 spaces

TRAIN_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    f"{_PAD}### Instruction:\n"
    f"{_PAD}{{instruction}}\n"
    f"{_PAD}\n"
    f"{_PAD}### Response:\n"
    f"{_PAD}{{output}}"
)
TRAIN_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    f"{_PAD}### Instruction:\n"
    f"{_PAD}{{instruction}}\n"
    f"{_PAD}\n"
    f"{_PAD}### Input:\n"
    f"{_PAD}{{input}}\n"
    f"{_PAD}\n"
    f"{_PAD}### Response:\n"
    f"{_PAD}{{output}}"
)
EVAL_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    f"{_PAD}### Instruction:\n"
    f"{_PAD}{{instruction}}\n"
    "\n"
    f"{_PAD}### Response:\n"
    f"{_PAD}"
)
EVAL_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    f"{_PAD}### Instruction:\n"
    f"{_PAD}{{instruction}}\n"
    "\n"
    f"{_PAD}### Input:\n"
    f"{_PAD}{{input}}\n"
    "\n"
    f"{_PAD}### Response:\n"
    f"{_PAD}"
)
RESPONSE_SPLIT = "### Response:"
"""LLM-Adapters takes the model's answer as `decoded.split(RESPONSE_SPLIT)[1].strip()`."""

TEMPLATES = ("alpaca", "chat")
IGNORE_INDEX = -100
"""Label value that `torch.nn.CrossEntropyLoss` (and transformers' causal-LM loss) skips."""


def train_prompt(instruction: str, input: str = "", output: str = "") -> str:
    """The LLM-Adapters `finetune.py` prompt, followed by the target `output`.

    With `output=""` it is the prompt part alone, which is what LLM-Adapters tokenizes to find the
    length of the masked prefix when `train_on_inputs=False`.
    """
    template = TRAIN_TEMPLATE_WITH_INPUT if input else TRAIN_TEMPLATE
    return template.format(instruction=instruction, input=input, output=output)


def eval_prompt(instruction: str, input: str = "") -> str:
    """The LLM-Adapters `evaluate.py` / `commonsense_evaluate.py` prompt; it ends in a newline and 16 spaces."""
    template = EVAL_TEMPLATE_WITH_INPUT if input else EVAL_TEMPLATE
    return template.format(instruction=instruction, input=input)


def chat_prompt(tokenizer, instruction: str, input: str = "", output: str | None = None) -> str:
    """Render one user turn (instruction, then input after a blank line) with the tokenizer's chat template.

    Args:
        tokenizer: a transformers tokenizer with a `chat_template`.
        instruction (`str`): the task.
        input (`str`, *optional*): extra context, appended to the user turn after a blank line.
        output (`str`, *optional*): the assistant's answer. Without it the prompt ends with the
            generation prompt (the assistant header), ready for `generate`.

    Raises:
        InputError: the tokenizer has no chat template (e.g. the Gemma 3 270M base GGUF).
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise InputError(f"tokenizer {name!r} has no chat template: use the 'alpaca' prompt template instead")
    messages = [{"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}]
    if output is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": output})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def tokenize_example(
    tokenizer, record: dict, cutoff_len: int, train_on_inputs: bool, template: str = "alpaca"
) -> dict:
    """Tokenize one training record the way LLM-Adapters' `generate_and_tokenize_prompt` does.

    1. Render `prompt + output` (`train_prompt`, or `chat_prompt` with the answer as assistant turn).
    2. Tokenize with truncation to `cutoff_len` tokens, no padding.
    3. Append EOS when the sequence is shorter than `cutoff_len` and does not already end in EOS.
    4. `labels` = `input_ids`; unless `train_on_inputs`, the first `len(tokenize(prompt))` labels
       become `IGNORE_INDEX`, so the loss covers only the answer (and EOS).

    The chat template already holds its special tokens, so it is tokenized with
    `add_special_tokens=False`, and whitespace after the final end-of-turn marker is dropped so that
    a template whose end-of-turn token is EOS (SmolLM2's `<|im_end|>`) gets no second EOS. The
    Alpaca text gets the tokenizer's usual BOS handling.

    Args:
        tokenizer: a transformers tokenizer (with `eos_token_id`).
        record (`dict`): `instruction`, `output` and optionally `input`.
        cutoff_len (`int`): maximum sequence length in tokens.
        train_on_inputs (`bool`): include the prompt tokens in the loss (LLM-Adapters' default).
        template (`str`): `"alpaca"` or `"chat"`.

    Returns:
        `dict` with `input_ids`, `attention_mask` and `labels`, lists of equal length <= `cutoff_len`.
    """
    if template not in TEMPLATES:
        raise InputError(f"unknown prompt template {template!r}: choose one of {', '.join(TEMPLATES)}")
    if cutoff_len < 1:
        raise InputError(f"cutoff_len must be a positive number of tokens, got {cutoff_len}")
    instruction, input_text, output = record["instruction"], record.get("input", ""), record["output"]
    if template == "alpaca":
        full_text, prompt_text = train_prompt(instruction, input_text, output), train_prompt(instruction, input_text)
        special = True
    else:
        full_text = chat_prompt(tokenizer, instruction, input_text, output).rstrip()
        prompt_text = chat_prompt(tokenizer, instruction, input_text)
        special = False

    def encode(text):
        return tokenizer(text, truncation=True, max_length=cutoff_len, padding=False, add_special_tokens=special)

    encoded = encode(full_text)
    input_ids, attention_mask = list(encoded["input_ids"]), list(encoded["attention_mask"])
    eos = tokenizer.eos_token_id
    if input_ids and input_ids[-1] != eos and len(input_ids) < cutoff_len:
        input_ids.append(eos)
        attention_mask.append(1)
    labels = list(input_ids)
    if not train_on_inputs:
        prompt_len = min(len(encode(prompt_text)["input_ids"]), len(labels))
        labels[:prompt_len] = [IGNORE_INDEX] * prompt_len
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
