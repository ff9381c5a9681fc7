"""The C++ kernels: one extension (one warning where it cannot be built, a switch, a build per kind of CPU), and the
fused HypLoRA branch: the autograd branch's results for the seed and llr forms, finite for any finite input, used
only where no gradient is needed inside `fused_inference`, and the same greedy tokens through `generate_batched`."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import get_peft_model
from torch import nn

from hyplora import HypLoraConfig, kernels
from hyplora.adapter import layer
from hyplora.harness import decode_attention
from hyplora.harness.base_models import tiny_model
from hyplora.harness.generation import generate_batched


@pytest.fixture(scope="module")
def extension():
    built = kernels.extension()
    assert built is not None, "the kernels must build here (a C++ compiler and ninja are in the test setup)"
    return built


def branch_inputs(generator, seed_form, rows, d_in, d_out, rank, magnitude, weight_scale):
    x = magnitude * (2 * torch.rand(rows, d_in, generator=generator) - 1)
    result = torch.randn(rows, d_out, generator=generator)
    weight_a = weight_scale * torch.randn(rank, d_in + seed_form, generator=generator)
    weight_b = weight_scale * torch.randn(d_out, rank + seed_form, generator=generator)
    return result, x, weight_a, weight_b


@settings(max_examples=80, deadline=None)
@given(
    seed_form=st.booleans(),
    rows=st.integers(0, 40),
    d_in=st.integers(1, 40),
    d_out=st.integers(1, 40),
    rank=st.integers(1, 8),
    input_scaling=st.sampled_from(["none", "unit", "rms"]),
    curvature=st.floats(0.05, 20.0),
    log_scale=st.floats(-3.0, 3.0),
    magnitude=st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 30.0, 1e30, 3e38]),
    weight_scale=st.sampled_from([0.02, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_fused_branch_is_the_autograd_branch(
    extension, seed_form, rows, d_in, d_out, rank, input_scaling, curvature, log_scale, magnitude, weight_scale, seed
):
    generator = torch.Generator().manual_seed(seed)
    inputs = branch_inputs(generator, seed_form, rows, d_in, d_out, rank, magnitude, weight_scale)
    options = dict(sqrt_k=torch.tensor(curvature).sqrt(), scaling=2.0, input_scaling=input_scaling)
    options["log_scale"] = torch.tensor([log_scale])
    autograd_branch = layer.hyplora_forward if seed_form else layer.llr_forward
    exact = autograd_branch(*(t.double() for t in inputs), **options)
    with torch.no_grad():
        reference = autograd_branch(inputs[0].clone(), *inputs[1:], **options)
        result = inputs[0].clone()
        got = layer.fused_branch(result, *inputs[1:], seed=seed_form, **options)
    assert got.data_ptr() == result.data_ptr()  # in place
    assert torch.isfinite(got).all()
    # float32 rounding of z B^T: bounded by eps |z| |B| per entry; the delta's scale stands in for it
    tolerance = 2e-5 * (1 + (exact - inputs[0].double()).abs().max().item()) if rows else 0.0
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=tolerance)
    torch.testing.assert_close(reference.double(), exact, rtol=1e-6, atol=tolerance)  # the autograd path's own error


def adapted_linear(form, dtype=torch.float32):
    torch.manual_seed(0)
    config = HypLoraConfig(r=4, lora_alpha=8, target_modules=["0"], form=form, init_lora_weights=False)
    return get_peft_model(nn.Sequential(nn.Linear(12, 10)), config).to(dtype)


def count_fused_calls(monkeypatch):
    calls = []
    fused = layer.fused_branch
    monkeypatch.setattr(layer, "fused_branch", lambda *a, **k: calls.append(k["seed"]) or fused(*a, **k))
    return calls


def test_only_inference_inside_the_block_runs_fused(extension, monkeypatch):
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(3, 5, 12)
    for form in ("seed", "llr"):
        model = adapted_linear(form)
        expected = model(x)
        with layer.fused_inference():
            with torch.no_grad():
                torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
            assert calls == [form == "seed"]
            model(x).sum().backward()  # training: the autograd path
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(x)
        with torch.no_grad():
            model(x)  # outside the block
        assert len(calls) == 1
        calls.clear()
    with layer.fused_inference(), torch.no_grad():
        adapted_linear("seed", torch.bfloat16)(x.bfloat16())  # not float32
        adapted_linear("seed", torch.float64)(x.double())
        adapted_linear("llr-official")(x)  # forms without a kernel
        adapted_linear("stereographic")(x)
    assert calls == []


@pytest.mark.parametrize("form", ["seed", "llr"])
def test_generated_tokens_are_the_autograd_branchs(extension, form, monkeypatch):
    torch.manual_seed(0)
    config = HypLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], form=form)
    config.init_lora_weights = False  # a nonzero B: the branch changes the tokens
    model = get_peft_model(tiny_model("llama", head_dim=64), config).eval()
    prompts = [[5, 17, 250, 3001, 42, 7, 9], [7, 8], [900, 901, 902, 11]]
    options = dict(max_new_tokens=20, num_beams=1, batch_size=3, eos_ids={2}, pad_id=0)
    calls = count_fused_calls(monkeypatch)
    fused = generate_batched(model, prompts, **options)
    assert len(calls) >= 20 * 3 * model.config.num_hidden_layers  # every adapted layer of prefill and each step
    with torch.no_grad():
        plain = model.base_model.model(torch.tensor([prompts[0]])).logits
    with model.disable_adapter(), torch.no_grad():
        assert not torch.allclose(model.base_model.model(torch.tensor([prompts[0]])).logits, plain)  # the adapter acts
    monkeypatch.setattr(kernels, "extension", lambda: None)
    assert fused == generate_batched(model, prompts, **options)
    assert max(map(len, fused)) > 8


def test_nothing_is_built_for_a_model_that_is_not_float32_on_a_cpu(monkeypatch):
    built = []
    monkeypatch.setattr(kernels, "extension", lambda: built.append(1))  # a GPU or bf16 run must not compile C++
    for dtype in (torch.bfloat16, torch.float64):
        model = tiny_model("llama", head_dim=64).to(dtype)
        with decode_attention.decoding_kernel(model), torch.no_grad():
            assert model.config._attn_implementation == "sdpa"
    assert built == []


def test_kernels_that_cannot_be_built_warn_once_and_leave_pytorch(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    calls = count_fused_calls(monkeypatch)
    kernels.extension.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not be built, PyTorch's own operations are used.*Ninja is req"):
            assert kernels.extension() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert kernels.extension() is None  # cached: no second warning
            model = tiny_model("llama", head_dim=64)
            with decode_attention.decoding_kernel(model), torch.no_grad():
                assert model.config._attn_implementation == "sdpa"
                adapted_linear("seed")(torch.randn(2, 12))
        assert calls == []
    finally:
        kernels.extension.cache_clear()


def test_kernels_build_with_openmp_first_and_without_it_where_the_compiler_lacks_it(monkeypatch):
    from torch.utils import cpp_extension

    tried = []

    def no_openmp(name, sources, extra_cflags, extra_ldflags, verbose):
        tried.append(("-fopenmp" in extra_cflags, "-fopenmp" in extra_ldflags))
        if "-fopenmp" in extra_cflags:
            raise RuntimeError("unsupported option '-fopenmp'")
        return "built on one thread"

    monkeypatch.setattr(cpp_extension, "load", no_openmp)
    monkeypatch.setattr(kernels.sys, "platform", "linux")
    kernels.extension.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert kernels.extension() == "built on one thread"
        assert tried == [(True, True), (False, False)]
    finally:
        kernels.extension.cache_clear()


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "0")
    kernels.extension.cache_clear()
    try:
        assert kernels.extension() is None
    finally:
        kernels.extension.cache_clear()


def test_each_kind_of_cpu_gets_its_own_build(extension, monkeypatch):
    # a -march=native build must not be loaded by another CPU sharing the cache (a cluster's home directory)
    assert extension.__name__ == kernels.build_name()
    names = set()
    for flags in ("flags\t: fpu sse2 avx2 fma", "flags\t: fpu sse2 avx2 fma avx512f"):
        monkeypatch.setattr(kernels.Path, "read_text", lambda self, flags=flags: f"processor\t: 0\n{flags}\n")
        names.add(kernels.build_name())
    assert len(names) == 2
