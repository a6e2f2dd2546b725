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
from ._kernel import AxisTaps

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


def axis_taps(g, size: int, padding_mode: str, align_corners: bool, spatial_rank: int) -> AxisTaps:
  """Taps of cubic convolution along one axis.

  Args:
    g: grid values for this axis, shape ``(P,)``.
    size: input size along the axis.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.
    spatial_rank: 2 or 3 (operation order of PyTorch's kernel for that rank).

  Returns:
    AxisTaps with arrays of shape ``(4, P)``.
  """
  p, scale = unnormalize(g, size, align_corners, spatial_rank)
  p, finite = sanitize(p, size, padding_mode)
  first = jnp.floor(p)
  t = p - first
  taps = first[None, :] + jnp.arange(-1, 3, dtype=p.dtype)[:, None]
  scale = jnp.where(finite, jnp.asarray(scale, p.dtype), 0)
  return AxisTaps(
      position=pad_tap(taps, size, padding_mode, align_corners, spatial_rank),
      weight=cubic_coefficients(t),
      slope=cubic_coefficient_slopes(t) * scale[None, :],
  )
