"""The CPU decoding-attention kernel: SDPA's results on every shape it takes, SDPA itself for the rest, and the
same greedy tokens through `generate_batched` on Llama (GQA) and Gemma 3 (sliding window) models."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hyplora import kernels
from hyplora.harness import decode_attention
from hyplora.harness.base_models import tiny_model
from hyplora.harness.generation import generate_batched


@pytest.fixture(scope="module")
def kernel():
    built = kernels.extension()
    assert built is not None, "the kernels must build here (a C++ compiler and ninja are in the test setup)"
    return built


def sdpa_reference(query, key, value, mask, scale):
    batch, heads, length, dim = key.shape
    grouped = query.reshape(batch, heads, -1, dim)
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(grouped, key, value, attn_mask=attn_mask, scale=scale).reshape(query.shape)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 9),
    length=st.integers(1, 70),
    dim=st.sampled_from(decode_attention.HEAD_DIMS),
    spare=st.integers(0, 5),
    masked=st.sampled_from(["none", "rows", "shared"]),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_sdpa(kernel, batch, kv_heads, groups, length, dim, spare, masked, magnitude, seed):
    generator = torch.Generator().manual_seed(seed)
    # keys and values as views of a larger cache buffer (the preallocated cache's layout)
    buffer = torch.randn(2, batch, kv_heads, length + spare, dim, generator=generator)
    key, value = buffer[0, :, :, :length], buffer[1, :, :, :length]
    query = magnitude * torch.randn(batch, kv_heads * groups, 1, dim, generator=generator)
    mask = None
    if masked != "none":
        mask = torch.rand(batch if masked == "rows" else 1, length, generator=generator) > 0.4
        mask[:, -1] = True  # the step's own position is never masked
    scale = dim**-0.5
    got = decode_attention.decode_attention(query, key, value, mask, scale)
    exact = sdpa_reference(*(t.double() for t in (query, key, value)), mask, scale)
    # float32 rounding of a score s moves its weight by ~|s| eps: the error bound grows with the largest score
    largest = (scale * query.reshape(batch, kv_heads, groups, dim) @ key.transpose(-1, -2)).abs().max().item()
    tolerance = 4e-7 * (1 + largest)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=tolerance)
    torch.testing.assert_close(sdpa_reference(query, key, value, mask, scale).double(), exact, rtol=0, atol=tolerance)


def test_masked_positions_carry_no_weight_whatever_they_hold(kernel):
    generator = torch.Generator().manual_seed(0)
    key, value = torch.randn(2, 2, 1, 9, 64, generator=generator)
    query = torch.randn(2, 3, 1, 64, generator=generator)
    mask = torch.tensor([[False] * 4 + [True] * 5, [True] * 9])
    poisoned_key, poisoned_value = key.clone(), value.clone()
    poisoned_key[0, :, :4], poisoned_value[0, :, :4] = 1e30, -1e30
    clean = decode_attention.decode_attention(query, key, value, mask, 0.125)
    poisoned = decode_attention.decode_attention(query, poisoned_key, poisoned_value, mask, 0.125)
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)


def test_attention_forward_hands_everything_but_a_float32_decoding_step_to_sdpa(kernel, monkeypatch):
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    generator = torch.Generator().manual_seed(1)
    key, value = torch.randn(2, 2, 2, 6, 64, generator=generator)
    calls = []
    monkeypatch.setattr(decode_attention, "decode_attention", lambda *a: calls.append(a) or a[0])
    prefill = torch.randn(2, 4, 6, 64, generator=generator)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(2, 1, 6, 6)
    for query, mask in (
        (prefill, causal),  # prefill: several query positions
        (prefill[:, :, -1:], torch.zeros(2, 1, 1, 6)),  # a float (additive) mask
        (prefill[:, :, -1:].double(), None),  # not float32
    ):
        kv = (key.double(), value.double()) if query.dtype == torch.float64 else (key, value)
        got, _ = decode_attention.attention_forward(module, query, *kv, mask)
        expected, _ = sdpa_attention_forward(module, query, *kv, mask)
        torch.testing.assert_close(got, expected)
    assert calls == []
    step = prefill[:, :, -1:]
    decode_attention.attention_forward(module, step, key, value, causal[:, :, -1:])
    assert len(calls) == 1 and calls[0][3].shape == (2, 6)  # the (B, 1, 1, T) mask passed as (B, T)


@pytest.mark.parametrize("arch,num_beams", [("llama", 1), ("gemma", 1), ("llama", 3)])
def test_generated_tokens_are_sdpas_and_the_attention_implementation_comes_back(kernel, arch, num_beams, monkeypatch):
    # head_dim 64 (the kernel's smallest); Gemma 3: a sliding-window layer (4 positions) and a full one
    gemma = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4} if arch == "gemma" else {}
    model = tiny_model(arch, head_dim=64, **gemma)
    prompts = [[5, 17, 250, 3001, 42, 7, 9], [7, 8], [900, 901, 902, 11]]
    options = dict(max_new_tokens=20, num_beams=num_beams, batch_size=3, eos_ids={2}, pad_id=0)
    calls = []
    computed = decode_attention.decode_attention
    monkeypatch.setattr(decode_attention, "decode_attention", lambda *a: calls.append(a[1].shape) or computed(*a))
    with_kernel = generate_batched(model, prompts, **options)
    assert model.config._attn_implementation == "sdpa"  # restored after the run
    assert len(calls) >= 19 * model.config.num_hidden_layers  # every layer of every decoding step
    assert num_beams == 1 or all(shape[0] == len(prompts) * num_beams for shape in calls)  # every beam
    monkeypatch.setattr(kernels, "extension", lambda: None)
    assert with_kernel == generate_batched(model, prompts, **options)
    assert max(map(len, with_kernel)) > 8


def test_models_the_kernel_does_not_cover_are_left_alone(kernel):
    eager = tiny_model("llama", head_dim=64)
    eager.set_attn_implementation("eager")
    for model in (tiny_model("llama", head_dim=64).to(torch.bfloat16), eager):
        before = model.config._attn_implementation
        with decode_attention.decoding_kernel(model):
            assert model.config._attn_implementation == before
