r"""The maths of the four adapter forms, as pure per-token functions (the layer fuses them around two GEMMs).

Every form computes ``result + scaling * phi(|y|) * y`` with ``y = B (sigma * A x)``-like products, where
``sigma`` (the input map) and ``phi`` (the output map) are per-token scalars. Rows are first divided by their
largest entry, ``v = x / m`` (``m`` a constant for autograd), so no norm overflows; ``n = |v|``. ``K`` is the
hyperboloid's ``<x,x>_L = -K`` in every form (sectional curvature ``-1/K``).

- ``seed`` (release 1): ``A`` acts on all ``in+1`` coordinates of ``expmap0((0, u))``, ``B`` on ``r+1``
  (:mod:`hyplora.adapter.layer`), output :class:`LogmapOfLift`;
- ``llr`` (release 2, consistent curvature): ``x_s = expmap0((0, u))_s`` (:func:`lorentz.expmap0_scalars`),
  ``y = B A x_s``, output :class:`LogmapOfLift`;
- ``llr-official`` (release 2 as computed): input :func:`release_expmap_factor`, output :class:`ReleaseLogmap`;
- ``stereographic`` (release 2's ``hyplora_simplified``): input :func:`stereographic_factor`, output
  :class:`StereographicProjection`.

Each output map is a class with ``forward(rho_sq, param) -> (saved, phi)`` and
``backward(saved, param, scaling, yg) -> (kappa, grad_param)``, where ``yg = y . dL/d(delta)`` per token,
``kappa = scaling * phi'(rho) / rho * yg`` (the radial part of ``dL/dy``) and ``grad_param`` is
``sum(scaling * dphi/dparam * yg)``; the layer's :class:`~hyplora.adapter.layer._ProjectBRadial` does the rest.

The NeurIPS 2025 release (``marlin-codes/HypLoRA``, ``peft/tuners/lora/layer.py``, read at commit 66df99a):
``lora_type="hyplora-<k>"`` is ``llr-official`` and ``"hyplora_simplified-<k>"`` is ``stereographic``.
"""

import math

import torch

from hyplora.adapter import lorentz

FORMS = ("seed", "llr", "llr-official", "stereographic")
LORA_SHAPED_FORMS = ("llr", "llr-official", "stereographic")  # A (r, in), B (out, r); seed adds a time column to each

# The release's constants (llr-official only)
RELEASE_K_FLOOR = 1e-6  # K = softplus(k) + 1e-6, and max(K, 1e-6) in the lift
RELEASE_K_GRAD_CLIP = 0.01  # a hook clamps dL/dk to +-0.01
RELEASE_MAX_THETA = 12.0  # the exp map's argument min(|x|/(s sqrt K), 12)
RELEASE_NORM_FLOOR = 1e-7  # max(|x|, 1e-7) and max(|y|, 1e-7)
RELEASE_SMALL_THETA = 1.01  # below it arccosh(theta) is replaced by sqrt(2 max(theta - 1, 1e-6))
RELEASE_THETA_FLOOR = 1e-6
RELEASE_ACOSH_FLOOR = 1.0 + 1e-7
# `hyplora-1.0` (the release's default and its scripts' choice): k = 1, so K = softplus(1) + 1e-6
RELEASE_DEFAULT_K = math.log1p(math.e) + RELEASE_K_FLOOR  # 1.3132626...


class _ClampGradient(torch.autograd.Function):
    """Identity whose backward clamps the incoming gradient to ``[-bound, bound]``."""

    @staticmethod
    def forward(ctx, raw, bound):
        ctx.bound = bound
        return raw.view_as(raw)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-ctx.bound, ctx.bound), None


def curvature_from_raw(form: str, raw: torch.Tensor) -> torch.Tensor:
    r"""K from the learned scalar ``k`` (shape ``[1]``), as a 0-d float32 tensor.

    ``seed``, ``llr``: :math:`K = \operatorname{softplus}(k)`. ``llr-official``: :math:`K = \operatorname{softplus}(k)
    + 10^{-6}` with :math:`\partial L/\partial k` clamped to :math:`\pm 0.01` (the release's hook on ``k``; here
    an identity op, the same whenever the layer runs once per backward). ``stereographic``: :math:`K = k`, no
    constraint (the release's raw ``k``; its maps need ``k > 0``).
    """
    raw = raw.float()
    if form == "stereographic":
        return raw.squeeze(0)
    if form == "llr-official":
        raw = _ClampGradient.apply(raw, RELEASE_K_GRAD_CLIP)
        return (torch.nn.functional.softplus(raw) + RELEASE_K_FLOOR).squeeze(0)
    return torch.nn.functional.softplus(raw).squeeze(0)


