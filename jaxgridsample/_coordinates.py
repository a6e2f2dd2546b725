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

import jax.numpy as jnp

PADDING_MODES = ("zeros", "border", "reflection")

# Where a non-finite coordinate is parked under zeros padding: far enough
# outside that every tap of every interpolation family (bicubic reaches
# floor(p) - 1 .. floor(p) + 2) is out of bounds.
_OUTSIDE = -16.0


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
  dtype = g.dtype
  if align_corners:
    scale = (size - 1) / 2
    if spatial_rank == 2:
      p = (g + 1) * jnp.asarray(scale, dtype)
    else:
      p = (g + 1) / 2 * jnp.asarray(size - 1, dtype)
  else:
    scale = size / 2
    if spatial_rank == 2:
      p = (g + 1) * jnp.asarray(scale, dtype) - jnp.asarray(0.5, dtype)
    else:
      p = ((g + 1) * jnp.asarray(size, dtype) - 1) / 2
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
    twice_span = jnp.asarray(2 * span, dtype)
    extra = distance - jnp.trunc(distance / twice_span) * twice_span
    reflected = twice_span - extra
    one_more_flip = extra > reflected
    folded = jnp.where(one_more_flip, reflected, extra)
    multiplier = jnp.where(one_more_flip, -sign, sign)
  else:
    # The scalar kernel counts single flips and keeps the fmod remainder.
    span_arr = jnp.asarray(span, dtype)
    extra = jnp.fmod(distance, span_arr)
    odd_flips = jnp.fmod(jnp.floor(distance / span_arr), 2) == 1
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
    return clip_with_multiplier(p, size)
  reflected, reflect_mult = reflect_with_multiplier(p, size, align_corners, spatial_rank)
  clipped, clip_mult = clip_with_multiplier(reflected, size)
  return clipped, reflect_mult * clip_mult


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
