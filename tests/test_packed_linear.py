"""Packed oneDNN linear layers for the evaluator's generation: F.linear's results, only for float32 inference inside
the block, each layer's own forward back on exit, the switch and the memory guard, the same greedy tokens."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hyplora import kernels
from hyplora.harness import packed_linear
from hyplora.harness.base_models import tiny_model
from hyplora.harness.generation import generate_batched

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this PyTorch has no oneDNN")


def patched(module: nn.Module) -> bool:
    return "forward" in module.__dict__


@settings(max_examples=40, deadline=None)
@given(
    d_in=st.integers(128, 300),
    d_out=st.integers(128, 300),
    rows=st.integers(0, 70),
    leading=st.integers(1, 3),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_packed_is_f_linear(d_in, d_out, rows, leading, bias, seed):
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(d_in, d_out, bias=bias)
    x = torch.randn(leading, rows, d_in, generator=generator)
    expected = torch.nn.functional.linear(
        x.double(), linear.weight.double(), None if not bias else linear.bias.double()
    )
    with packed_linear.packed_linears(linear), torch.inference_mode():
        assert patched(linear)
        result = linear(x)
    assert result.shape == (leading, rows, d_out) and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5 * d_in**0.5)


def test_only_float32_inference_inside_the_block_runs_packed(monkeypatch):
    calls = []
    packed_call = torch.ops.mkldnn._linear_pointwise
    linear = nn.Linear(160, 200)
    x = torch.randn(5, 160)
    with packed_linear.packed_linears(linear):
        forward = linear.forward
        monkeypatch.setattr(
            torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(args[0].shape) or packed_call(*args)
        )
        linear(x).sum().backward()  # a gradient is needed: the layer's own forward
        assert linear.weight.grad is not None and calls == []
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            assert linear(x).dtype == torch.bfloat16 and calls == []
        with torch.no_grad():
            linear(x)
            assert calls == [(5, 160)]
            linear.double()(x.double())  # float64: not packed
            assert calls == [(5, 160)]
        assert linear.forward is forward
    assert not patched(linear)
    with torch.no_grad():
        linear.float()(x)  # outside the block
    assert calls == [(5, 160)]


def test_a_weight_changed_in_place_is_packed_again():
    linear = nn.Linear(128, 128, bias=False)
    x = torch.randn(3, 128)
    with packed_linear.packed_linears(linear), torch.no_grad():
        linear(x)
        linear.weight.mul_(2)
        torch.testing.assert_close(linear(x), x @ linear.weight.T)


def test_small_and_non_linear_layers_are_left_and_own_forwards_restored():
    model = nn.Sequential(nn.Linear(576, 32), nn.Linear(32, 576), nn.Linear(576, 576), nn.Linear(576, 576).double())
    hook = model[2].forward  # an instance forward of its own, as accelerate's hooks install
    model[2].forward = hook
    with packed_linear.packed_linears(model):
        assert [patched(m) for m in model] == [False, False, True, False]
        assert model[2].forward is not hook
    assert model[2].forward is hook
    assert [patched(m) for m in model] == [False, False, True, False]


def test_the_switch_and_the_memory_guard_leave_every_layer(monkeypatch):
    linear = nn.Linear(256, 256)
    with packed_linear.packed_linears(linear):
        assert patched(linear)
    monkeypatch.setenv(kernels.SWITCH, "0")
    with packed_linear.packed_linears(linear):
        assert not patched(linear)
    monkeypatch.delenv(kernels.SWITCH)

    class Scarce:
        available = linear.weight.nbytes  # twice the copy would not fit

    monkeypatch.setattr(packed_linear.psutil, "virtual_memory", Scarce)
    with packed_linear.packed_linears(linear):
        assert not patched(linear)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generated_tokens_are_mkls(monkeypatch, num_beams):
    model = tiny_model("llama", hidden_size=128, intermediate_size=256, head_dim=32).eval()
    prompts = [[5, 17, 250, 3001, 42, 7, 9], [7, 8], [900, 901, 902, 11]]
    options = dict(max_new_tokens=24, num_beams=num_beams, batch_size=3, eos_ids={2}, pad_id=0)
    calls = []
    packed_call = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(
        torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(args[0].shape) or packed_call(*args)
    )
    packed = generate_batched(model, prompts, **options)
    assert len(calls) >= 24 * (1 + 4 * model.config.num_hidden_layers)  # q, o, gate, up, down... and the LM head
    assert not any(patched(m) for m in model.modules())
    monkeypatch.setattr(packed_linear, "available", lambda: False)
    assert packed == generate_batched(model, prompts, **options)
    assert max(map(len, packed)) > 8
