r"""The Lorentz (hyperboloid) model of hyperbolic space, as pure functions.

Points are written ``(time, space...)`` in the last dimension. Curvature is :math:`-1/K` with
:math:`K > 0`, so every point satisfies

.. math::
    \langle x, x \rangle_L = -x_0^2 + \sum_{i \ge 1} x_i^2 = -K, \qquad x_0 > 0,

and the origin is :math:`o = (\sqrt{K}, 0, \dots, 0)`; this is the convention of HGCN [1] and of
both HypLoRA releases [2]. ``k`` is keyword-only, a float or a tensor broadcastable to ``x[..., :1]``.

Numerics (the reason each function is written the way it is):

- Everything is computed in float32 at least (bf16/fp16 inputs are upcast; float64 stays float64),
  and the result is returned in that compute dtype.
- ``logmap0``/``dist0`` use :math:`\operatorname{arcosh}(x_0/\sqrt K) = \operatorname{arsinh}(\|x_s\|/\sqrt K)`,
  which holds on the manifold and needs no ``arccosh`` near 1, where it loses all precision.
- ``expmap0`` clips the tangent norm at :data:`MAX_TANGENT_NORM` :math:`\cdot\sqrt K` (as MERU [3] and the
  first HypLoRA release do), so ``cosh``/``sinh`` stay finite in float32; beyond it the map keeps
  the direction and saturates the radius.
- ``sinhc``/``arsinhc`` (:math:`\sinh(t)/t`, :math:`\operatorname{arsinh}(t)/t`) switch to their Taylor series near
  0, so values and gradients are exact and finite at the origin.

Finite for every finite input whose squared norm is finite in the compute dtype.

References:
    [1] Chami et al., "Hyperbolic Graph Convolutional Neural Networks", NeurIPS 2019.
    [2] Yang et al., "Hyperbolic Fine-tuning for Large Language Models", arXiv:2410.04010.
    [3] Desai et al., "Hyperbolic Image-Text Representations" (MERU), ICML 2023.
"""

import math

import torch

MAX_TANGENT_NORM = math.asinh(2.0**15)  # ~11.09: cosh stays below 2**15 + 1
TAYLOR_BELOW = 1e-3  # |t| under which sinhc/arsinhc use their series (error < t**4 / 100)
_PSI_TAYLOR_BELOW = 0.1  # |t| under which arsinhc_slope uses its series


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision or float32 input, float64 for float64 input."""
    return torch.promote_types(x.dtype, torch.float32)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x))


def sinhc(t: torch.Tensor) -> torch.Tensor:
    r""":math:`\sinh(t)/t`, equal to 1 at 0, with a finite gradient there."""
    small = t.abs() < TAYLOR_BELOW
    t_safe = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1.0 + t * t / 6.0, torch.sinh(t_safe) / t_safe)


def arsinhc(t: torch.Tensor) -> torch.Tensor:
    r""":math:`\operatorname{arsinh}(t)/t`, equal to 1 at 0, with a finite gradient there."""
    small = t.abs() < TAYLOR_BELOW
    t_safe = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1.0 - t * t / 6.0, torch.asinh(t_safe) / t_safe)


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


def _sqrt_k(k, like: torch.Tensor) -> torch.Tensor:
    k = torch.as_tensor(k, dtype=like.dtype, device=like.device)
    return k.sqrt()


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Lorentzian inner product, keeping the last dimension as size 1.

    .. math:: \langle x, y \rangle_L = -x_0 y_0 + \sum_{i \ge 1} x_i y_i
    """
    x, y = _as_float(x), _as_float(y)
    prod = x * y
    return prod[..., 1:].sum(-1, keepdim=True) - prod[..., :1]


def lift(space: torch.Tensor, *, k) -> torch.Tensor:
    r"""Put a space vector on the hyperboloid by solving for its time coordinate.

    .. math:: \operatorname{lift}(y) = \left(\sqrt{\|y\|^2 + K},\; y\right)
    """
    space = _as_float(space)
    time = torch.hypot(space.norm(dim=-1, keepdim=True), _sqrt_k(k, space))
    return torch.cat([time, space], dim=-1)


def pad_zero_time(space: torch.Tensor) -> torch.Tensor:
    r"""A tangent vector at the origin from a space vector: :math:`(0, v)`."""
    space = _as_float(space)
    return torch.nn.functional.pad(space, (1, 0))


