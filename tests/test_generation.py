"""The preallocated KV-cache layer: the same keys and values as transformers' DynamicLayer, through row selection."""

import torch
from transformers.cache_utils import DynamicLayer

from hyplora.harness.generation import PreallocatedLayer


def test_preallocated_layer_matches_dynamic_layer_through_row_selection():
    generator = torch.Generator().manual_seed(0)
    ours, reference = PreallocatedLayer(capacity=12), DynamicLayer()
    chunks = [torch.randn(5, 2, length, 3, generator=generator) for length in (4, 1, 1)]
    for chunk in chunks:
        ours.update(chunk, -chunk)
        reference.update(chunk, -chunk)
    keep = torch.tensor([1, 3, 4])
    ours.batch_select_indices(keep)
    reference.batch_select_indices(keep)
    assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values)
    step = torch.randn(3, 2, 1, 3, generator=generator)
    keys, values = ours.update(step, 2 * step)
    expected_keys, expected_values = reference.update(step, 2 * step)
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    assert keys.shape == (3, 2, 7, 3) and ours.key_buffer.shape[2] == 12  # the capacity is kept, not reallocated
    ours.batch_select_indices(torch.tensor([2]))
    assert torch.equal(ours.keys, reference.keys[2:3]) and torch.equal(ours.values[0], expected_values[2])


def test_preallocated_layer_reorders_rows_for_beam_search_as_dynamic_layer_does():
    generator = torch.Generator().manual_seed(1)
    ours, reference = PreallocatedLayer(capacity=8), DynamicLayer()
    for chunk in (torch.randn(4, 2, 3, 5, generator=generator), torch.randn(4, 2, 1, 5, generator=generator)):
        ours.update(chunk, chunk + 1)
        reference.update(chunk, chunk + 1)
    for beam_idx in (torch.tensor([0, 0, 3, 1]), torch.tensor([0, 1, 2, 3]), torch.tensor([2, 2, 2, 2])):
        ours.reorder_cache(beam_idx)
        reference.reorder_cache(beam_idx)
        assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values)
    step = torch.randn(4, 2, 1, 5, generator=generator)
    assert torch.equal(ours.update(step, step)[0], reference.update(step, step)[0])


def test_beam_search_on_the_preallocated_cache_gives_generates_own_sequences(tiny_llama):
    from transformers import GenerationConfig

    from hyplora.harness.generation import generate_beam

    torch.manual_seed(0)
    prompts = [[5, 17, 250, 3001, 42], [7, 8], [900, 901, 902]]
    eos = {2}
    ours = generate_beam(tiny_llama, prompts, max_new_tokens=12, num_beams=4, eos_ids=eos, pad_id=0)
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    config = GenerationConfig(num_beams=4, do_sample=False, max_new_tokens=12, eos_token_id=[2], pad_token_id=0)
    with torch.inference_mode():
        sequences = tiny_llama.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    expected = [row[: row.index(2) + 1] if 2 in row else row for row in sequences[:, width:].tolist()]
    assert ours == expected and any(len(set(row)) > 1 for row in ours)