def raw_from_curvature(form: str, curvature: float) -> float:
    """The initial ``k`` that :func:`curvature_from_raw` maps to ``curvature``."""
    if form == "stereographic":
        return curvature
    offset = RELEASE_K_FLOOR if form == "llr-official" else 0.0
    return math.log(math.expm1(curvature - offset))


def release_expmap_factor(
    norm: torch.Tensor, row_max: torch.Tensor, norm_scale: torch.Tensor, curvature: torch.Tensor
) -> torch.Tensor:
    r"""``sigma`` with ``x_s = sigma v``: the release's exp map (``llr-official``), ``n = |v|``, ``m = row_max``.

    .. math::
        x_s = \sqrt K \sinh\!\Big(\min\big(\tfrac{\bar n}{s\sqrt K}, 12\big)\Big)\,\frac{x}{\bar n},
        \qquad \bar n = \max(|x|, 10^{-7}),\ s \text{ learned (from } \sqrt{in}\text{)}.

    Written in ``v``: :math:`\bar n = m \max(n, 10^{-7}/m)`, and the ratio is formed before the factor ``m``,
    so :math:`|x| > 3.4\cdot10^{38}` saturates at 12 without an infinite intermediate. Finite for ``s > 0``.
    """
    sqrt_k = curvature.sqrt()
    floored = torch.maximum(norm, RELEASE_NORM_FLOOR / row_max)  # max(|x|, 1e-7) / m
    theta = (row_max * (floored / norm_scale / sqrt_k)).clamp_max(RELEASE_MAX_THETA)
    return sqrt_k * torch.sinh(theta) / floored


