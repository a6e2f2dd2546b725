"""A slow, obviously correct NumPy reference for ``grid_sample``.

Written from the specification alone (SPEC sections 2 to 5 for the PyTorch
semantics, section 9 for our rule on non-finite coordinates): one output point
at a time, one tap at a time, in Python floats (float64), with no
vectorisation and no attempt to reproduce PyTorch's operation order. It agrees
with the library to rounding (about 1e-12 in float64), except where the floor
or the rounding of a coordinate is ambiguous; callers compare with a tolerance
and keep nearest-mode coordinates away from ties.

Shapes are PyTorch's (channels first): input ``(N, C, *spatial_in)``, grid
``(N, *spatial_out, ndim)`` with ``grid[..., 0]`` along the last spatial axis
(x), output ``(N, C, *spatial_out)``. Works for 2-D and 3-D, all modes (5-D
bicubic applies the 2-D per-axis rule to three axes), all paddings.

Where the contract leaves the value open, the reference returns NaN: that is
reflection padding of a coordinate so far outside (``|p| > REFLECT_LIMIT``)
that which pixel it folds onto depends on the rounding of the fold.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

A = -0.75  # cubic convolution parameter (SPEC section 5)

# Beyond this many pixels, reflection's fold depends on rounding (float32
# cannot even represent the fractional part), so the result is left open.
REFLECT_LIMIT = 2.0**20


class Undetermined(Exception):
  """The contract does not pin down which pixel this coordinate reads."""


def unnormalize(g: float, size: int, align_corners: bool) -> float:
  """SPEC 2.1: grid value to pixel coordinate (Python float arithmetic)."""
  if align_corners:
    return (g + 1) / 2 * (size - 1)
  return ((g + 1) * size - 1) / 2


def clip(p: float, size: int) -> float:
  """SPEC 2.2: clamp to ``[0, size - 1]``."""
  return min(size - 1.0, max(p, 0.0))


def reflect(p: float, size: int, align_corners: bool) -> float:
  """SPEC 2.3: reflect into ``[0, S-1]`` (ac=True) or ``[-0.5, S-0.5]`` (ac=False)."""
  if align_corners:
    twice_low, twice_high = 0, 2 * (size - 1)
  else:
    twice_low, twice_high = -1, 2 * size - 1
  if twice_low == twice_high:
    return 0.0
  middle = twice_low / 2
  span = (twice_high - twice_low) / 2
  distance = abs(p - middle)
  extra = math.fmod(distance, span)
  flips = math.floor(distance / span)
  if flips % 2 == 0:
    return extra + middle
  return span - extra + middle


def pad(p: float, size: int, padding_mode: str, align_corners: bool) -> float:
  """SPEC 2.4: zeros is the identity, border clips, reflection reflects then clips."""
  if padding_mode == "zeros":
    return p
  if padding_mode == "border":
    return clip(p, size)
  if abs(p) > REFLECT_LIMIT:
    raise Undetermined
  return clip(reflect(p, size, align_corners), size)


def nonfinite_rule(p: float, size: int, padding_mode: str) -> float | None:
  """SPEC 9: returns the coordinate to use, or None when the point reads nothing.

  Zeros padding: a NaN or infinite coordinate is outside. Border and
  reflection: NaN and -inf read pixel 0, +inf the last pixel.
  """
  if math.isfinite(p):
    return p
  if padding_mode == "zeros":
    return None
  return size - 1.0 if p == math.inf else 0.0


def _f1(d: float) -> float:
  return (A + 2) * d**3 - (A + 3) * d**2 + 1


def _f2(d: float) -> float:
  return A * d**3 - 5 * A * d**2 + 8 * A * d - 4 * A


def cubic_coefficients(t: float) -> list[float]:
  """SPEC 5.2: weights of the taps ``floor(p) - 1 .. floor(p) + 2``."""
  return [_f2(1 + t), _f1(t), _f1(1 - t), _f2(2 - t)]


def axis_taps(g: float, size: int, mode: str, padding_mode: str,
              align_corners: bool) -> list[tuple[int, float]]:
  """The (pixel index, weight) taps of one grid value along one axis.

  An index may lie outside ``[0, size - 1]``; such a tap reads 0. Raises
  ``Undetermined`` when the contract leaves the pixel open.
  """
  p = nonfinite_rule(unnormalize(g, size, align_corners), size, padding_mode)
  if p is None:
    return []
  if mode == "bicubic":
    # Only unnormalised: the taps are chosen first, then padded one by one.
    if padding_mode == "reflection" and abs(p) > REFLECT_LIMIT:
      raise Undetermined
    first = math.floor(p)
    t = p - first
    taps = []
    for i, weight in enumerate(cubic_coefficients(t)):
      padded = pad(float(first - 1 + i), size, padding_mode, align_corners)
      taps.append((int(padded), weight))  # int() truncates toward zero
    return taps
  p = pad(p, size, padding_mode, align_corners)
  if mode == "nearest":
    return [(round(p), 1.0)]  # Python's round() is round half to even
  first = math.floor(p)
  t = p - first
  return [(first, 1 - t), (first + 1, t)]


def _point_taps(input_spatial, coords, mode, padding_mode, align_corners):
  """All in-bounds (index tuple, weight) taps of one output point; raises Undetermined."""
  ndim = len(input_spatial)
  # grid component k indexes spatial axis ndim - 1 - k.
  per_axis = [axis_taps(float(coords[ndim - 1 - axis]), size, mode, padding_mode, align_corners)
              for axis, size in enumerate(input_spatial)]
  taps = []
  for combination in itertools.product(*per_axis):
    index = tuple(i for i, _ in combination)
    if all(0 <= i < size for i, size in zip(index, input_spatial, strict=True)):
      taps.append((index, math.prod(w for _, w in combination)))
  return taps


def grid_sample_ref(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
  """Forward ``grid_sample`` in float64; NaN where the contract leaves the value open.

  Args:
    inp: (N, C, *spatial_in) array.
    grid: (N, *spatial_out, ndim) array.
    mode: "bilinear", "nearest" or "bicubic".
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.

  Returns:
    (N, C, *spatial_out) float64 array.
  """
  inp = np.asarray(inp, np.float64)
  grid = np.asarray(grid, np.float64)
  batch, channels = inp.shape[:2]
  out_spatial = grid.shape[1:-1]
  out = np.zeros((batch, channels) + out_spatial)
  for n in range(batch):
    for point in np.ndindex(*out_spatial):
      try:
        taps = _point_taps(inp.shape[2:], grid[(n,) + point], mode, padding_mode, align_corners)
      except Undetermined:
        out[(n, slice(None)) + point] = np.nan
        continue
      total = np.zeros(channels)
      for index, weight in taps:
        total += weight * inp[(n, slice(None)) + index]
      out[(n, slice(None)) + point] = total
  return out


def grad_input_ref(input_shape, grid, grad_out, mode="bilinear", padding_mode="zeros", align_corners=False):
  """``grad_input`` in float64 by scattering each tap's weight times the incoming gradient.

  A batch element containing an undetermined point gets NaN everywhere.

  Args:
    input_shape: (N, C, *spatial_in).
    grid: (N, *spatial_out, ndim) array.
    grad_out: (N, C, *spatial_out) incoming gradient.
    mode, padding_mode, align_corners: as for ``grid_sample_ref``.

  Returns:
    float64 array of ``input_shape``.
  """
  grid = np.asarray(grid, np.float64)
  grad_out = np.asarray(grad_out, np.float64)
  grad = np.zeros(tuple(input_shape))
  for n in range(input_shape[0]):
    try:
      for point in np.ndindex(*grid.shape[1:-1]):
        taps = _point_taps(tuple(input_shape[2:]), grid[(n,) + point], mode, padding_mode, align_corners)
        for index, weight in taps:
          grad[(n, slice(None)) + index] += weight * grad_out[(n, slice(None)) + point]
    except Undetermined:
      grad[n] = np.nan
  return grad
