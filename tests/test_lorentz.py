"""Identities of the Lorentz model (hypothesis), closed forms, and finite values/gradients everywhere."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyplora.adapter import lorentz

SETTINGS = settings(max_examples=60, deadline=None)
curvatures = st.floats(1e-2, 1e2)
seeds = st.integers(0, 2**31 - 1)
log_magnitudes = st.floats(-15.0, 6.0)  # |v| from 1e-15 to 1e6


def tangent(seed, dim, magnitude, dtype=torch.float32):
    v = torch.randn(5, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * magnitude
    return lorentz.pad_zero_time(v.to(dtype))


@SETTINGS
@given(seed=seeds, k=curvatures, log_mag=log_magnitudes, dim=st.integers(1, 64))
def test_expmap0_lands_on_the_manifold(seed, k, log_mag, dim):
    x = lorentz.expmap0(tangent(seed, dim, 10.0**log_mag, torch.float64), k=k)
    # <x,x>_L = -K up to the rounding of x0^2 (x0 <= sqrt(K) * 2^15 after clipping)
    torch.testing.assert_close(
        lorentz.inner(x, x), torch.full((5, 1), -k, dtype=x.dtype), rtol=1e-9, atol=1e-9 * (x[:, :1] ** 2).max().item()
    )
    assert (x[:, 0] > 0).all()


@SETTINGS
@given(seed=seeds, k=curvatures, log_mag=st.floats(-15.0, 1.0), dim=st.integers(1, 64))
def test_logmap0_inverts_expmap0(seed, k, log_mag, dim):
    magnitude = 10.0**log_mag * math.sqrt(k)  # stays below the clipping radius sqrt(K) * 11.09
    v = tangent(seed, dim, magnitude)
    back = lorentz.logmap0(lorentz.expmap0(v, k=k), k=k)
    torch.testing.assert_close(back, v, rtol=2e-5, atol=1e-30)


@SETTINGS
@given(seed=seeds, k=curvatures, log_mag=st.floats(-6.0, 1.0), dim=st.integers(1, 32))
def test_dist0_is_the_tangent_norm(seed, k, log_mag, dim):
    v = tangent(seed, dim, 10.0**log_mag * math.sqrt(k), torch.float64)
    x = lorentz.expmap0(v, k=k)
    torch.testing.assert_close(lorentz.dist0(x, k=k), v.norm(dim=-1, keepdim=True), rtol=1e-10, atol=0)
    origin = lorentz.lift(torch.zeros_like(x[:, 1:]), k=k)
    torch.testing.assert_close(lorentz.dist(x, origin, k=k), lorentz.dist0(x, k=k), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=seeds, k=curvatures, dim=st.integers(1, 32))
def test_dist_matches_arccosh_closed_form(seed, k, dim):
    g = torch.Generator().manual_seed(seed)
    x = lorentz.lift(torch.randn(8, dim, generator=g, dtype=torch.float64) * 3, k=k)
    y = lorentz.lift(torch.randn(8, dim, generator=g, dtype=torch.float64) * 3, k=k)
    closed = math.sqrt(k) * torch.acosh((-lorentz.inner(x, y) / k).clamp_min(1.0))
    d = lorentz.dist(x, y, k=k)
    torch.testing.assert_close(d, closed, rtol=1e-7, atol=1e-6 * math.sqrt(k))
    torch.testing.assert_close(d, lorentz.dist(y, x, k=k))


def test_dist_is_exact_for_nearby_points_where_arccosh_fails():
    x = lorentz.lift(torch.tensor([[0.3, -0.2]]), k=1.0)
    y = lorentz.lift(torch.tensor([[0.3 + 1e-6, -0.2]]), k=1.0)
    # true distance ~1e-6 / sqrt(1 + |x|^2) ... in float32 the arccosh form returns 0 or ~4e-4
    expected = lorentz.dist(x.double(), y.double(), k=1.0).float()
    torch.testing.assert_close(lorentz.dist(x, y, k=1.0), expected, rtol=1e-3, atol=0)
    assert lorentz.dist(x, x, k=1.0).item() == 0.0


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0])
def test_logmap0_of_lifted_point_has_the_stable_closed_form(k):
    y = torch.tensor([[3e-4, 0.0], [1.0, 2.0], [300.0, -400.0]], dtype=torch.float64)
    expected = (
        math.sqrt(k) * torch.asinh(y.norm(dim=-1, keepdim=True) / math.sqrt(k)) * y / y.norm(dim=-1, keepdim=True)
    )
    torch.testing.assert_close(lorentz.logmap0(lorentz.lift(y, k=k), k=k)[:, 1:], expected, rtol=1e-12, atol=0)
    assert (lorentz.logmap0(lorentz.lift(y, k=k), k=k)[:, 0] == 0).all()


@SETTINGS
@given(seed=seeds, k=curvatures, log_mag=st.floats(-30.0, 18.0), dim=st.integers(1, 16))
def test_values_and_gradients_are_finite(seed, k, log_mag, dim):
    """From 1e-30 to 1e18: every float32 vector whose squared norm is finite (the module contract)."""
    v = tangent(seed, dim, 10.0**log_mag).requires_grad_()
    x = lorentz.expmap0(v, k=k)
    out = lorentz.logmap0(x, k=k).sum() + lorentz.dist0(x, k=k).sum() + lorentz.lift(v[:, 1:], k=k).sum()
    out.backward()
    assert torch.isfinite(x).all() and torch.isfinite(out) and torch.isfinite(v.grad).all()


def test_origin_is_safe_in_value_and_gradient():
    v = torch.zeros(3, 5, requires_grad=True)
    x = lorentz.expmap0(v, k=2.0)
    torch.testing.assert_close(x[:, 0], torch.full((3,), math.sqrt(2.0)))
    lorentz.logmap0(x, k=2.0).pow(2).sum().backward()
    assert torch.isfinite(v.grad).all()
    # d/dv |logmap0(expmap0(v))|^2 = 2v = 0 at the origin; the space Jacobian there is the identity
    assert v.grad.abs().max().item() == 0.0
    w = torch.zeros(1, 4, requires_grad=True)
    lorentz.logmap0(lorentz.expmap0(w, k=1.0), k=1.0)[0, 2].backward()
    torch.testing.assert_close(w.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_expmap0_saturates_instead_of_overflowing():
    v = tangent(0, 8, 1e4)
    x = lorentz.expmap0(v, k=1.0)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(lorentz.dist0(x, k=1.0), torch.full((5, 1), lorentz.MAX_TANGENT_NORM))
    direction = lorentz.logmap0(x, k=1.0)[:, 1:]
    torch.testing.assert_close(direction / direction.norm(dim=-1, keepdim=True), v[:, 1:] / 1e4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_compute_in_float32(dtype):
    v = tangent(1, 16, 3.0, dtype)
    x = lorentz.expmap0(v, k=1.0)
    assert x.dtype == torch.float32
    assert lorentz.logmap0(x, k=1.0).dtype == torch.float32
    torch.testing.assert_close(lorentz.logmap0(x, k=1.0), v.float(), rtol=1e-5, atol=1e-6)


def test_series_helpers_match_closed_forms_across_the_switch():
    t = torch.tensor([1e-8, 5e-4, 9.99e-4, 1.01e-3, 0.05, 0.2, 3.0], dtype=torch.float64)
    torch.testing.assert_close(lorentz.sinhc(t), torch.sinh(t) / t, rtol=1e-12, atol=0)
    torch.testing.assert_close(lorentz.arsinhc(t), torch.asinh(t) / t, rtol=1e-12, atol=0)


def test_arsinhc_slope_is_the_derivative_of_arsinhc_over_t():
    t = torch.tensor([1e-6, 0.05, 0.099, 0.101, 0.5, 2.0, 50.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(lorentz.arsinhc(t).sum(), t)
    torch.testing.assert_close(lorentz.arsinhc_slope(t.detach()), grad / t.detach(), rtol=1e-6, atol=1e-12)