def stereographic_factor(norm: torch.Tensor, row_max: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    r"""``sigma`` with ``y = sigma v``: the release's map before ``A`` (``stereographic``), ``n = |v|``, ``m = row_max``.

    .. math:: y = \frac{2x}{1 + k|x|^2} = \frac{2m}{1 + k m^2 n^2}\,v = \frac{2/m}{1/m^2 + k n^2}\,v,

    the first form for ``m < 1``, the second for ``m >= 1``, so nothing overflows (``n >= 1`` for a nonzero row).
    This is the inverse stereographic projection onto the *sphere* of curvature ``+k`` (the hyperbolic ball's
    would have ``1 - k|x|^2``): ``|y| <= 1/sqrt(k)``, largest at ``|x| = 1/sqrt(k)``, and ``~ 2/(k|x|)`` beyond.
    """
    big = row_max >= 1.0
    c = torch.where(big, row_max.reciprocal(), row_max)
    d = torch.where(big, c * c, torch.ones_like(c))
    e = torch.where(big, torch.ones_like(c), row_max * row_max)
    return 2.0 * c / (d + curvature * e * (norm * norm))


class LogmapOfLift:
    r"""``seed`` and ``llr``: :math:`\log_o(\operatorname{lift}(y))_s = \sqrt K \operatorname{arsinh}(\rho/\sqrt K)\,
    y/\rho = \phi y`, :math:`\phi = \operatorname{arsinhc}(w)`, :math:`w = \rho/\sqrt K`; ``param = sqrt(K)``.

    :math:`\phi'(\rho)/\rho = \psi(w)/K` (:func:`lorentz.arsinhc_slope`), :math:`\partial\phi/\partial\sqrt K =
    -w^2\psi(w)/\sqrt K`. ``phi`` is flat at 0, so a rounded ``rho`` (the Gram form) costs nothing there.
    """

    @staticmethod
    def forward(rho_sq, sqrt_k):
        w = rho_sq.clamp_min(0.0).sqrt() / sqrt_k
        return w, lorentz.arsinhc(w)

    @staticmethod
    def backward(w, sqrt_k, scaling, yg):
        psi_yg = scaling * lorentz.arsinhc_slope(w) * yg
        return psi_yg / (sqrt_k * sqrt_k), -(w * w * psi_yg).sum() / sqrt_k


class ReleaseLogmap:
    r"""``llr-official``: the release's lift and log map; ``param = K``.

    .. math::
        t = \sqrt{\rho^2 + 1/\max(K, 10^{-6})},\quad \theta = t/\sqrt K,\quad
        g = \begin{cases}\sqrt{2\max(\theta-1, 10^{-6})} & \theta < 1.01\\
        \operatorname{arcosh}(\max(\theta, 1+10^{-7})) & \text{else}\end{cases},\quad
        \phi = \sqrt K\, g/\max(\rho, 10^{-7}).

    The lift's ``+ 1/K`` (a consistent lift has ``+ K``) puts ``theta < 1`` for :math:`\rho^2 < K - 1/K`; there
    ``g`` is pinned at :math:`\sqrt{2\cdot10^{-6}}` and :math:`|\phi y| = 1.41\cdot10^{-3}\sqrt K`, whatever ``y``.
    At ``K = 1`` it equals :class:`LogmapOfLift` up to the small-``theta`` branch's error (< 1e-3 relative).
    ``phi`` is not flat at 0 (it is ``~ 1/rho``): the layer forms ``y`` to get ``rho`` exactly.
    """

    @staticmethod
    def _parts(rho_sq, curvature):
        sqrt_k = curvature.sqrt()
        rho = rho_sq.sqrt()
        t = (rho_sq + 1.0 / curvature.clamp_min(RELEASE_K_FLOOR)).sqrt()
        theta = t / sqrt_k
        small = theta < RELEASE_SMALL_THETA
        eps = (theta - 1.0).clamp_min(RELEASE_THETA_FLOOR)
        g = torch.where(small, (2.0 * eps).sqrt(), torch.acosh(theta.clamp_min(RELEASE_ACOSH_FLOOR)))
        return sqrt_k, rho, t, theta, small, eps, g, rho.clamp_min(RELEASE_NORM_FLOOR)

    @classmethod
    def forward(cls, rho_sq, curvature):
        sqrt_k, _, _, _, _, _, g, rho_floored = cls._parts(rho_sq, curvature)
        return rho_sq, sqrt_k * g / rho_floored

    @classmethod
    def backward(cls, rho_sq, curvature, scaling, yg):
        sqrt_k, rho, t, theta, small, eps, g, q = cls._parts(rho_sq, curvature)
        # dg/dtheta on the branch the forward took (0 where a clamp holds)
        slope_small = torch.where(theta - 1.0 > RELEASE_THETA_FLOOR, (2.0 * eps).rsqrt(), 0.0)
        slope_acosh = (theta * theta - 1.0).clamp_min(RELEASE_SMALL_THETA**2 - 1.0).rsqrt()
        dg = torch.where(small, slope_small, slope_acosh)
        # phi = sqrt(K) g / q: dphi/drho / rho = g'/(t q) - [rho > 1e-7] sqrt(K) g / q^3  (dtheta/drho = rho/(sqrt(K) t))
        dphi_over_rho = dg / (t * q) - torch.where(rho > RELEASE_NORM_FLOOR, sqrt_k * g / (q * q * q), 0.0)
        # dtheta/dK = dt/dK / sqrt(K) - theta / (2K), dt/dK = -[K > 1e-6] / (2 t K^2)
        dt = -(curvature > RELEASE_K_FLOOR).to(t.dtype) / (2.0 * t * curvature * curvature)
        dtheta = dt / sqrt_k - theta / (2.0 * curvature)
        dphi_dk = g / (2.0 * sqrt_k * q) + sqrt_k * dg * dtheta / q
        return scaling * dphi_over_rho * yg, (scaling * dphi_dk * yg).sum()


class StereographicProjection:
    r"""``stereographic``: the release's lift and projection after ``B``; ``param = k`` (raw, ``K = k``).

    .. math:: \operatorname{out} = \frac{y}{1 + \sqrt{|k|}\,\sqrt{\rho^2 + k}} = \phi y,

    i.e. ``lift`` onto ``<x,x>_L = -k``, then :math:`x_s/(1+\sqrt{|k|}\,x_0)`: the Poincaré projection of the
    hyperboloid ``<x,x>_L = -1/k``, so the two agree only at ``k = 1``. :math:`|\phi y| < 1/\sqrt k` for every
    ``y``; near 0, :math:`\phi \approx 1/(1+k)`. Defined for ``k > 0`` (``k < 0`` makes the lift's square root
    negative for :math:`\rho^2 < -k`, where the release gives NaN). ``phi`` is flat at 0: the Gram form is fine.
    :math:`\phi'(\rho)/\rho = -\sqrt{|k|}/(t D^2)`, :math:`\partial\phi/\partial k = -(\operatorname{sign}(k)\,
    t/(2\sqrt{|k|}) + \sqrt{|k|}/(2t))/D^2` with :math:`t = \sqrt{\rho^2+k}`, :math:`D = 1 + \sqrt{|k|}\,t`.
    """

    @staticmethod
    def forward(rho_sq, curvature):
        rho_sq = rho_sq.clamp_min(0.0)
        return rho_sq, 1.0 / (1.0 + curvature.abs().sqrt() * (rho_sq + curvature).sqrt())

    @staticmethod
    def backward(rho_sq, curvature, scaling, yg):
        b = curvature.abs().sqrt()
        t = (rho_sq + curvature).sqrt()
        inv_d2 = (1.0 + b * t).reciprocal().square()
        dphi_over_rho = -b / t * inv_d2
        dphi_dk = -(torch.sign(curvature) * t / (2.0 * b) + b / (2.0 * t)) * inv_d2
        return scaling * dphi_over_rho * yg, (scaling * dphi_dk * yg).sum()
