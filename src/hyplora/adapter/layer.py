r"""The HypLoRA layer: a PEFT `lora.Linear` whose adapter runs on the Lorentz manifold.

For the input ``x`` of a frozen ``nn.Linear`` (in -> out), with ``A`` of shape ``(r, in+1)`` and ``B`` of
shape ``(out, r+1)`` (column 0 of each multiplies the time coordinate), Yang et al. (arXiv:2410.04010,
eq. of the "direct Lorentz low-rank transformation") compute::

    x = dropout(x); u = input_scaling(x)
    z = expmap0(pad_zero_time(u), K)        # (in+1): on the manifold
    z = lift(A z)                           # (r+1):  back on the manifold, time = sqrt(|h|^2 + K)
    z = lift(B z)                           # (out+1)
    output = base(x) + logmap0(z)[1:] * lora_alpha / r

A naive ``logmap0(expmap0(x))`` around a Euclidean LoRA cancels to plain LoRA; here ``A`` and ``B`` act on
the time coordinate too and each result is lifted back onto the manifold, so the map is not Euclidean.

:func:`hyplora_forward` computes the same thing without building the ``(in+1)``-wide concatenation:
with ``A = [a0 | A_s]``, each row scaled to ``v = x/max|x|`` (so nothing overflows) and ``u = g v`` (``g`` a
per-token gain from the input scaling), ``n = |u|``,

.. math::
    A z = \sqrt K\cosh(n/\sqrt K)\, a_0 + \sigma\, (v A_s^\top), \qquad
    \sigma = g\,\sqrt K \sinh(n/\sqrt K)/n,

and ``logmap0(lift(y))[1:] = arsinhc(|y|/sqrt(K)) y``. Two autograd functions keep the big tensors
out of the graph: :class:`_ProjectA` (the ``A_s`` matmul and ``|x|``) and :class:`_ProjectBRadial`
(the ``B`` matmul, the log map and the residual add), whose backward never needs ``y = z B^T``.
Everything in the branch is float32 (float64 for a float64 model) whatever the model dtype or autocast.

That is the ``seed`` form (``HypLoraConfig(form="seed")``, the first release). The other forms of
:mod:`hyplora.adapter.forms` (``llr``, ``llr-official``, ``stereographic``) have LoRA's shapes, ``A (r, in)`` and
``B (out, r)``, and share the two functions: ``z = sigma (v A^T)`` with a per-token input factor ``sigma``, then
``result + scaling * phi(|y|) y`` with ``y = z B^T`` (:class:`_ProjectBRadial`, one output law per form).

Inside :func:`fused_inference` (the evaluator's generation enters it), a ``seed`` or ``llr`` branch that needs no
gradient runs on a CPU as one C++ call, ``lorentz_branch.cpp`` of :mod:`hyplora.kernels`: the same maths around
the same two GEMMs, without the ~70 small tensor operations of the autograd path (3.7x faster per layer at 64 rows).
"""

import contextlib
import contextvars
import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from hyplora import kernels
from hyplora.adapter import forms, lorentz

MERGE_ERROR = (
    "HypLoRA adapters cannot be merged into the base weights: in every form (seed, llr, llr-official, "
    "stereographic) the branch maps x through non-linear maps around A and B (e.g. logmap0(lift(B A expmap0(x)))), "
    "so no matrix W' gives W'x = Wx + delta(x). Keep the adapter unmerged (or use `unload()` to drop it). "
    "Tools that merge to export weights cannot serve a HypLoRA policy: with TRL, train without vLLM "
    "(`use_vllm=False`, TRL's default), since its vLLM weight sync merges the adapter."
)
# |x| below which 'unit' scaling stops dividing: u = x m / eps there, so du/dx <= m / eps = 1e3 and an fp16
# model's input gradient cannot overflow (at 1e-6 it reached 4e5 > 65504); LLM hidden states have |x| >> 1e-2
_UNIT_EPS = 1e-2


