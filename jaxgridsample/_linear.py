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
from ._kernel import AxisTaps


def axis_taps(g, size: int, padding_mode: str, align_corners: bool, spatial_rank: int) -> AxisTaps:
  """Taps of linear interpolation along one axis.

  Args:
    g: grid values for this axis, shape ``(P,)``.
    size: input size along the axis.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.
    spatial_rank: 2 or 3 (operation order of PyTorch's kernel for that rank).

  Returns:
    AxisTaps with arrays of shape ``(2, P)``.
  """
  p, scale = unnormalize(g, size, align_corners, spatial_rank)
  p, finite = sanitize(p, size, padding_mode)
  p, padding_mult = pad_coordinate(p, size, padding_mode, align_corners, spatial_rank)
  west = jnp.floor(p)
  t = p - west
  multiplier = jnp.where(finite, padding_mult * jnp.asarray(scale, p.dtype), 0)
  return AxisTaps(
      position=jnp.stack([west, west + 1]),
      weight=jnp.stack([1 - t, t]),
      slope=jnp.stack([-multiplier, multiplier]),
  )
