"""The adapter forms llr, llr-official and stereographic: each fused branch equals a literal float64 reference
written from its formulas (values and every gradient), the release's constants, mixed precision, finiteness.

The seed form's literal test is `tests/test_adapter.py`; PEFT integration per form is in
`tests/test_peft_integration.py`.
"""

import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import get_peft_model
from torch import nn

from hyplora import HypLoraConfig
from hyplora.adapter import forms
from hyplora.adapter.layer import llr_forward, llr_official_forward, stereographic_forward
from hyplora.adapter.lorentz import MAX_TANGENT_NORM

DEVICE = torch.device(os.environ.get("HYPLORA_TEST_DEVICE", "cpu"))
D_IN, D_OUT, R, SCALING = 24, 16, 4, 2.0


# -- literal references, float64, one line per formula of the issue / the release's code ---------------------------
def llr_reference(result, x, a, b, k, scale, input_scaling):
    """y = B A x_s, x_s = sqrt(K) sinh(|u|/sqrt(K)) u/|u| (|u| clipped at sqrt(K) * 11.09, the project's expmap0);
    out = result + sqrt(K) asinh(|y|/sqrt(K)) y/|y| * alpha/r."""
    sqrt_k = k.sqrt()
    norm = x.norm(dim=-1, keepdim=True)
    if input_scaling == "rms":
        u = x * torch.exp(-scale) / math.sqrt(x.shape[-1])
    elif input_scaling == "unit":
        u = x * torch.exp(scale).clamp_max(10.0) / norm.clamp_min(1e-2)
    else:
        u = x
    u_norm = u.norm(dim=-1, keepdim=True)
    x_s = sqrt_k * torch.sinh(torch.minimum(u_norm, sqrt_k * MAX_TANGENT_NORM) / sqrt_k) * u / u_norm
    y = x_s @ a.T @ b.T
    y_norm = y.norm(dim=-1, keepdim=True)
    return result + sqrt_k * torch.asinh(y_norm / sqrt_k) * y / y_norm * SCALING


def llr_official_reference(result, x, a, b, k, s):
    """The release's `lora_type == "hyplora"` branch, line by line (K given directly: K = softplus(k) + 1e-6)."""
    x_norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    sqrt_k = k.sqrt()
    x_space = sqrt_k * torch.sinh(torch.clamp((x_norm / s) / sqrt_k, max=12.0)) * (x / x_norm)
    y = x_space @ a.T @ b.T
    time = ((y**2).sum(dim=-1, keepdim=True) + 1.0 / torch.clamp(k, min=1e-6)).sqrt()
    y_norm = y.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    theta = time / sqrt_k
    eps = torch.clamp(theta - 1.0, min=1e-6)
    arccosh = torch.where(theta < 1.01, torch.sqrt(2.0 * eps), torch.acosh(torch.clamp(theta, min=1.0 + 1e-7)))
    return result + sqrt_k * arccosh * y / y_norm * SCALING


def stereographic_reference(result, x, a, b, k):
    """The release's `lora_type == "hyplora_simplified"` branch: 2x/(1+k|x|^2), B A, lift with +k, x_s/(1+sqrt|k| x0)."""
    y = 2 * x / (1 + k * (x * x).sum(dim=-1, keepdim=True))
    z = y @ a.T @ b.T
    time = ((z**2).sum(dim=-1, keepdim=True) + k).sqrt()
    return result + z / (1 + torch.sqrt(torch.abs(k)) * time) * SCALING


# -- the fused implementations with one signature: (result, x, A, B, K, s) -----------------------------------------
def fused(form, input_scaling="rms"):
    if form == "llr":
        return lambda result, x, a, b, k, s: llr_forward(
            result, x, a, b, sqrt_k=k.sqrt(), scaling=SCALING, input_scaling=input_scaling, log_scale=s
        )
    if form == "llr-official":
        return lambda result, x, a, b, k, s: llr_official_forward(
            result, x, a, b, curvature=k, scaling=SCALING, norm_scale=s
        )
    return lambda result, x, a, b, k, s: stereographic_forward(result, x, a, b, curvature=k, scaling=SCALING)


def reference(form, input_scaling="rms"):
    if form == "llr":
        return lambda result, x, a, b, k, s: llr_reference(result, x, a, b, k, s, input_scaling)
    if form == "llr-official":
        return llr_official_reference
    return lambda result, x, a, b, k, s: stereographic_reference(result, x, a, b, k)