def tangent_scale(
    norm: torch.Tensor,
    input_scaling: str,
    log_scale: torch.Tensor | None,
    in_features: int,
    row_max: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-token gain ``g`` of the tangent vector ``u = g v`` with ``v = x/m`` (``m = row_max``, default 1), ``norm = |v|``.

    ``none``: :math:`u = x`; ``unit``: :math:`u = x\,\min(e^s, 10)/\max(|x|, 10^{-2})`; ``rms``:
    :math:`u = x\,e^{-s}/\sqrt{in}`. Written in ``v`` and ``m`` so that no ``|x| = m|v|`` is formed: it
    overflows float32 for ``|x| > 3.4e38`` while ``|v| <= sqrt(in)``.
    """
    m = torch.ones_like(norm) if row_max is None else row_max
    if input_scaling == "none":
        return m
    if input_scaling == "unit":
        return log_scale.exp().clamp_max(10.0) / torch.maximum(norm, _UNIT_EPS / m)
    if input_scaling == "rms":
        return (-log_scale).exp() / math.sqrt(in_features) * m
    raise ValueError(f"unknown input_scaling {input_scaling!r}")


class _ProjectA(torch.autograd.Function):
    """``(x, A_s, 1/m) -> (v A_s^T, |v|)`` row-wise with ``v = x/m``; ``v`` is recomputed in the backward, not saved.

    The backward adds the norm's gradient to ``dx`` in place; ``m`` is a constant (see :func:`hyplora_forward`).
    """

    @staticmethod
    def forward(ctx, x, weight_space, inv_max):
        v = x * inv_max.unsqueeze(-1)
        norm = torch.linalg.vector_norm(v, dim=-1)
        ctx.save_for_backward(x, weight_space, inv_max, norm)
        return F.linear(v, weight_space), norm

    @staticmethod
    def backward(ctx, grad_va, grad_norm):
        x, weight_space, inv_max, norm = ctx.saved_tensors
        v = x * inv_max.unsqueeze(-1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_v = grad_va @ weight_space
            if grad_norm is not None:  # d|v|/dv = v/|v|, and 0 at v = 0
                grad_v.addcmul_(v, torch.where(norm > 0, grad_norm / norm, 0.0).unsqueeze(-1))
            grad_x = grad_v.mul_(inv_max.unsqueeze(-1))
        if ctx.needs_input_grad[1]:
            grad_w = grad_va.T @ v
        return grad_x, grad_w, None


class _ProjectBRadial(torch.autograd.Function):
    r"""``result + scaling * phi(|y|) * y`` with ``y = z B^T`` and ``phi`` one of the output laws of
    :mod:`hyplora.adapter.forms` (``law``, with its scalar ``param``: sqrt(K), K or k).

    With ``exact_norm=False`` ``y`` is never formed: row-wise :math:`\phi\,y = (\phi z) B^\top` and
    :math:`|y|^2 = z\,(B^\top B)\,z^\top` from the ``r``-square Gram matrix, so the forward is one GEMM
    accumulating into ``result`` (in place when ``result`` is float32); that needs a ``phi`` flat at 0, where the
    Gram form's rounding of small ``|y|`` does not matter. ``exact_norm=True`` forms ``y`` (LoRA's own cost) for
    laws that are not. With :math:`G = g B` (``g`` the output gradient), :math:`y\cdot g = \sum z \odot G` and
    :math:`\kappa = s\,\phi'(\rho)/\rho\,(y\cdot g)` from the law: :math:`\partial z = s\phi G + \kappa\,
    z B^\top B`, :math:`\partial B = s g^\top(\phi z) + B\, z^\top(\kappa z)`; the law gives
    :math:`\partial\,\mathrm{param}`. The backward never needs ``y``.
    """

    @staticmethod
    def forward(ctx, result, z, weight, param, scaling, law, exact_norm):
        if exact_norm:
            y = z @ weight.T
            rho_sq = (y * y).sum(-1)
        else:
            z_gram = z @ (weight.T @ weight)
            rho_sq = (z_gram * z).sum(-1)
        saved, factor = law.forward(rho_sq, param)
        phi = scaling * factor
        ctx.save_for_backward(z, weight, param, saved, phi)  # z B^T B is recomputed: r^2 per token
        ctx.scaling, ctx.law = scaling, law
        rows = (-1, result.shape[-1])
        inplace = result.dtype == z.dtype and result.is_contiguous() and result._base is None
        if inplace and not (result.is_leaf and result.requires_grad):
            ctx.mark_dirty(result)  # the frozen layer's output is not needed by its own backward
            if exact_norm:
                result.view(rows).addcmul_(phi.unsqueeze(-1), y)
            else:
                result.view(rows).addmm_(phi.unsqueeze(-1) * z, weight.T)
            return result
        base = result.reshape(rows).to(z.dtype)
        if exact_norm:
            out = torch.addcmul(base, phi.unsqueeze(-1), y)
        else:
            out = torch.addmm(base, phi.unsqueeze(-1) * z, weight.T)
        return out.to(result.dtype).view(result.shape)

    @staticmethod
    def backward(ctx, grad_out):
        z, weight, param, saved, phi = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(z.dtype)
        g_b = g @ weight  # (T, r)
        kappa, grad_param = ctx.law.backward(saved, param, ctx.scaling, (z * g_b).sum(-1))
        kappa = kappa.unsqueeze(-1)
        grad_z = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_z = torch.addcmul(kappa * (z @ (weight.T @ weight)), phi.unsqueeze(-1), g_b)
        if ctx.needs_input_grad[2]:
            grad_w = torch.addmm(weight @ (z.T @ (kappa * z)), g.T, phi.unsqueeze(-1) * z)
        if not ctx.needs_input_grad[3]:
            grad_param = None
        return grad_out, grad_z, grad_w, grad_param, None, None, None


def _in_compute_dtype(x: torch.Tensor, *tensors: torch.Tensor | None) -> tuple:
    """``x`` and ``tensors`` (None passes through) in ``lorentz.compute_dtype(x)``: float32, float64 for a float64 model."""
    dtype = lorentz.compute_dtype(x)
    return tuple(None if t is None else t.to(dtype) for t in (x, *tensors))


def without_autocast(branch):
    """Run ``branch(result, x, ...)`` with autocast off on ``x``'s device: it computes in its own dtype.

    Under autocast, ops inside an autograd Function's forward are still cast (``F.linear`` to bf16) while its
    saved float32 weights are not, and the backward then mixes dtypes; the branch casts explicitly instead.
    """

    @functools.wraps(branch)
    def run(result, x, *args, **kwargs):
        if not torch.is_autocast_enabled(x.device.type):
            return branch(result, x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return branch(result, x, *args, **kwargs)

    return run


def _rows_through_a(x: torch.Tensor, weight_space: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(v A^T, |v|, m)`` for the rows of a 2-d ``x``, ``v = x/m``, ``m`` the row's largest entry (a constant).

    Scaling by ``m`` keeps every norm and matmul finite for any finite ``x``; the branch depends on ``x`` only
    through ``v`` and ``|v|`` (and the constant ``m``), so the gradient is exact.
    """
    row_max = x.detach().abs().amax(-1).clamp_min(torch.finfo(x.dtype).tiny)
    va, norm = _ProjectA.apply(x, weight_space, row_max.reciprocal())
    return va, norm, row_max


