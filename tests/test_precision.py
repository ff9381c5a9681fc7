"""HypLoRA under mixed precision: every model dtype x autocast mode, values and gradients against float32.

The branch must compute in float32 whatever autocast says, return the frozen layer's dtype, and stay finite
for input norms from 0 to the dtype's largest finite value.
"""

import math
import os
from collections import OrderedDict

import pytest
import torch
from peft import get_peft_model
from torch import nn

from hyplora import HypLoraConfig
from hyplora.adapter.layer import HypLoraLinear, hyplora_forward, hyplora_forward_literal
from hyplora.harness.base_models import tiny_model

DEVICE = torch.device(os.environ.get("HYPLORA_TEST_DEVICE", "cpu"))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTOCASTS = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# x's gradient leaves the branch in the model dtype: its error is that dtype's rounding (eps = 2**-8 for bf16,
# 2**-11 for fp16) of the largest entry. The adapter's own gradients are float32 parameters: float32 noise.
X_GRAD_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2**-7, torch.float16: 2**-10}
PARAM_GRAD_RTOL = 1e-4


def autocast(dtype):
    if dtype is None:
        return torch.autocast(DEVICE.type, enabled=False)
    return torch.autocast(DEVICE.type, dtype=dtype)


def hyplora_linear(dtype, input_scaling, d_in=32, d_out=24, r=4):
    torch.manual_seed(0)
    base = nn.Sequential(OrderedDict(lin=nn.Linear(d_in, d_out))).to(DEVICE, dtype)
    config = HypLoraConfig(
        r=r, lora_alpha=8, target_modules=["lin"], input_scaling=input_scaling, learn_curvature=True
    )
    model = get_peft_model(base, config)
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0.0, 0.3)
        if input_scaling != "none":
            layer.lora_input_scale["default"].weight.fill_(0.2)
    return model, layer


def exactly_representable_weights(shape, dtype):
    """An upstream gradient that every dtype holds exactly, so only the branch's own rounding is compared."""
    return torch.linspace(-1, 1, int(torch.tensor(shape).prod())).reshape(shape).to(torch.bfloat16).to(dtype)


def branch_errors(model_dtype: str, autocast_name: str, input_scaling: str) -> dict[str, tuple[float, float]]:
    """Max |error| of the fused branch against the float32 literal form, and its tolerance, per output: `forward`
    (the branch's share of the layer output), `dx` (its share of x's gradient), `dA`, `dB`, `dK`, `ds` (the
    adapter's gradients). Forward and dx are held to the model dtype's rounding at their scale, the adapter's
    float32 gradients to 1e-4 of theirs. benchmarks/precision_matrix.py prints these for every cell."""
    dtype, amp = DTYPES[model_dtype], AUTOCASTS[autocast_name]
    model, layer = hyplora_linear(dtype, input_scaling)
    x = (torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1)) * 3).to(DEVICE, dtype).requires_grad_()
    with autocast(amp):
        out = model(x)
        result = layer.base_layer(x)
    assert out.dtype == result.dtype  # the frozen layer's output dtype under this autocast
    params = {
        "A": layer.lora_A["default"].weight,
        "B": layer.lora_B["default"].weight,
        "K": layer.lora_curvature["default"].weight,
    }
    if input_scaling != "none":
        params["s"] = layer.lora_input_scale["default"].weight
    weights = exactly_representable_weights(out.shape, out.dtype)
    grads = torch.autograd.grad((out * weights).float().sum(), [x, *params.values()])
    (base_grad_x,) = torch.autograd.grad((result * weights).float().sum(), x)

    # the literal form, float32 throughout, on the same (model-dtype) inputs and the same base output
    leaves = {name: p.detach().float().clone().requires_grad_() for name, p in params.items()}
    x32 = x.detach().float().requires_grad_()
    literal = hyplora_forward_literal(
        torch.zeros_like(result, dtype=torch.float32),
        x32,
        leaves["A"],
        leaves["B"],
        sqrt_k=torch.nn.functional.softplus(leaves["K"]).squeeze(0).sqrt(),
        scaling=layer.scaling["default"],
        input_scaling=input_scaling,
        log_scale=leaves.get("s"),
    )
    want_grads = torch.autograd.grad((literal * weights.float()).sum(), [x32, *leaves.values()])

    def max_error(got, want) -> float:
        return (got.float() - want).abs().max().item()

    out_eps = torch.finfo(out.dtype).eps
    x_scale = grads[0].float().abs().max().item()  # the branch's and the base's shares are rounded at this size
    errors = {
        "forward": (
            max_error(out.float() - result.float(), literal),
            2 * out_eps * out.float().abs().max().item() + 1e-6,
        ),
        "dx": (max_error(grads[0].float() - base_grad_x.float(), want_grads[0]), X_GRAD_RTOL[dtype] * x_scale),
    }
    for name, got, want in zip(params, grads[1:], want_grads[1:]):
        assert got.dtype == torch.float32, name
        errors[f"d{name}"] = (max_error(got, want), PARAM_GRAD_RTOL * want.abs().max().item() + 1e-6)
    return errors


