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
out of the graph: :class:`_ProjectA` (the ``A_s`` matmul and ``|x|``) and :class:`_ProjectBLogmap`
(the ``B`` matmul, the log map and the residual add), whose backward never needs ``y = z B^T``.
Everything in the branch is float32 (float64 for a float64 model) whatever the model dtype or autocast.
"""

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora.layer import LoraVariant
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from hyplora.adapter import lorentz

MERGE_ERROR = (
    "HypLoRA adapters cannot be merged into the base weights: the branch x -> logmap0(lift(B lift(A expmap0(x)))) "
    "is not linear in x, so no matrix W' gives W'x = Wx + delta(x). Keep the adapter unmerged (or use "
    "`unload()` to drop it)."
)
# |x| below which 'unit' scaling stops dividing: u = x m / eps there, so du/dx <= m / eps = 1e3 and an fp16
# model's input gradient cannot overflow (at 1e-6 it reached 4e5 > 65504); LLM hidden states have |x| >> 1e-2
_UNIT_EPS = 1e-2
_PSI_TAYLOR_BELOW = 0.1


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


def arsinhc_slope(t: torch.Tensor) -> torch.Tensor:
    r""":math:`\psi(t) = \frac{d}{dt}\operatorname{arsinhc}(t) / t = (1/\sqrt{1+t^2} - \operatorname{arsinh}(t)/t)/t^2`.

    Series :math:`-1/3 + 3t^2/10 - 15t^4/56` below 0.1, where the closed form cancels.
    """
    small = t.abs() < _PSI_TAYLOR_BELOW
    t_safe = torch.where(small, torch.ones_like(t), t)
    t2 = t * t
    series = -1.0 / 3.0 + t2 * (0.3 - t2 * (15.0 / 56.0))
    closed = (torch.rsqrt(1.0 + t_safe * t_safe) - torch.asinh(t_safe) / t_safe) / (t_safe * t_safe)
    return torch.where(small, series, closed)


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


class _ProjectBLogmap(torch.autograd.Function):
    r"""``result + scaling * arsinhc(|y|/a) * y`` with ``y = z B^T`` and ``a = sqrt(K)``, never forming ``y``.

    Row-wise :math:`\phi\,y = (\phi z) B^\top`, and :math:`|y|^2 = z\,(B^\top B)\,z^\top` from the
    ``(r+1)``-square Gram matrix, so the forward is one GEMM accumulating into ``result`` (in place when
    ``result`` is float32). :math:`\phi = s\,\operatorname{arsinhc}(w)` is flat at 0, so the Gram form's
    rounding for small ``|y|`` does not matter. With :math:`G = g B`, :math:`y\cdot g = \sum z \odot G` and
    :math:`\kappa = s\,\psi(w)(y\cdot g)/a^2`: :math:`\partial z = \phi G + \kappa\, z B^\top B`,
    :math:`\partial B = g^\top(\phi z) + B\, z^\top(\kappa z)`, :math:`\partial a = -\sum s\, w^2\psi(w)(y\cdot g)/a`.
    """

    @staticmethod
    def forward(ctx, result, z, weight, sqrt_k, scaling):
        z_gram = z @ (weight.T @ weight)
        w = (z_gram * z).sum(-1).clamp_min(0.0).sqrt() / sqrt_k
        phi = scaling * lorentz.arsinhc(w)
        ctx.save_for_backward(z, weight, sqrt_k, w, phi)  # z B^T B is recomputed: (r+1)^2 per token
        ctx.scaling = scaling
        rows = (-1, result.shape[-1])
        inplace = result.dtype == z.dtype and result.is_contiguous() and result._base is None
        if inplace and not (result.is_leaf and result.requires_grad):
            ctx.mark_dirty(result)  # the frozen layer's output is not needed by its own backward
            result.view(rows).addmm_(phi.unsqueeze(-1) * z, weight.T)
            return result
        out = torch.addmm(result.reshape(rows).to(z.dtype), phi.unsqueeze(-1) * z, weight.T)
        return out.to(result.dtype).view(result.shape)

    @staticmethod
    def backward(ctx, grad_out):
        z, weight, sqrt_k, w, phi = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(z.dtype)
        g_b = g @ weight  # (T, r+1)
        psi_yg = ctx.scaling * arsinhc_slope(w) * (z * g_b).sum(-1)
        kappa = (psi_yg / (sqrt_k * sqrt_k)).unsqueeze(-1)
        grad_z = grad_w = grad_sqrt_k = None
        if ctx.needs_input_grad[1]:
            grad_z = torch.addcmul(kappa * (z @ (weight.T @ weight)), phi.unsqueeze(-1), g_b)
        if ctx.needs_input_grad[2]:
            grad_w = torch.addmm(weight @ (z.T @ (kappa * z)), g.T, phi.unsqueeze(-1) * z)
        if ctx.needs_input_grad[3]:
            grad_sqrt_k = -(w * w * psi_yg).sum() / sqrt_k
        return grad_out, grad_z, grad_w, grad_sqrt_k, None


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
    """``result + delta(x)`` of the module docstring, fused; ``x`` already dropped out. Shapes ``(..., in)``.

    Each row is divided by its largest entry ``m`` (a constant for autograd: the branch depends on ``x`` only
    through ``u``, so the gradient is exact), so no norm or matmul overflows for any finite ``x``.
    """
    x, weight_a, weight_b, sqrt_k, log_scale = _in_compute_dtype(
        x.reshape(-1, x.shape[-1]), weight_a, weight_b, sqrt_k, log_scale
    )
    row_max = x.detach().abs().amax(-1).clamp_min(torch.finfo(x.dtype).tiny)
    va, norm = _ProjectA.apply(x, weight_a[:, 1:], row_max.reciprocal())
    gain = tangent_scale(norm, input_scaling, log_scale, x.shape[-1], row_max)
    time, space_scale = lorentz.expmap0_scalars(norm, sqrt_k, gain)
    h = torch.addcmul(time.unsqueeze(-1) * weight_a[:, 0], space_scale.unsqueeze(-1), va)
    z = torch.cat([((h * h).sum(-1, keepdim=True) + sqrt_k * sqrt_k).sqrt(), h], dim=-1)
    return _ProjectBLogmap.apply(result, z, weight_b, sqrt_k, scaling)


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
    """PEFT variant hooks: reshape A and B to act on Lorentz points, run :func:`hyplora_forward`, refuse merges."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: "HypLoraLinear", adapter_name: str, config=None, **kwargs: Any) -> None:
        old = module.lora_A[adapter_name].weight
        r, factory = module.r[adapter_name], {"device": old.device, "dtype": old.dtype}
        # The +1 columns multiply the time coordinate (eq. of the Lorentz low-rank transformation).
        module.lora_A[adapter_name] = nn.Linear(module.in_features + 1, r, bias=False, **factory)
        module.lora_B[adapter_name] = nn.Linear(r + 1, module.out_features, bias=False, **factory)
        module.reset_lora_parameters(adapter_name, config.init_lora_weights)
        module.hyplora_curvature[adapter_name] = float(config.curvature)
        module.hyplora_input_scaling[adapter_name] = config.input_scaling
        if config.learn_curvature:  # K = softplus(k), so k starts at softplus^-1(K)
            raw = math.log(math.expm1(config.curvature))
            module.lora_curvature[adapter_name] = ScalarParameter(raw, device=old.device)
        if config.input_scaling != "none":
            module.lora_input_scale[adapter_name] = ScalarParameter(0.0, device=old.device)

    branch = staticmethod(hyplora_forward)  # the computation; benchmarks swap in `hyplora_forward_literal`

    @classmethod
    def forward(cls, module: "HypLoraLinear", active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs):
        scale = module.lora_input_scale[active_adapter].weight if active_adapter in module.lora_input_scale else None
        return cls.branch(
            result,
            module.lora_dropout[active_adapter](x),
            module.lora_A[active_adapter].weight,
            module.lora_B[active_adapter].weight,
            sqrt_k=module.curvature(active_adapter).sqrt(),
            scaling=module.scaling[active_adapter],
            input_scaling=module.hyplora_input_scaling[active_adapter],
            log_scale=scale,
        )

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
    other_param_names = LoraLinear.other_param_names + ("hyplora_curvature", "hyplora_input_scaling")

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if "lora_curvature" not in self._modules:  # first adapter: containers that set_adapter/state_dict expect
            self.lora_curvature, self.lora_input_scale = nn.ModuleDict(), nn.ModuleDict()
            self.hyplora_curvature, self.hyplora_input_scaling = {}, {}
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config, **kwargs):
        if getattr(config, "use_hyplora", False):
            return HypLoraLinearVariant()
        return super().resolve_lora_variant(config=config, **kwargs)

    def curvature(self, adapter_name: str) -> torch.Tensor:
        """K of an adapter: ``softplus(k)`` when learned, else the configured constant."""
        if adapter_name in self.lora_curvature:
            return F.softplus(self.lora_curvature[adapter_name].weight.float()).squeeze(0)
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
