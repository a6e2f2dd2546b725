"""Cubic convolution: bicubic on 4-D input, tricubic on 5-D input.

PyTorch's bicubic (SPEC section 5), per axis: the coordinate is only
unnormalised (padding before choosing taps would move ``floor``), the four
taps ``floor(p) - 1 .. floor(p) + 2`` are padded one by one, and the weights
are Keys' cubic convolution coefficients with ``A = -0.75``. The backward
uses the coefficients' derivatives times the unnormalise scale alone: padding
acts on integer taps, where it is piecewise constant. Applied to three axes
this gives tricubic sampling of volumes, which PyTorch does not offer.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._coordinates import pad_tap, sanitize, unnormalize
from ._kernel import AxisTaps, Family

A = -0.75  # PyTorch's (and OpenCV's) choice of the free cubic parameter.


def _near(x):
  """Keys' kernel for ``|d| <= 1``: ``(A + 2) d^3 - (A + 3) d^2 + 1``."""
  return ((A + 2) * x - (A + 3)) * x * x + 1


def _far(x):
  """Keys' kernel for ``1 < |d| < 2``: ``A d^3 - 5A d^2 + 8A d - 4A``."""
  return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A


def _near_slope(x):
  return (3 * (A + 2) * x - 2 * (A + 3)) * x


def _far_slope(x):
  return (3 * A * x - 10 * A) * x + 8 * A


def cubic_coefficients(t):
  """The four weights for taps at distances ``1 + t, t, 1 - t, 2 - t``; shape ``(4,) + t.shape``."""
  return jnp.stack([_far(1 + t), _near(t), _near(1 - t), _far(2 - t)])


def cubic_coefficient_slopes(t):
  """Derivatives of :func:`cubic_coefficients` with respect to ``t``."""
  return jnp.stack([_far_slope(1 + t), _near_slope(t), -_near_slope(1 - t), -_far_slope(2 - t)])


_TAP_OFFSETS = (-1, 0, 1, 2)  # the four taps, relative to floor(p)


def axis_coordinate(g, size: int, padding_mode: str, align_corners: bool, spatial_rank: int):
  """The pixel coordinate along one axis, as far as it is worth carrying.

  Under zeros padding the four taps are a floor and four additions away
  from the unnormalised coordinate, so that is all there is. Border and
  reflection pad each tap on its own (a clip, or a reflection: several
  divisions), so their padded positions are computed here once. (Measured
  fwd+bwd against carrying the full taps: 0.86-0.96x either way; padding the
  taps at every use instead was 1.05x for border.)

  Args:
    g: grid values for this axis, shape ``(P,)`` (or with leading batch axes).
    size: input size along the axis.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.
    spatial_rank: 2 or 3 (operation order of PyTorch's kernel for that rank).

  Returns:
    ``(p, scale)`` under zeros padding, else ``(t, scale, positions)``:
    ``p`` the unnormalised (and sanitised) coordinate, ``t = p - floor(p)``,
    ``scale = dp/dg`` (zero for a non-finite grid value), all ``(P,)``, and
    the padded tap positions ``(4, P)`` (leading batch axes first).
  """
  p, scale = unnormalize(g, size, align_corners, spatial_rank)
  p, finite = sanitize(p, size, padding_mode)
  scale = jnp.where(finite, jnp.asarray(scale, p.dtype), 0)
  if padding_mode == "zeros":
    return p, scale
  first = jnp.floor(p)
  return p - first, scale, pad_tap(_taps_around(first), size, padding_mode, align_corners, spatial_rank)


def _taps_around(first):
  # (..., P) -> (..., 4, P)
  offsets = jnp.asarray(_TAP_OFFSETS, first.dtype).reshape((1,) * (first.ndim - 1) + (4, 1))
  return first[..., None, :] + offsets


def axis_taps(coordinate, size: int, padding_mode: str, align_corners: bool, spatial_rank: int) -> AxisTaps:
  """The four taps of every point from its :func:`axis_coordinate`.

  Returns:
    AxisTaps with arrays of shape ``(4, P)``.
  """
  del size, align_corners, spatial_rank  # all in the coordinate already
  if padding_mode == "zeros":
    p, scale = coordinate
    first = jnp.floor(p)
    t, position = p - first, _taps_around(first)
  else:
    t, scale, position = coordinate
  return AxisTaps(
      position=position,
      weight=cubic_coefficients(t),
      slope=cubic_coefficient_slopes(t) * scale[None, :],
      bounded=padding_mode != "zeros",
  )


FAMILY = Family(axis_coordinate, axis_taps)