def expmap0(u: torch.Tensor, *, k) -> torch.Tensor:
    r"""Exponential map at the origin of a tangent vector ``u = (u_0, u_s)`` (``u_0`` is ignored).

    .. math::
        \exp_o(u) = \left(\sqrt K \cosh\frac{n}{\sqrt K},\;
                    \sqrt K \sinh\frac{n}{\sqrt K}\,\frac{u_s}{\|u_s\|}\right),
        \quad n = \min(\|u_s\|, \sqrt K\,\mathrm{MAX\_TANGENT\_NORM})
    """
    u = _as_float(u)
    sqrt_k = _sqrt_k(k, u)
    space = u[..., 1:]
    norm = space.norm(dim=-1, keepdim=True)
    time, space_scale = expmap0_scalars(norm, sqrt_k)
    return torch.cat([time, space_scale * space], dim=-1)


def expmap0_scalars(norm: torch.Tensor, sqrt_k: torch.Tensor, gain=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Time coordinate and space factor of :func:`expmap0` of ``u = g v`` from ``n = |v|`` (``g = gain``, default 1).

    Returns :math:`(\sqrt K\cosh(\bar n/\sqrt K),\ \sigma)` with :math:`\exp_o(u)_s = \sigma v`,
    :math:`\sigma = g\sqrt K\sinh(\bar n/\sqrt K)/(g n)` and the clipped
    :math:`\bar n = \min(g n, \sqrt K\,\mathrm{MAX\_TANGENT\_NORM})`. Past the clip
    :math:`\sigma = \sinh(\ldots)\sqrt K/n` needs no :math:`g n`, so a row scaled to ``v = x/max|x|`` stays
    finite whatever ``|x|``; :math:`\sigma = g` at ``n = 0``.
    """
    limit = sqrt_k * MAX_TANGENT_NORM
    gain = torch.ones_like(norm) if gain is None else gain
    tangent_norm = gain * norm
    over = tangent_norm > limit
    theta = torch.minimum(tangent_norm, limit) / sqrt_k
    factor = torch.where(over, limit / torch.where(over, norm, torch.ones_like(norm)), gain)
    return sqrt_k * torch.cosh(theta), sinhc(theta) * factor


def logmap0(x: torch.Tensor, *, k) -> torch.Tensor:
    r"""Logarithmic map at the origin of a point ``x`` on the hyperboloid; the result has time 0.

    .. math::
        \log_o(x) = \left(0,\; \sqrt K \operatorname{arsinh}\frac{\|x_s\|}{\sqrt K}\,\frac{x_s}{\|x_s\|}\right)

    (equal to :math:`\sqrt K \operatorname{arcosh}(x_0/\sqrt K)\, x_s/\|x_s\|` on the manifold).
    """
    x = _as_float(x)
    space = x[..., 1:]
    return pad_zero_time(logmap0_scale(space.norm(dim=-1, keepdim=True), _sqrt_k(k, x)) * space)


def logmap0_scale(norm: torch.Tensor, sqrt_k: torch.Tensor) -> torch.Tensor:
    r"""The factor :math:`\sqrt K\operatorname{arsinh}(\rho/\sqrt K)/\rho` that :func:`logmap0` applies to ``x_s``."""
    return arsinhc(norm / sqrt_k)


def dist0(x: torch.Tensor, *, k) -> torch.Tensor:
    r"""Geodesic distance from the origin: :math:`\sqrt K \operatorname{arsinh}(\|x_s\|/\sqrt K)`."""
    x = _as_float(x)
    sqrt_k = _sqrt_k(k, x)
    return sqrt_k * torch.asinh(x[..., 1:].norm(dim=-1, keepdim=True) / sqrt_k)


def dist(x: torch.Tensor, y: torch.Tensor, *, k) -> torch.Tensor:
    r"""Geodesic distance between two points of the hyperboloid.

    .. math::
        d(x, y) = \sqrt K \operatorname{arcosh}\left(-\langle x, y\rangle_L / K\right)
                = 2\sqrt K \operatorname{arsinh}\frac{\sqrt{\langle x-y, x-y\rangle_L}}{2\sqrt K}

    The second form is used: it is exact for nearby points, where the first loses all digits.
    """
    diff = _as_float(x) - _as_float(y)
    sqrt_k = _sqrt_k(k, diff)
    chord = inner(diff, diff).clamp_min(0.0).sqrt()
    return 2.0 * sqrt_k * torch.asinh(chord / (2.0 * sqrt_k))
