"""Generation (`hyplora.harness.generation`): batched greedy decoding and beam search equal one prompt at a time."""

import pytest
import torch

from hyplora.harness import generation
from hyplora.harness.base_models import tiny_model
from hyplora.harness.generation import generate_batched, generate_beam, generate_greedy

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(count: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 30, (count,), generator=generator).tolist()
    return [torch.randint(3, 49152, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_batched_greedy_equals_one_prompt_at_a_time(arch):
    # float64: no argmax can flip on padding-dependent rounding; gemma's sliding window of 8 is crossed
    model = tiny_model(arch, sliding_window=8).double() if arch == "gemma" else tiny_model(arch).double()
    prompts = _prompts(7)
    steps = 12
    free = [generate_greedy(model, [p], max_new_tokens=steps, eos_ids=set(), pad_id=2)[0] for p in prompts]
    # an EOS that ends some rows early and not others, so finished rows leave the batch mid-way
    candidates = sorted({t for row in free for t in row[1:-1]}, key=lambda t: sum(t in row[:-1] for row in free))
    eos = next(t for t in candidates if 0 < sum(t in row[:-1] for row in free) < len(free))
    single = [generate_greedy(model, [p], max_new_tokens=steps, eos_ids={eos}, pad_id=2)[0] for p in prompts]
    assert any(len(s) < steps for s in single) and any(len(s) == steps for s in single)
    batched = generate_batched(
        model, prompts, max_new_tokens=steps, num_beams=1, batch_size=5, eos_ids={eos}, pad_id=2
    )
    assert batched == single
    with torch.inference_mode():
        reference = [
            model.generate(torch.tensor([p]), max_new_tokens=steps, do_sample=False, eos_token_id=eos, pad_token_id=2)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]
    assert [generation._until_eos(r, {eos}) for r in reference] == single


def test_batched_beam_search_equals_one_prompt_at_a_time():
    model = tiny_model("llama").double()
    prompts = _prompts(4, seed=1)
    single = [generate_beam(model, [p], max_new_tokens=6, num_beams=4, eos_ids={2}, pad_id=2)[0] for p in prompts]
    assert (
        generate_batched(model, prompts, max_new_tokens=6, num_beams=4, batch_size=3, eos_ids={2}, pad_id=2) == single
    )
    assert all(len(s) == 6 for s in single)