@pytest.mark.parametrize("input_scaling", ["unit", "rms", "none"])
@pytest.mark.parametrize("autocast_name", list(AUTOCASTS))
@pytest.mark.parametrize("model_dtype", list(DTYPES))
def test_forward_and_gradients_equal_the_float32_literal_form(model_dtype, autocast_name, input_scaling):
    for name, (error, tolerance) in branch_errors(model_dtype, autocast_name, input_scaling).items():
        assert error <= tolerance, f"{name}: max error {error:.3g} > tolerance {tolerance:.3g}"


@pytest.mark.parametrize("input_scaling", ["unit", "rms", "none"])
@pytest.mark.parametrize("autocast_name", list(AUTOCASTS))
@pytest.mark.parametrize("model_dtype", list(DTYPES))
def test_finite_from_zero_to_the_largest_finite_input(model_dtype, autocast_name, input_scaling):
    dtype, amp = DTYPES[model_dtype], AUTOCASTS[autocast_name]
    d_in, d_out, r = 32, 24, 4
    top = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(8, d_in, generator=g)
    direction = direction / direction.abs().amax(-1, keepdim=True)  # largest entry 1: scaled below never overflows
    magnitudes = torch.tensor([0.0, torch.finfo(dtype).tiny, 1e-3, 1.0, 1e4, top / 1e4, top / 2, top])
    x = (direction * magnitudes.unsqueeze(-1)).to(DEVICE, dtype)
    x[-1, 0] = top  # a row at the largest finite value itself
    assert torch.isfinite(x).all()
    x.requires_grad_()
    a = (torch.randn(r, d_in + 1, generator=g) / d_in**0.5).to(DEVICE).requires_grad_()
    b = (torch.randn(d_out, r + 1, generator=g) * 0.3).to(DEVICE).requires_grad_()
    sqrt_k = torch.tensor(1.0, device=DEVICE, requires_grad=True)
    log_scale = torch.zeros(1, device=DEVICE, requires_grad=True)
    result = torch.zeros(8, d_out, device=DEVICE, dtype=dtype, requires_grad=True)
    with autocast(amp):
        out = hyplora_forward(
            result,
            x,
            a,
            b,
            sqrt_k=sqrt_k,
            scaling=2.0,
            input_scaling=input_scaling,
            log_scale=log_scale if input_scaling != "none" else None,
        )
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), out
    leaves = [x, a, b, sqrt_k] + ([log_scale] if input_scaling != "none" else [])
    grads = torch.autograd.grad(out.float().sum(), leaves)
    for name, grad in zip(["x", "A", "B", "K", "s"], grads):
        assert torch.isfinite(grad).all(), name


# -- real trainers under bf16 autocast on the CPU ----------------------------------------------------------------
def _autocast_probe(model):
    """Record (autocast on?, autocast dtype, output dtype) of the first adapted layer at each forward."""
    seen = []
    layer = next(module for module in model.modules() if isinstance(module, HypLoraLinear))

    def hook(module, inputs, output):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output.dtype))

    layer.register_forward_hook(hook)
    return seen


def _adapter_snapshot(model) -> dict:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def _assert_trained(before: dict, model, loss):
    assert math.isfinite(loss)
    after = _adapter_snapshot(model)
    assert after.keys() == before.keys() and len(before) > 0
    assert all(torch.isfinite(value).all() for value in after.values())
    assert any(not torch.equal(after[name], before[name]) for name in before if "lora_B" in name)


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_one_trainer_step_with_bf16_on_the_cpu(tmp_path, model_dtype):
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(
        tiny_model("llama", vocab_size=128).to(model_dtype),
        HypLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], learn_curvature=True),
    )
    probe, before = _autocast_probe(model), _adapter_snapshot(model)
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(
        tmp_path,
        bf16=True,
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": row, "labels": row} for row in ids])
    loss = trainer.train().training_loss
    assert probe and probe[0] == (True, torch.bfloat16, torch.bfloat16)  # Trainer ran the step under bf16 autocast
    _assert_trained(before, model, loss)


@pytest.mark.slow
def test_one_trl_sft_step_with_its_default_config(tmp_path, smollm2_tokenizer):
    """TRL's SFTConfig turns bf16 on by default; on the CPU it takes `use_cpu=True` (else transformers refuses)."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from hyplora import check_hyplora_layers

    config = trl.SFTConfig(tmp_path, use_cpu=True, max_steps=1, per_device_train_batch_size=2, report_to="none")
    assert config.bf16  # the default under test
    texts = ["The answer is 4 because 2 + 2 = 4.", "Paris is the capital of France.", "7 times 6 is 42."]
    trainer = trl.SFTTrainer(
        model=tiny_model("llama"),
        args=config,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=smollm2_tokenizer,
        peft_config=HypLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    check_hyplora_layers(trainer.model)  # TRL built the PEFT model from our config
    probe, before = _autocast_probe(trainer.model), _adapter_snapshot(trainer.model)
    loss = trainer.train().training_loss
    assert probe and probe[0][:2] == (True, torch.bfloat16)
    _assert_trained(before, trainer.model, loss)


@pytest.mark.parametrize(
    "cuda, bf16_supported, expected", [(True, True, "bf16"), (True, False, "fp16"), (False, False, "fp32")]
)
def test_auto_precision_is_what_a_gpu_user_expects(monkeypatch, tmp_path, cuda, bf16_supported, expected):
    from hyplora.harness.training import FineTuneRecipe, TrainArgs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert FineTuneRecipe(TrainArgs(output_dir=str(tmp_path / "run")))._precision() == expected
