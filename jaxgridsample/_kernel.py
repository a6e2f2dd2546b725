"""The sampling kernel for one sample, shared by every interpolation family.

Every mode PyTorch offers is separable: the taps of a sample point are the
Cartesian product of per-axis taps, and a tap's weight is the product of its
per-axis weights. An interpolation family (``_linear``, ``_nearest``,
``_cubic``) therefore only describes one axis (:class:`AxisTaps`); this module
combines the axes and does the memory work:

* forward: gather the taps and sum them with their weights;
* backward, grad_input: scatter-add weight times incoming gradient to the taps
  (ATen's ``grad_input`` loop);
* backward, grad_grid: along each axis, the same sum with that axis's weight
  replaced by its derivative (ATen's ``gx``/``gy``/``gz`` from neighbouring
  value differences), contracted with the incoming gradient over channels;
* forward-mode tangent: the forward applied to the input's tangent plus the
  spatial derivative times the grid's tangent.

Everything here works on one sample: grid points of shape ``(P, ndim)`` and
``values`` of shape ``(*spatial_in, C)`` (channels-last; :func:`interpolate`
also takes ``(C, *spatial_in)``). Indices stay per axis (never flattened), so
no index arithmetic can overflow on large inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax


class AxisTaps(NamedTuple):
  """The taps of every sample point along one spatial axis.

  Attributes:
    position: (P, T) tap positions after padding, integer-valued floats;
      a position outside ``[0, size - 1]`` reads zero.
    weight: (P, T) interpolation weights (forward).
    slope: (P, T) derivatives of ``weight`` with respect to the grid value,
      including the unnormalise scale and padding multiplier (backward), or
      None when the weights do not depend on the grid (nearest).
  """

  position: jnp.ndarray
  weight: jnp.ndarray
  slope: jnp.ndarray | None


AxisTapsFn = Callable[..., AxisTaps]


class TapTable(NamedTuple):
  """All taps of every sample point: the product of the per-axis taps.

  Attributes:
    index: one (P, K) int32 array per spatial axis, clamped into range.
    weight: (P, K) weights, zero for taps outside the input.
    slopes: per spatial axis, (P, K) derivative of the weight with respect
      to that axis's grid value (zero outside the input), or None.
    inside: (P, K) bool, True where the tap lies inside the input.
  """

  index: tuple[jnp.ndarray, ...]
  weight: jnp.ndarray
  slopes: tuple[jnp.ndarray, ...] | None
  inside: jnp.ndarray


def tap_table(axis_taps: AxisTapsFn, points, spatial_shape, padding_mode: str,
              align_corners: bool) -> TapTable:
  """Builds the taps of ``points`` (P, ndim) for an input of ``spatial_shape``.

  Grid component 0 is x (the last spatial axis), 1 is y, 2 is z (the first).
  """
  ndim = len(spatial_shape)
  num_points = points.shape[0]
  per_axis = [
      axis_taps(points[:, ndim - 1 - axis], size, padding_mode, align_corners, ndim)
      for axis, size in enumerate(spatial_shape)
  ]
  taps_per_axis = per_axis[0].position.shape[-1]
  full = (num_points,) + (taps_per_axis,) * ndim

  def spread(array, axis):
    # (P, T) -> (P, 1, .., T, .., 1) broadcast to (P, T, .., T): axis's taps
    # vary along tap dimension ``axis``.
    shape = [num_points] + [1] * ndim
    shape[1 + axis] = taps_per_axis
    return jnp.broadcast_to(array.reshape(shape), full).reshape(num_points, taps_per_axis**ndim)

  inside_axis = [(taps.position >= 0) & (taps.position <= size - 1)
                 for taps, size in zip(per_axis, spatial_shape)]
  index = tuple(
      spread(jnp.where(ok, taps.position, 0).astype(jnp.int32), axis)
      for axis, (taps, ok) in enumerate(zip(per_axis, inside_axis)))
  inside = spread(inside_axis[0], 0)
  for axis in range(1, ndim):
    inside = inside & spread(inside_axis[axis], axis)
  weights = [spread(taps.weight, axis) for axis, taps in enumerate(per_axis)]
  zero = jnp.zeros((), weights[0].dtype)

  def product(factors):
    result = factors[0]
    for factor in factors[1:]:
      result = result * factor
    return jnp.where(inside, result, zero)

  weight = product(weights)
  slopes = None
  if per_axis[0].slope is not None:
    slopes = tuple(
        product(weights[:axis] + [spread(taps.slope, axis)] + weights[axis + 1:])
        for axis, taps in enumerate(per_axis))
  return TapTable(index, weight, slopes, inside)


# Two ways to read taps, each where XLA's CPU backend does it fastest:
#
# * the forward of linear and nearest (at most 8 taps) unrolls one gather per
#   tap in the caller's layout, which XLA fuses with the weighted sum: several
#   times faster than gathering all taps into a (P, K, C) temporary;
# * everything else gathers all taps at once from a channels-last view, rows
#   of C contiguous values, and scatter-adds into a channels-last accumulator
#   (unrolling 16 or 64 cubic taps, or the backward's scatters, was slower and
#   multiplied compile time).
UNROLL_LIMIT = 8


def per_point(x, channels_last: bool):
  """Broadcasts a per-point (P,) array against a (P, C) or (C, P) one."""
  return x[:, None] if channels_last else x[None, :]


def _mask(read, inside):
  # A select, not a zero weight: an inf/NaN pixel must not leak into taps
  # that merely borrowed its (clamped) index.
  return jnp.where(inside, read, jnp.zeros((), read.dtype))


def _read_tap(values, table: TapTable, k: int, channels_last: bool):
  """Values of tap ``k`` at every point, (P, C) or (C, P); zero outside the input."""
  ndim = len(table.index)
  spatial = tuple(range(ndim)) if channels_last else tuple(range(1, ndim + 1))
  dims = lax.GatherDimensionNumbers(offset_dims=(1,) if channels_last else (0,), collapsed_slice_dims=spatial,
                                    start_index_map=spatial)
  slice_sizes = (1,) * ndim + values.shape[-1:] if channels_last else values.shape[:1] + (1,) * ndim
  indices = jnp.stack([index[:, k] for index in table.index], axis=-1)
  read = lax.gather(values, indices, dims, slice_sizes, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  return _mask(read, per_point(table.inside[:, k], channels_last))


def _read_all_taps(values_last, table: TapTable):
  """Every tap of every point from channels-last values: (P, K, C)."""
  read = values_last.at[table.index].get(mode="promise_in_bounds")
  return _mask(read, table.inside[..., None])


def interpolate(values, table: TapTable, channels_last: bool):
  """Forward, one gather per tap: (P, C) or (C, P). For at most 8 taps."""
  out = 0
  for k in range(table.weight.shape[1]):
    out = out + per_point(table.weight[:, k], channels_last) * _read_tap(values, table, k, channels_last)
  return out


# The functions below take channels-last values (*spatial_in, C) and
# per-point arrays (P, C): the caller transposes once for the whole batch.


def interpolate_all_taps(values, table: TapTable):
  """Forward, all taps in one gather: (P, C)."""
  # As a contraction (XLA emits a batched dot): measured 2x faster for the 16
  # bicubic taps than a multiply followed by a reduction.
  return jnp.einsum("pk,pkc->pc", table.weight, _read_all_taps(values, table))


def spatial_gradient(values, table: TapTable):
  """d output / d grid value per grid component, (ndim, P, C)."""
  reads = _read_all_taps(values, table)
  return jnp.stack([jnp.einsum("pk,pkc->pc", slope, reads) for slope in table.slopes[::-1]])


def grad_values(values, table: TapTable, grad_out):
  """grad_input: scatter-add ``weight * grad_out`` to every tap inside the input."""
  updates = table.weight[..., None] * grad_out[:, None, :]
  return jnp.zeros_like(values).at[table.index].add(updates, mode="promise_in_bounds")


def grad_points(values, table: TapTable, grad_out, points):
  """grad_grid: (P, ndim), per axis ``sum_k slope_k * sum_c grad_out_c * value_kc``."""
  if table.slopes is None:
    # Zero, but computed from the points rather than a constant, so that a
    # batch-sharded grid gives a batch-sharded (not replicated) gradient.
    return jnp.where(jnp.isfinite(points), points * 0, 0).astype(values.dtype)
  # Contract channels first: one (P, K) array instead of one (P, K, C) per axis.
  response = jnp.einsum("pkc,pc->pk", _read_all_taps(values, table), grad_out)
  per_axis = [jnp.sum(slope * response, axis=-1) for slope in table.slopes]
  return jnp.stack(per_axis[::-1], axis=-1)
