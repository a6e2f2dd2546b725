"""Coordinate layer: normalised grid values to pixel coordinates, with padding.

This is the JAX counterpart of ATen's ``ComputeLocation``: for one spatial axis
of size ``S`` it maps grid values ``g`` in ``[-1, 1]`` to pixel coordinates
(``unnormalize``), applies the padding rule (``clip`` for border,
``reflect`` then ``clip`` for reflection), and returns the derivative of the
result with respect to ``g`` (the "multiplier" that ATen's ``apply_get_grad``
returns). All functions are elementwise and work on any array shape.

PyTorch evaluates these formulas in two operation orders: its vectorised 2-D
CPU kernel and its scalar kernel (used for 3-D). They agree to a few ulps, but
a one-ulp difference decides ``floor`` for a coordinate that lands on a pixel
centre, and with it the grid gradient there. We therefore follow the same
order as the PyTorch kernel for the same rank (``spatial_rank`` below).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

PADDING_MODES = ("zeros", "border", "reflection")

# Where a non-finite coordinate is parked under zeros padding: far enough
# outside that every tap of every interpolation family (bicubic reaches
# floor(p) - 1 .. floor(p) + 2) is out of bounds.
_OUTSIDE = -16.0


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _rounded_product(x, factor: float):
  """``x * factor`` (``factor >= 0``), rounded before any following addition.

  XLA's CPU backend contracts a multiply that feeds an addition into one
  fused multiply-add, which rounds once; PyTorch rounds the product first.
  Near a pixel centre that one ulp decides ``floor`` and with it the grid
  gradient, so the product passes through ``copysign`` (an identity here,
  as the product has ``x``'s sign) which contraction cannot see through.
  """
  return jnp.copysign(x * jnp.asarray(factor, x.dtype), x)


@_rounded_product.defjvp
def _rounded_product_jvp(factor, primals, tangents):
  (x,), (dx,) = primals, tangents
  return _rounded_product(x, factor), dx * jnp.asarray(factor, dx.dtype)


def _fused_unnormalize(a, size: int):
  """``a * size / 2 - 0.5`` rounded once, as a fused multiply-add does.

  PyTorch's vectorised 2-D kernel evaluates ``(g + 1) * (S / 2) - 0.5`` and
  its compiler fuses the multiply and the subtraction (observed on torch
  2.13's CPU build). JAX has no fma, so we split ``a`` into a high part with
  its low ``k`` mantissa bits cleared and the (exact) remainder; with
  ``k = bits(S) + 1`` both partial products and the grouping below are exact,
  and the final addition is the only rounding (whether or not XLA contracts
  any of it). Exact for S < 2048 in float32 and S < 2**26 in float64; beyond
  that we fall back to two roundings.
  """
  dtype = a.dtype
  precision = jnp.finfo(dtype).nmant + 1
  half_size = jnp.asarray(size / 2, dtype)
  half = jnp.asarray(0.5, dtype)
  k = size.bit_length() + 1
  if 2 * k > precision:
    return _rounded_product(a, size / 2) - half
  int_dtype = jnp.int32 if jnp.finfo(dtype).bits == 32 else jnp.int64
  bits = jax.lax.bitcast_convert_type(a, int_dtype)
  a_high = jax.lax.bitcast_convert_type(bits & jnp.asarray(~((1 << k) - 1), int_dtype), dtype)
  a_low = jnp.where(jnp.isfinite(a), a - a_high, 0)
  high, low = a_high * half_size, a_low * half_size
  # Small |a|: high - 0.5 is exact. Large |a|: low - 0.5 is exact.
  small = jnp.abs(a) < 2.0 ** (precision - k - 1)
  return jnp.where(small, (high - half) + low, high + (low - half))


def unnormalize(g, size: int, align_corners: bool, spatial_rank: int):
  """Maps grid values to pixel coordinates along an axis of ``size`` pixels.

  Args:
    g: grid values, any shape, floating point.
    size: number of pixels along the axis (``S``).
    align_corners: if True, -1 and 1 are the centres of the corner pixels
      (``p = (g + 1) / 2 * (S - 1)``); if False, they are the outer edges of
      the corner pixels (``p = ((g + 1) * S - 1) / 2``).
    spatial_rank: 2 or 3; selects PyTorch's operation order for that rank.

  Returns:
    ``(p, scale)``: pixel coordinates of ``g``'s shape and the Python float
    ``dp/dg`` (``(S - 1) / 2`` or ``S / 2``).
  """
  a = g + 1
  if align_corners:
    scale = (size - 1) / 2
    if spatial_rank == 2:
      p = _rounded_product(a, scale)
    else:
      p = _rounded_product(a / 2, size - 1)
  else:
    scale = size / 2
    if spatial_rank == 2:
      p = _fused_unnormalize(a, size)
    else:
      p = (_rounded_product(a, size) - 1) / 2
  return p, scale


def clip_with_multiplier(p, size: int):
  """Clamps ``p`` to ``[0, S - 1]``; the multiplier is 0 on and beyond the bounds.

  ATen treats the bounds themselves as outside for the gradient
  (``clip_coordinates_set_grad``); PyTorch's groundtruth gradients rely on it.
  """
  upper = size - 1
  clipped = jnp.clip(p, 0, upper)
  multiplier = ((p > 0) & (p < upper)).astype(p.dtype)
  return clipped, multiplier


def _divided(x, divisor: float):
  """``x / divisor`` rounded once, as PyTorch's division is.

  XLA rewrites a division by a scalar into a multiplication by its reciprocal,
  which rounds twice: far outside a wide image (x = -1e6, 731 pixels) the
  quotient then came out an ulp or two off, and the floor of it, the number
  of flips, one less. Behind an optimisation barrier the divisor is an array
  XLA cannot see through, so it divides.
  """
  return x / jax.lax.optimization_barrier(jnp.full(x.shape, divisor, x.dtype))


def reflect_with_multiplier(p, size: int, align_corners: bool, spatial_rank: int):
  """Reflects ``p`` into the reflection interval; returns ``(p', dp'/dp)``.

  The interval is ``[0, S - 1]`` when ``align_corners`` and
  ``[-0.5, S - 0.5]`` otherwise; the result is clipped afterwards by the
  caller (reflection padding is reflect, then clip).
  """
  dtype = p.dtype
  if align_corners:
    if size <= 1:  # empty interval: everything reflects onto pixel 0
      return jnp.zeros_like(p), jnp.zeros_like(p)
    low, span = 0.0, float(size - 1)
  else:
    low, span = -0.5, float(size)
  shifted = p - jnp.asarray(low, dtype)
  sign = jnp.where(shifted < 0, -1, 1).astype(dtype)
  distance = jnp.abs(shifted)
  if spatial_rank == 2:
    # The vectorised kernel folds by the double span and reflects once more
    # if the remainder lies in the far half.
    # It computes distance - flips * twice_span in one fma: the exact value is
    # the remainder, less twice_span where the quotient rounded up to an
    # integer (so that flips counts one more fold than there is), and both
    # are floats, which the fma returns exactly. (While the quotient is below
    # 2**24 in float32, |g| below about 6.7e7; the CPU kernel has an fma.)
    twice_span = jnp.asarray(2 * span, dtype)
    quotient = _divided(distance, 2 * span)
    remainder = jnp.fmod(distance, twice_span)
    rounded_up = (quotient == jnp.trunc(quotient)) & (remainder > span)
    extra = jnp.where(rounded_up, remainder - twice_span, remainder)
    reflected = twice_span - extra
    one_more_flip = extra > reflected
    folded = jnp.where(one_more_flip, reflected, extra)
    multiplier = jnp.where(one_more_flip, -sign, sign)
  else:
    # The scalar kernel counts single flips and keeps the fmod remainder.
    span_arr = jnp.asarray(span, dtype)
    extra = jnp.fmod(distance, span_arr)
    odd_flips = jnp.fmod(jnp.floor(_divided(distance, span)), 2) == 1
    folded = jnp.where(odd_flips, span_arr - extra, extra)
    multiplier = jnp.where(odd_flips, -sign, sign)
  return folded + jnp.asarray(low, dtype), multiplier


def pad_coordinate(p, size: int, padding_mode: str, align_corners: bool, spatial_rank: int):
  """Applies a padding rule to continuous pixel coordinates.

  Used by the families that pad before choosing taps (linear and nearest).

  Returns:
    ``(p', dp'/dp)``, both of ``p``'s shape.
  """
  if padding_mode == "zeros":
    return p, jnp.ones_like(p)
  if padding_mode == "border":
    padded, multiplier = clip_with_multiplier(p, size)
  else:
    reflected, reflect_mult = reflect_with_multiplier(p, size, align_corners, spatial_rank)
    padded, clip_mult = clip_with_multiplier(reflected, size)
    multiplier = reflect_mult * clip_mult
  return _with_derivative(padded, p, multiplier), multiplier


def _with_derivative(value, p, multiplier):
  """``value``, whose derivative with respect to ``p`` is ``multiplier``.

  Autodiff of ``clip`` would give 1/2 on the bounds (``max`` splits ties),
  while ATen's multiplier is 0 there; second derivatives (which differentiate
  the backward, and so the padded coordinate) must use ATen's convention too.
  ``p - stop_gradient(p)`` is exactly 0 for the finite ``p`` we have here.
  """
  return jax.lax.stop_gradient(value) + (p - jax.lax.stop_gradient(p)) * multiplier


def pad_tap(tap, size: int, padding_mode: str, align_corners: bool, spatial_rank: int):
  """Applies a padding rule to integer-valued tap positions (bicubic's rule).

  Each tap is padded on its own, so several taps may land on one pixel. The
  derivative is not needed: the map is piecewise constant on integers.
  """
  return pad_coordinate(tap, size, padding_mode, align_corners, spatial_rank)[0]


def sanitize(p, size: int, padding_mode: str):
  """Replaces non-finite pixel coordinates by finite ones with the same meaning.

  Our contract (SPEC section 9): under zeros padding a NaN or infinite
  coordinate is outside the image; under border and reflection padding NaN
  and -inf read pixel 0 and +inf reads the last pixel.

  Returns:
    ``(p', finite)``: the finite coordinates and a boolean mask of where the
    original ones were finite (the gradient is zero elsewhere).
  """
  finite = jnp.isfinite(p)
  if padding_mode == "zeros":
    replacement = jnp.full_like(p, _OUTSIDE)
  else:
    replacement = jnp.where(p == jnp.inf, size - 1, 0).astype(p.dtype)
  return jnp.where(finite, p, replacement), finite
