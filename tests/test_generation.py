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
