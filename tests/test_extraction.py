"""Answer extraction (`hyplora.harness.extraction`): the paper's and the robust rules, scoring, the response."""

import math

import pytest

from hyplora.harness.extraction import extract_answer, is_correct, response_text, robust_response
from hyplora.harness.prompts import eval_prompt

# ----------------------------------------------------------------------------- extraction rules
NUMBER_CASES = [
    # response, paper prediction, robust prediction
    ("The answer is 1,234.", 1234.0, 1234.0),
    ("She has 3 apples and buys 4 more, so 3 + 4 = 7", 7.0, 7.0),
    ("The answer is 12. Next question: Tom has 5 pens.", 5.0, 12.0),
    ("Each gets 2/3 of a pie", 3.0, 2 / 3),
    ("It costs .5 dollars", 5.0, 0.5),
    ("The temperature is -3 degrees", -3.0, -3.0),
    ("5-3=2", 2.0, 2.0),
    ("Numbers 1,2,3", 123.0, 3.0),
    ("The answer is $1,000.50", 1000.5, 1000.5),
    ("Version 1.2.3", 3.0, 1.2),
    ("The result is 18.", 18.0, 18.0),
    ("Answer: 42 apples, 7 left", 7.0, 42.0),
    ("no digits at all", math.inf, math.inf),
    ("", math.inf, math.inf),
]


@pytest.mark.parametrize("response,paper,robust", NUMBER_CASES)
def test_number_extraction(response, paper, robust):
    assert extract_answer(response, "svamp", "paper") == pytest.approx(paper)
    assert extract_answer(response, "gsm8k", "robust") == pytest.approx(robust)


LETTER_CASES = [
    ("Answer: (C)", "A", "C"),  # the flaw robust mode fixes: the A of "Answer"
    ("The answer is (C).", "C", "C"),
    ("The correct option is (E)", "E", "E"),
    ("Option B, since (A) and (C) are too small", "B", "B"),
    ("The answer is therefore C", "C", ""),
    ("Explanation: 2 + 2 = 4. The answer is B", "E", "B"),
    ("\\boxed{D}", "D", "D"),
    ("B) 35.62", "B", "B"),
    ("(d) lowercase only", "", ""),
    ("A man buys 3 apples", "A", ""),
    ("Answer Choices: (A) 1 (B) 2", "A", ""),
    ("we get 23.65, which is (A)", "A", "A"),
    ("", "", ""),
]


@pytest.mark.parametrize("response,paper,robust", LETTER_CASES)
def test_letter_extraction(response, paper, robust):
    assert extract_answer(response, "aqua", "paper") == paper
    assert extract_answer(response, "aqua", "robust") == robust


LABEL_CASES = [
    ("boolq", "the correct answer is true", "true", "true"),
    ("boolq", "True", "", "true"),
    ("boolq", "It is untrue, so false", "true", "false"),
    ("boolq", "true or false? the correct answer is false", "true", "false"),
    ("piqa", "Solution 2", "", "solution2"),
    ("piqa", "solution2 is better than solution1", "solution2", "solution2"),
    ("siqa", "Answer1", "", "answer1"),
    ("arc-c", "the correct answer is answer4", "answer4", "answer4"),
    ("obqa", "answer 3", "", "answer3"),
    ("winogrande", "Option2", "", "option2"),
    ("hellaswag", "ending3", "ending3", "ending3"),
    ("arc-e", "I am not sure", "", ""),
]


@pytest.mark.parametrize("dataset,response,paper,robust", LABEL_CASES)
def test_label_extraction(dataset, response, paper, robust):
    assert extract_answer(response, dataset, "paper") == paper
    assert extract_answer(response, dataset, "robust") == robust


def test_numbers_are_correct_within_a_thousandth():
    assert is_correct(18.0, "18", "svamp") and is_correct(0.667, "0.6666666666666666", "gsm8k")
    assert not is_correct(0.668, "0.6666666666666666", "gsm8k")
    assert is_correct(576.0005, "576.0", "mawps") and not is_correct(576.0015, "576.0", "mawps")
    assert not is_correct(math.inf, "3", "addsub")
    assert is_correct("C", "C", "aqua") and not is_correct("", "C", "aqua")
    assert is_correct("true", "true", "boolq") and not is_correct("True", "true", "boolq")


def test_robust_response_drops_an_echoed_response_header():
    echoed = "\n                ### Response:\n                the correct answer is true"
    assert robust_response(echoed) == "the correct answer is true"
    assert robust_response("### Response: ###Response: 7\n### Instruction: more") == "7"
    assert extract_answer(echoed.split("### Response:")[0], "boolq", "paper") == ""  # what the paper's split keeps


def test_robust_response_stops_at_the_next_alpaca_section():
    text = " The answer is 4.\n\n### Instruction:\nWhat is 7 + 1?\n\n### Response:\nThe answer is 8."
    assert robust_response(text) == "The answer is 4."
    assert extract_answer(robust_response(text), "svamp", "robust") == 4.0
    assert extract_answer(text, "svamp", "paper") == 8.0


def test_paper_response_splits_the_decoded_prompt_and_keeps_special_tokens_for_math(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    prompt_ids = tokenizer(eval_prompt("What is 2 + 2?"))["input_ids"]
    generated = tokenizer(" The answer is 4.\n### Response: 5")["input_ids"] + [tokenizer.eos_token_id]
    math_response = response_text(tokenizer, prompt_ids, generated, mode="paper", domain_name="math")
    assert math_response == "The answer is 4."  # [1] of the split: the text between the two markers
    tail = tokenizer(" the correct answer is true")["input_ids"] + [tokenizer.eos_token_id]
    expected = "the correct answer is true"
    assert (
        response_text(tokenizer, prompt_ids, tail, mode="paper", domain_name="math") == expected + tokenizer.eos_token
    )
    assert response_text(tokenizer, prompt_ids, tail, mode="paper", domain_name="commonsense") == expected
    assert response_text(tokenizer, prompt_ids, generated, mode="robust", domain_name="math") == "The answer is 4."