def branch_inputs(seed, norm, b_std=0.3, tokens=8):
    """Rows of norm `norm` (times a per-row factor in [0.5, 2]), LoRA-shaped A and B."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, D_IN, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True) * norm * 2.0 ** torch.empty(tokens, 1, dtype=torch.float64).uniform_(-1, 1)
    result = torch.randn(tokens, D_OUT, generator=g, dtype=torch.float64)
    a = torch.randn(R, D_IN, generator=g, dtype=torch.float64) / D_IN**0.5
    b = torch.randn(D_OUT, R, generator=g, dtype=torch.float64) * b_std
    return x, result, a, b


def value_and_grads(fn, tensors, dtype):
    """``fn`` on fresh leaves of ``dtype``; gradients of a fixed weighting of the output for every input but result."""
    leaves = [t.to(DEVICE, dtype).detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), leaves[1:], allow_unused=True)  # stereographic has no s
    return out.detach(), grads


def scalars(form, k, s):
    s = {"llr": s, "llr-official": math.sqrt(D_IN) * math.exp(s)}.get(form, 0.0)
    return torch.tensor(k, dtype=torch.float64), torch.tensor([s], dtype=torch.float64)


def assert_matches(got, got_grads, want, want_grads, delta, tol, form):
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * delta + tol)
    for name, g, w in zip(["x", "A", "B", "K", "s"], got_grads, want_grads):
        if w is None:
            assert g is None and form == "stereographic", name
            continue
        # relative to the gradient's largest entry; the floor covers gradients that are 0 analytically
        torch.testing.assert_close(
            g.double(), w, rtol=0, atol=30 * tol * w.abs().max().item() + tol, msg=lambda m, n=name: f"{form} {n}: {m}"
        )


@settings(max_examples=30, deadline=None)
@given(
    form=st.sampled_from(["llr", "llr-official", "stereographic"]),
    seed=st.integers(0, 2**31 - 1),
    log_norm=st.floats(-3.0, 4.0),  # |x| from 1e-3 to 1e4
    k=st.floats(0.05, 20.0),
    s=st.floats(-1.5, 1.5),  # llr: the log-scale; llr-official: s = sqrt(in) e^s
)
def test_fused_equals_the_literal_reference_in_value_and_every_gradient(form, seed, log_norm, k, s):
    """In float64 the fused maths equals the reference to 1e-9; in float32 (the layer's compute dtype) to float32
    rounding for llr and stereographic. The release's own float32 arithmetic (llr-official) loses digits near
    theta = 1, where sqrt(|y|^2 + 1/K) - 1 cancels, so its float32 comparison is left to the agreement tests."""
    x, result, a, b = branch_inputs(seed, 10.0**log_norm)
    tensors = (result, x, a, b, *scalars(form, k, s))
    want, want_grads = value_and_grads(reference(form), tensors, torch.float64)
    delta = (want - result.to(DEVICE)).abs().max().item()
    got, got_grads = value_and_grads(fused(form), tensors, torch.float64)
    assert_matches(got, got_grads, want, want_grads, delta, 1e-9, form)
    if form != "llr-official":
        got, got_grads = value_and_grads(fused(form), tensors, torch.float32)
        assert_matches(got, got_grads, want, want_grads, delta, 1e-5, form)


@pytest.mark.parametrize("input_scaling", ["none", "unit"])
def test_llr_with_its_other_input_scalings_equals_the_reference(input_scaling):
    x, result, a, b = branch_inputs(5, 3.0)
    tensors = (result, x, a, b, *scalars("llr", 0.7, 0.4))
    got, got_grads = value_and_grads(fused("llr", input_scaling), tensors, torch.float32)
    want, want_grads = value_and_grads(reference("llr", input_scaling), tensors, torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)  # 'none' has no s
        if w is not None:
            torch.testing.assert_close(g.double(), w, rtol=0, atol=3e-4 * w.abs().max().item() + 1e-7)


def official_and_llr(k, x, a, b, result):
    """Both forms at the same K, with the same tangent vector u = x/sqrt(in) (release s = sqrt(in), rms log-scale 0)."""
    k = torch.tensor(k)  # (each branch adds into a float32 `result` in place: give each its own copy)
    official = llr_official_forward(
        result.clone(), x, a, b, curvature=k, scaling=SCALING, norm_scale=torch.tensor([D_IN**0.5])
    )
    llr = llr_forward(
        result.clone(), x, a, b, sqrt_k=k.sqrt(), scaling=SCALING, input_scaling="rms", log_scale=torch.zeros(1)
    )
    return official - result, llr - result


def test_llr_and_llr_official_agree_at_k_1_where_no_clamp_holds():
    # |u| = |x|/sqrt(in) in [1, 4]: below 12 and 11.09; |y| >= 0.15, so theta = sqrt(|y|^2 + 1) >= 1.01 (acosh branch)
    x, result, a, b = (t.float() for t in branch_inputs(1, 2.5 * D_IN**0.5, b_std=0.5))
    official, llr = official_and_llr(1.0, x, a, b, torch.zeros_like(result))
    assert (llr.norm(dim=-1) / SCALING).min() > 0.15
    torch.testing.assert_close(official, llr, rtol=1e-4, atol=1e-6)


def test_llr_and_llr_official_differ_where_the_release_lift_pins_the_output():
    k = forms.RELEASE_DEFAULT_K  # hyplora-1.0
    assert k == pytest.approx(1.3132626)
    x, result, a, b = (t.float() for t in branch_inputs(2, 2.0 * D_IN**0.5, b_std=0.01))
    official, llr = official_and_llr(k, x, a, b, torch.zeros_like(result))
    y_norm = llr.norm(dim=-1) / SCALING  # asinh(|y|) ~ |y| at this size
    assert y_norm.max() < 0.5 < math.sqrt(k - 1 / k)  # theta < 1 for |y| < sqrt(K - 1/K) = 0.743
    # the release: |out| = sqrt(K) sqrt(2e-6) alpha/r = 1.62e-3 alpha/r for every token, whatever |y|
    pinned = math.sqrt(k) * math.sqrt(2e-6) * SCALING
    torch.testing.assert_close(official.norm(dim=-1), torch.full_like(y_norm, pinned), rtol=1e-5, atol=0)
    assert pinned / SCALING == pytest.approx(1.62e-3, rel=1e-2)
    # same direction as llr's, but llr's norm follows |y|
    torch.testing.assert_close(official / official.norm(dim=-1, keepdim=True), llr / llr.norm(dim=-1, keepdim=True))
    assert (llr.norm(dim=-1) / official.norm(dim=-1)).min() > 3


def test_the_release_pin_ends_where_the_lift_reaches_the_origin():
    """Output norm of llr-official against |y| at K = 1.3133: flat up to |y| = sqrt(K - 1/K) = 0.743, then rising."""
    k = torch.tensor(forms.RELEASE_DEFAULT_K)
    rho = torch.tensor([0.01, 0.3, 0.7, 0.74, 0.76, 0.9, 2.0])
    _, phi = forms.ReleaseLogmap.forward(rho**2, k)
    out_norm = phi * rho
    flat = rho < math.sqrt(k - 1 / k)
    torch.testing.assert_close(out_norm[flat], torch.full_like(out_norm[flat], math.sqrt(2e-6) * k.sqrt().item()))
    assert (out_norm[~flat].diff() > 0).all() and out_norm[~flat][0] > out_norm[flat][0]


def test_release_curvature_parametrisation_and_gradient_clamp():
    raw = torch.tensor([1.0], requires_grad=True)
    k = forms.curvature_from_raw("llr-official", raw)
    assert k.item() == pytest.approx(forms.RELEASE_DEFAULT_K, rel=1e-7)
    (100.0 * k).backward()  # dK/dk = sigmoid(1) = 0.73: the raw gradient 73 is clamped
    assert raw.grad.item() == pytest.approx(0.01)
    for form in forms.FORMS:
        value = forms.raw_from_curvature(form, 0.8)
        assert forms.curvature_from_raw(form, torch.tensor([value])).item() == pytest.approx(0.8, rel=1e-6)


def test_stereographic_sign_conventions():
    k = torch.tensor(0.5)
    radii = torch.tensor([0.1, 1.0, 1 / math.sqrt(0.5), 3.0, 100.0])
    # the map before A is the sphere's inverse stereographic projection: |y| peaks at |x| = 1/sqrt(k), with 1/sqrt(k)
    y_norm = forms.stereographic_factor(radii, torch.ones(5), k) * radii
    assert y_norm.argmax() == 2 and y_norm.max().item() == pytest.approx(1 / math.sqrt(0.5), rel=1e-6)
    torch.testing.assert_close(y_norm[-1], 2 / (0.5 * radii[-1]), rtol=1e-3, atol=0)
    # the projection after B is bounded by 1/sqrt(k) (the Poincaré radius of <x,x>_L = -1/k, not of -k)
    rho = torch.tensor([1e-3, 1.0, 1e3, 1e6])
    _, phi = forms.StereographicProjection.forward(rho**2, k)
    assert (phi * rho < 1 / math.sqrt(0.5)).all() and (phi * rho)[-1] == pytest.approx(1 / math.sqrt(0.5), rel=1e-5)
    assert phi[0].item() == pytest.approx(1 / (1 + 0.5), rel=1e-5)


@pytest.mark.parametrize("form", ["llr", "llr-official", "stereographic"])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_from_zero_to_the_largest_finite_input(form, autocast_dtype, dtype):
    top = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(8, D_IN, generator=g)
    direction = direction / direction.abs().amax(-1, keepdim=True)
    magnitudes = torch.tensor([0.0, torch.finfo(dtype).tiny, 1e-3, 1.0, 1e4, top / 1e4, top / 2, top])
    x = (direction * magnitudes.unsqueeze(-1)).to(DEVICE, dtype)
    x[-1, 0] = top
    assert torch.isfinite(x).all()
    leaves = [
        torch.zeros(8, D_OUT, device=DEVICE, dtype=dtype),
        x,
        (torch.randn(R, D_IN, generator=g) / D_IN**0.5).to(DEVICE),
        (torch.randn(D_OUT, R, generator=g) * 0.3).to(DEVICE),
        *scalars(form, 1.3, 0.0),
    ]
    leaves = [t.to(DEVICE) if t.dtype != torch.float64 else t.float().to(DEVICE) for t in leaves]
    leaves = [t.requires_grad_() for t in leaves]
    with torch.autocast(DEVICE.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = fused(form)(*leaves)
    assert out.dtype == dtype and torch.isfinite(out).all()
    grads = torch.autograd.grad(out.float().sum(), [t for t in leaves[1:] if t.requires_grad], allow_unused=True)
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("form", ["llr", "llr-official", "stereographic"])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_computes_in_float32_under_any_dtype_and_autocast(form, autocast_dtype, dtype):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(D_IN, D_OUT)).to(DEVICE, dtype)
    model = get_peft_model(base, HypLoraConfig(r=R, lora_alpha=R * SCALING, target_modules=["0"], form=form))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0.0, 0.3)
    x = (torch.randn(6, D_IN, generator=torch.Generator().manual_seed(1)) * 3).to(DEVICE, dtype)
    with torch.autocast(DEVICE.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(x)
        base_out = layer.base_layer(x)
    assert out.dtype == base_out.dtype
    params = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    grads = torch.autograd.grad(out.float().sum(), params)
    assert all(p.dtype == g.dtype == torch.float32 for p, g in zip(params, grads))
    k = layer.curvature("default").double()
    s = layer.lora_input_scale["default"].weight.double() if "default" in layer.lora_input_scale else None
    want = reference(form)(
        torch.zeros(6, D_OUT, dtype=torch.float64, device=DEVICE), x.double(), *[p.double() for p in params], k, s
    )
    eps = torch.finfo(out.dtype).eps
    torch.testing.assert_close(
        (out.float() - base_out.float()).double(), want, rtol=0, atol=2 * eps * out.float().abs().max().item() + 1e-6
    )


def test_per_form_defaults_shapes_and_parameter_counts(tmp_path):
    d_in, d_out, r = 20, 12, 4
    lora = r * (d_in + d_out)
    expected = {  # form -> (input_scaling, K, learned K, parameters)
        "seed": ("unit", 1.0, False, r * (d_in + 1) + d_out * (r + 1) + 1),
        "llr": ("rms", 1.0, False, lora + 1),
        "llr-official": ("release", forms.RELEASE_DEFAULT_K, True, lora + 2),
        "stereographic": ("none", 1.0, True, lora + 1),
    }
    for form, (scaling, k, learned, count) in expected.items():
        config = HypLoraConfig(r=r, lora_alpha=8, target_modules=["0"], form=form)
        assert (config.input_scaling, config.curvature, config.learn_curvature) == (scaling, k, learned)
        model = get_peft_model(nn.Sequential(nn.Linear(d_in, d_out)), config)
        layer = model.base_model.model[0]
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count, form
        assert layer.curvature("default").item() == pytest.approx(k, rel=1e-6)
        if form == "llr-official":
            assert layer.lora_input_scale["default"].weight.item() == pytest.approx(math.sqrt(d_in))
        model.save_pretrained(tmp_path / form)
        assert json.loads((tmp_path / form / "adapter_config.json").read_text())["form"] == form


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"form": "lorentz"}, "form"),
        ({"form": "llr-official", "input_scaling": "rms"}, "input_scaling"),
        ({"form": "stereographic", "input_scaling": "unit"}, "input_scaling"),
        ({"form": "seed", "input_scaling": "release"}, "input_scaling"),
        ({"form": "stereographic", "curvature": -0.5}, "curvature"),
    ],
)
def test_bad_form_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HypLoraConfig(r=4, target_modules=["0"], **kwargs)
