"""Nearest-neighbour interpolation on 4-D and 5-D input.

One tap per axis at ``nearbyint(p)``, which is round half to even
(``jnp.round``; ``lax.round`` would round half away from zero). Its weight is
1 and does not depend on the grid value, so the grid gradient is identically
zero (``slope=None``) and grad_input scatters the incoming gradient to the
chosen pixel (SPEC section 4).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._coordinates import pad_coordinate, sanitize, unnormalize
from ._kernel import AxisTaps, Family


def axis_coordinate(g, size: int, padding_mode: str, align_corners: bool, spatial_rank: int):
  """The chosen pixel along one axis.

  Args:
    g: grid values for this axis, shape ``(P,)``.
    size: input size along the axis.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.
    spatial_rank: 2 or 3 (operation order of PyTorch's kernel for that rank).

  Returns:
    ``(position,)``: the padded coordinate rounded half to even, ``(P,)``.
  """
  p, _ = unnormalize(g, size, align_corners, spatial_rank)
  p, _ = sanitize(p, size, padding_mode)
  p, _ = pad_coordinate(p, size, padding_mode, align_corners, spatial_rank)
  return (jnp.round(p),)


def axis_taps(coordinate, size: int, padding_mode: str, align_corners: bool, spatial_rank: int) -> AxisTaps:
  """The one tap of every point from its :func:`axis_coordinate`.

  Returns:
    AxisTaps with arrays of shape ``(1, P)`` and ``slope=None``.
  """
  del size, padding_mode, align_corners, spatial_rank  # all in the coordinate already
  (position,) = coordinate
  return AxisTaps(position=position[None], weight=jnp.ones_like(position)[None], slope=None)


FAMILY = Family(axis_coordinate, axis_taps)