def _tangent_expmap0(norm, row_max, sqrt_k, input_scaling, log_scale, in_features):
    """``(time, sigma)`` of ``expmap0((0, u))`` for ``u = input_scaling(x)``, with ``expmap0_s = sigma v``."""
    gain = tangent_scale(norm, input_scaling, log_scale, in_features, row_max)
    return lorentz.expmap0_scalars(norm, sqrt_k, gain)


@without_autocast
def hyplora_forward(
    result: torch.Tensor,
    x: torch.Tensor,
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    *,
    sqrt_k: torch.Tensor,
    scaling: float,
    input_scaling: str,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``seed``: ``result + delta(x)`` of the module docstring, fused; ``x`` already dropped out. Shapes ``(..., in)``."""
    x, weight_a, weight_b, sqrt_k, log_scale = _in_compute_dtype(
        x.reshape(-1, x.shape[-1]), weight_a, weight_b, sqrt_k, log_scale
    )
    va, norm, row_max = _rows_through_a(x, weight_a[:, 1:])
    time, space_scale = _tangent_expmap0(norm, row_max, sqrt_k, input_scaling, log_scale, x.shape[-1])
    h = torch.addcmul(time.unsqueeze(-1) * weight_a[:, 0], space_scale.unsqueeze(-1), va)
    z = torch.cat([((h * h).sum(-1, keepdim=True) + sqrt_k * sqrt_k).sqrt(), h], dim=-1)
    return _ProjectBRadial.apply(result, z, weight_b, sqrt_k, scaling, forms.LogmapOfLift, False)


@without_autocast
def llr_forward(
    result: torch.Tensor,
    x: torch.Tensor,
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    *,
    sqrt_k: torch.Tensor,
    scaling: float,
    input_scaling: str,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``llr``: ``result + sqrt(K) asinh(|y|/sqrt(K)) y/|y| * scaling``, ``y = B A expmap0((0, u))_s``. A ``(r, in)``."""
    x, weight_a, weight_b, sqrt_k, log_scale = _in_compute_dtype(
        x.reshape(-1, x.shape[-1]), weight_a, weight_b, sqrt_k, log_scale
    )
    va, norm, row_max = _rows_through_a(x, weight_a)
    _, space_scale = _tangent_expmap0(norm, row_max, sqrt_k, input_scaling, log_scale, x.shape[-1])
    z = space_scale.unsqueeze(-1) * va
    return _ProjectBRadial.apply(result, z, weight_b, sqrt_k, scaling, forms.LogmapOfLift, False)


@without_autocast
def llr_official_forward(
    result: torch.Tensor,
    x: torch.Tensor,
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    *,
    curvature: torch.Tensor,
    scaling: float,
    norm_scale: torch.Tensor,
) -> torch.Tensor:
    """``llr-official``: the release's ``hyplora`` branch (:func:`forms.release_expmap_factor`, ``B A``,
    :class:`forms.ReleaseLogmap`), ``curvature`` = K, ``norm_scale`` = s. A ``(r, in)``, B ``(out, r)``."""
    x, weight_a, weight_b, curvature, norm_scale = _in_compute_dtype(
        x.reshape(-1, x.shape[-1]), weight_a, weight_b, curvature, norm_scale
    )
    va, norm, row_max = _rows_through_a(x, weight_a)
    z = forms.release_expmap_factor(norm, row_max, norm_scale, curvature).unsqueeze(-1) * va
    return _ProjectBRadial.apply(result, z, weight_b, curvature, scaling, forms.ReleaseLogmap, True)


@without_autocast
def stereographic_forward(
    result: torch.Tensor,
    x: torch.Tensor,
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    *,
    curvature: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """``stereographic``: the release's ``hyplora_simplified`` (:func:`forms.stereographic_factor`, ``B A``,
    :class:`forms.StereographicProjection`), ``curvature`` = k. A ``(r, in)``, B ``(out, r)``."""
    x, weight_a, weight_b, curvature = _in_compute_dtype(x.reshape(-1, x.shape[-1]), weight_a, weight_b, curvature)
    va, norm, row_max = _rows_through_a(x, weight_a)
    z = forms.stereographic_factor(norm, row_max, curvature).unsqueeze(-1) * va
    return _ProjectBRadial.apply(result, z, weight_b, curvature, scaling, forms.StereographicProjection, False)


_FUSED_INFERENCE = contextvars.ContextVar("hyplora_fused_inference", default=False)
_INPUT_SCALING_CODES = {"none": 0, "unit": 1, "rms": 2}  # lorentz_branch.cpp's codes


@contextlib.contextmanager
def fused_inference():
    """Within the block, ``seed`` and ``llr`` branches run as one C++ call (:func:`fused_branch`) where no gradient is
    needed and everything is float32 on a CPU without autocast. A no-op where the kernels cannot be built."""
    token = _FUSED_INFERENCE.set(kernels.extension() is not None)
    try:
        yield
    finally:
        _FUSED_INFERENCE.reset(token)


def _fused_applies(*tensors: torch.Tensor) -> bool:
    return _FUSED_INFERENCE.get() and kernels.cpu_float32_inference(*tensors)


def fused_branch(
    result: torch.Tensor,
    x: torch.Tensor,
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    *,
    seed: bool,
    sqrt_k: torch.Tensor,
    scaling: float,
    input_scaling: str,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`hyplora_forward` (``seed=True``) or :func:`llr_forward` without autograd, from ``lorentz_branch.cpp``:
    float32 CPU tensors, ``result`` updated in place when contiguous. ``|y|`` is formed exactly (not the Gram form)."""
    out = result.reshape(-1, result.shape[-1]).contiguous()
    kernels.extension().lorentz_branch_(
        out,
        x.reshape(-1, x.shape[-1]).contiguous(),
        weight_a,
        weight_b,
        seed,
        float(sqrt_k),
        float(scaling),
        _INPUT_SCALING_CODES[input_scaling],
        0.0 if log_scale is None else float(log_scale),
        lorentz.MAX_TANGENT_NORM,
        _UNIT_EPS,
        lorentz.TAYLOR_BELOW,
    )
    return out.view(result.shape)


@without_autocast
def hyplora_forward_literal(
    result: torch.Tensor,
    x: torch.Tensor,
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    *,
    sqrt_k: torch.Tensor,
    scaling: float,
    input_scaling: str,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The module docstring's computation written out with concatenations: the reference for tests and benchmarks."""
    x, weight_a, weight_b, sqrt_k, log_scale = _in_compute_dtype(x, weight_a, weight_b, sqrt_k, log_scale)
    k = sqrt_k**2
    u = tangent_scale(x.norm(dim=-1), input_scaling, log_scale, x.shape[-1]).unsqueeze(-1) * x
    z = lorentz.expmap0(lorentz.pad_zero_time(u), k=k)
    z = lorentz.lift(F.linear(z, weight_a), k=k)
    z = lorentz.lift(F.linear(z, weight_b), k=k)
    delta = lorentz.logmap0(z, k=k)[..., 1:] * scaling
    return (result.to(x.dtype) + delta).to(result.dtype)


class ScalarParameter(nn.Module):
    """One learnable scalar in a module with a `.weight`, so PEFT toggles, saves and FSDP-wraps it like `lora_A`."""

    def __init__(self, value: float, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([float(value)], dtype=torch.float32, device=device))


class HypLoraLinearVariant(LoraVariant):
    """PEFT variant hooks: shape A and B for the adapter's form, add its scalars, run its branch, refuse merges."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: "HypLoraLinear", adapter_name: str, config=None, **kwargs: Any) -> None:
        old = module.lora_A[adapter_name].weight
        form = config.form
        if form == "seed":  # the +1 columns multiply the time coordinate; the other forms keep LoRA's shapes
            r, factory = module.r[adapter_name], {"device": old.device, "dtype": old.dtype}
            module.lora_A[adapter_name] = nn.Linear(module.in_features + 1, r, bias=False, **factory)
            module.lora_B[adapter_name] = nn.Linear(r + 1, module.out_features, bias=False, **factory)
            module.reset_lora_parameters(adapter_name, config.init_lora_weights)
        module.hyplora_form[adapter_name] = form
        module.hyplora_curvature[adapter_name] = float(config.curvature)
        module.hyplora_input_scaling[adapter_name] = config.input_scaling
        if config.learn_curvature:  # the raw k that forms.curvature_from_raw maps to K
            raw = forms.raw_from_curvature(form, config.curvature)
            module.lora_curvature[adapter_name] = ScalarParameter(raw, device=old.device)
        if config.input_scaling in ("unit", "rms"):  # log-scale s, from 0
            module.lora_input_scale[adapter_name] = ScalarParameter(0.0, device=old.device)
        elif config.input_scaling == "release":  # the release's s itself, from sqrt(in)
            module.lora_input_scale[adapter_name] = ScalarParameter(math.sqrt(module.in_features), device=old.device)

    # the computation per form; benchmarks swap in `hyplora_forward_literal` for the seed
    branches = {
        "seed": hyplora_forward,
        "llr": llr_forward,
        "llr-official": llr_official_forward,
        "stereographic": stereographic_forward,
    }

    @classmethod
    def forward(cls, module: "HypLoraLinear", active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs):
        form = module.hyplora_form[active_adapter]
        scale = module.lora_input_scale[active_adapter].weight if active_adapter in module.lora_input_scale else None
        inputs = (
            result,
            module.lora_dropout[active_adapter](x),
            module.lora_A[active_adapter].weight,
            module.lora_B[active_adapter].weight,
        )
        curvature = module.curvature(active_adapter)
        if form in ("seed", "llr"):
            options = {
                "sqrt_k": curvature.sqrt(),
                "input_scaling": module.hyplora_input_scaling[active_adapter],
                "log_scale": scale,
            }
            if _fused_applies(*inputs):
                return fused_branch(*inputs, seed=form == "seed", scaling=module.scaling[active_adapter], **options)
        elif form == "llr-official":
            options = {"curvature": curvature, "norm_scale": scale}
        else:
            options = {"curvature": curvature}
        return cls.branches[form](*inputs, scaling=module.scaling[active_adapter], **options)

    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        raise NotImplementedError(MERGE_ERROR)

    @staticmethod
    def merge_unsafe(module, active_adapter, orig_weight):
        raise NotImplementedError(MERGE_ERROR)

    @staticmethod
    def unmerge(module, active_adapter, orig_weight):
        raise NotImplementedError(MERGE_ERROR)


class HypLoraLinear(LoraLinear):
    """`lora.Linear` that gives HypLoRA configs the HypLoRA variant and plain LoRA configs stock behaviour."""

    adapter_layer_names = LoraLinear.adapter_layer_names + ("lora_curvature", "lora_input_scale")
    other_param_names = LoraLinear.other_param_names + ("hyplora_form", "hyplora_curvature", "hyplora_input_scaling")

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if "lora_curvature" not in self._modules:  # first adapter: containers that set_adapter/state_dict expect
            self.lora_curvature, self.lora_input_scale = nn.ModuleDict(), nn.ModuleDict()
            self.hyplora_form, self.hyplora_curvature, self.hyplora_input_scaling = {}, {}, {}
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config, **kwargs):
        if getattr(config, "use_hyplora", False):
            return HypLoraLinearVariant()
        return super().resolve_lora_variant(config=config, **kwargs)

    def curvature(self, adapter_name: str) -> torch.Tensor:
        """K of an adapter (every form): from its learned k (:func:`forms.curvature_from_raw`), else the constant."""
        if adapter_name in self.lora_curvature:
            return forms.curvature_from_raw(self.hyplora_form[adapter_name], self.lora_curvature[adapter_name].weight)
        return torch.tensor(self.hyplora_curvature[adapter_name], device=self.lora_A[adapter_name].weight.device)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        for name in check_adapters_to_merge(self, adapter_names):  # refuse before touching any weight
            if isinstance(self.lora_variant.get(name), HypLoraLinearVariant):
                raise NotImplementedError(MERGE_ERROR)
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def get_delta_weight(self, adapter) -> torch.Tensor:
        if isinstance(self.lora_variant.get(adapter), HypLoraLinearVariant):
            raise NotImplementedError(MERGE_ERROR)
        return super().get_delta_weight(adapter)

    def __repr__(self) -> str:
        return "hyplora." + super().__repr__()


def dispatch_hyplora(target: nn.Module, adapter_name: str, config, **kwargs) -> nn.Module:
    """PEFT custom-module dispatcher: every targeted module becomes a `HypLoraLinear`, or the injection fails.

    Registered for `nn.Module` so that no targeted layer can fall through to a backend (GPTQ, HQQ, AWQ...)
    that would silently build plain LoRA. bitsandbytes `Linear4bit`/`Linear8bitLt` subclass `nn.Linear`
    and are supported.
    """
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, nn.Linear):
        return HypLoraLinear(target, adapter_name, config=config, **kwargs)
    raise TypeError(
        f"HypLoRA adapts nn.Linear layers only; target `{kwargs.get('target_name', '?')}` is "
        f"{type(base).__module__}.{type(base).__name__}. Remove it from `target_modules` or use plain LoRA for it."
    )
