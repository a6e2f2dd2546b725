"""Linear interpolation: bilinear on 4-D input, trilinear on 5-D input.

Forward and backward of one axis side by side: the two taps ``floor(p)`` and
``floor(p) + 1`` with weights ``1 - t`` and ``t`` (``t = p - floor(p)``), and
the derivative of those weights with respect to the grid value, ``-m`` and
``+m``. The multiplier ``m`` is the unnormalise scale times the padding's
derivative (SPEC sections 2.4 and 3). Multiplying per-axis weights gives the
corner weights ``nw = (1 - tx)(1 - ty)``...; multiplying one axis's
derivative by the other axes' weights gives ATen's ``gx``/``gy``/``gz``.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._coordinates import pad_coordinate, sanitize, unnormalize
from ._kernel import AxisTaps, Family


def axis_coordinate(g, size: int, padding_mode: str, align_corners: bool, spatial_rank: int):
  """The padded pixel coordinate along one axis and its derivative.

  Args:
    g: grid values for this axis, shape ``(P,)``.
    size: input size along the axis.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.
    spatial_rank: 2 or 3 (operation order of PyTorch's kernel for that rank).

  Returns:
    ``(p, multiplier)``, each ``(P,)``: the coordinate after padding and
    ``dp/dg`` (zero for a non-finite grid value).
  """
  p, scale = unnormalize(g, size, align_corners, spatial_rank)
  p, finite = sanitize(p, size, padding_mode)
  p, padding_mult = pad_coordinate(p, size, padding_mode, align_corners, spatial_rank)
  return p, jnp.where(finite, padding_mult * jnp.asarray(scale, p.dtype), 0)


def axis_taps(coordinate, size: int, padding_mode: str, align_corners: bool, spatial_rank: int) -> AxisTaps:
  """The two taps of every point from its :func:`axis_coordinate`.

  Returns:
    AxisTaps with arrays of shape ``(2, P)``.
  """
  del size, padding_mode, align_corners, spatial_rank  # all in the coordinate already
  p, multiplier = coordinate
  west = jnp.floor(p)
  t = p - west
  return AxisTaps(
      position=jnp.stack([west, west + 1]),
      weight=jnp.stack([1 - t, t]),
      slope=jnp.stack([-multiplier, multiplier]),
  )


FAMILY = Family(axis_coordinate, axis_taps)
