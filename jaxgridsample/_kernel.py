"""The sampling kernel for one sample, shared by every interpolation family.

Every mode PyTorch offers is separable: the taps of a sample point are the
Cartesian product of per-axis taps, and a tap's weight is the product of its
per-axis weights. An interpolation family (``_linear``, ``_nearest``,
``_cubic``) therefore only describes one axis (a :class:`Family`: a per-point
coordinate, and the :class:`AxisTaps` it expands into); this module combines
the axes and does the memory work:

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

Layout matters more than arithmetic on XLA's CPU backend, so per-point arrays
keep the point axis last and contiguous: per-axis taps are (T, P), the
stacked table is (K, P). The forward of up to 16 taps and the grid gradient
of up to 8 build each tap from per-axis rows (:func:`each_tap`); the all-taps
functions use the stacked :class:`TapTable`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class AxisTaps(NamedTuple):
  """The taps of every sample point along one spatial axis.

  Arrays are tap-major, (T, P): XLA's CPU backend vectorises elementwise work
  along the long, contiguous point axis, while a short trailing tap axis
  (P, T) turns the coordinate arithmetic into scalar code (measured 2-4x
  slower for the whole forward).

  Attributes:
    position: (T, P) tap positions after padding, integer-valued floats;
      a position outside ``[0, size - 1]`` reads zero.
    weight: (T, P) interpolation weights (forward).
    slope: (T, P) derivatives of ``weight`` with respect to the grid value,
      including the unnormalise scale and padding multiplier (backward), or
      None when the weights do not depend on the grid (nearest).
    bounded: whether every position lies inside by construction (bicubic's
      taps under border and reflection padding, each padded on its own).
  """

  position: jnp.ndarray
  weight: jnp.ndarray
  slope: jnp.ndarray | None
  bounded: bool = False


class Family(NamedTuple):
  """An interpolation family along one axis, in two steps.

  ``coordinate`` does the costly per-point work (unnormalise, sanitise, pad)
  and returns a few per-point arrays; ``taps`` expands them into
  :class:`AxisTaps` with a floor and a few multiplies. The backward computes each chunk's
  coordinates once, carries them through its loop, and expands them where
  the taps are used: fwd+bwd 0.8-0.95x the time of carrying the expanded
  (T, P) taps, which took six fusions that each redid the coordinate work.

  Attributes:
    coordinate: ``(g, size, padding_mode, align_corners, spatial_rank)`` ->
      tuple of arrays whose last axis is the point axis (mostly (P,)), for
      grid values ``g`` of shape (P,).
    taps: ``(coordinate, size, padding_mode, align_corners, spatial_rank)``
      -> :class:`AxisTaps`.
  """

  coordinate: Callable[..., tuple[jnp.ndarray, ...]]
  taps: Callable[..., AxisTaps]


class TapTable(NamedTuple):
  """All taps of every sample point: the product of the per-axis taps.

  Arrays are tap-major, (K, P), with ``K = T ** ndim``.

  Attributes:
    index: one (K, P) int32 array per spatial axis, clamped into range.
    weight: (K, P) weights, zero for taps outside the input.
    slopes: per spatial axis, (K, P) derivative of the weight with respect
      to that axis's grid value (zero outside the input), or None.
    inside: (K, P) bool, True where the tap lies inside the input.
  """

  index: tuple[jnp.ndarray, ...]
  weight: jnp.ndarray
  slopes: tuple[jnp.ndarray, ...] | None
  inside: jnp.ndarray


class FlatTaps(NamedTuple):
  """All taps of every sample point as single indices into the flattened spatial axes.

  Arrays are tap-major, (K, P), in :class:`TapTable` order.

  Attributes:
    index: (K, P) int32 row-major index into ``prod(spatial_in)`` pixels,
      -1 where the tap lies outside the input.
    weight: (K, P) weights, or None where every weight is 1 (nearest).
  """

  index: jnp.ndarray
  weight: jnp.ndarray | None


class PointTaps(NamedTuple):
  """The per-axis taps of every sample point, what the kernel functions take.

  Attributes:
    axes: one :class:`AxisTaps` per spatial axis, first spatial axis first.
    sizes: the input's spatial shape.
  """

  axes: tuple[AxisTaps, ...]
  sizes: tuple[int, ...]


def point_coordinates(family: Family, points, spatial_shape, padding_mode: str,
                      align_corners: bool) -> tuple[tuple[jnp.ndarray, ...], ...]:
  """``family.coordinate`` of ``points`` (..., P, ndim) per spatial axis, first spatial axis first.

  Grid component 0 is x (the last spatial axis), 1 is y, 2 is z (the first).
  The coordinates are elementwise, so leading (batch) axes need no ``vmap``.
  """
  ndim = len(spatial_shape)
  return tuple(
      family.coordinate(points[..., ndim - 1 - axis], size, padding_mode, align_corners, ndim)
      for axis, size in enumerate(spatial_shape))


def taps_at(family: Family, coordinates, spatial_shape, padding_mode: str, align_corners: bool) -> PointTaps:
  """Expands :func:`point_coordinates` into the taps of every point."""
  ndim = len(spatial_shape)
  return PointTaps(
      tuple(family.taps(coordinate, size, padding_mode, align_corners, ndim)
            for coordinate, size in zip(coordinates, spatial_shape)),
      tuple(spatial_shape))


def _inside(axis: AxisTaps, size: int, row: int | None = None):
  """Where the axis's taps (or one row of them) lie inside ``[0, size - 1]``."""
  position = axis.position if row is None else axis.position[row]
  if axis.bounded:
    # A constant: XLA drops the masks' selects and compares altogether (for
    # bicubic, 8 fusions fewer to compile and run).
    return jnp.ones(position.shape, bool)
  return (position >= 0) & (position <= size - 1)


def _clamped_index(position, inside):
  return jnp.where(inside, position, 0).astype(jnp.int32)


def _all(masks):
  result = masks[0]
  for mask in masks[1:]:
    result = result & mask
  return result


def _masked_product(factors, inside):
  result = factors[0]
  for factor in factors[1:]:
    result = result * factor
  return jnp.where(inside, result, jnp.zeros((), result.dtype))


class Tap(NamedTuple):
  """One tap of every sample point, for the unrolled functions.

  Attributes:
    index: per spatial axis, (P,) int32 pixel index, clamped into range.
    weight: (P,) weight, zero where the tap lies outside the input.
    inside: (P,) bool, True where the tap lies inside the input.
    slopes: per spatial axis, (P,) derivative of ``weight`` with respect to
      that axis's grid value (zero outside the input), or None.
  """

  index: tuple[jnp.ndarray, ...]
  weight: jnp.ndarray
  inside: jnp.ndarray
  slopes: tuple[jnp.ndarray, ...] | None = None


def each_tap(taps: PointTaps, with_slopes: bool = False) -> list[Tap]:
  """The taps one by one, in :class:`TapTable` order (first axis slowest).

  Each tap is built from per-axis rows, which XLA fuses into the tap's gather
  more cheaply than rows sliced out of a :class:`TapTable`.
  """
  # Per-axis rows first (each used by several taps), then their products.
  inside_rows = [[_inside(axis, size, k) for k in range(axis.position.shape[0])]
                 for axis, size in zip(taps.axes, taps.sizes)]
  index_rows = [[_clamped_index(axis.position[k], ok) for k, ok in enumerate(oks)]
                for axis, oks in zip(taps.axes, inside_rows)]
  weight_rows = [list(axis.weight) for axis in taps.axes]
  slope_rows = [list(axis.slope) for axis in taps.axes] if with_slopes else None
  result = []
  for combo in itertools.product(*(range(axis.position.shape[0]) for axis in taps.axes)):
    inside = _all([oks[k] for oks, k in zip(inside_rows, combo)])
    weights = [rows[k] for rows, k in zip(weight_rows, combo)]
    slopes = None
    if with_slopes:
      slopes = tuple(_masked_product(weights[:a] + [slope_rows[a][k]] + weights[a + 1:], inside)
                     for a, k in enumerate(combo))
    index = tuple(rows[k] for rows, k in zip(index_rows, combo))
    result.append(Tap(index, _masked_product(weights, inside), inside, slopes))
  return result


def tap_table(taps: PointTaps) -> TapTable:
  """All taps stacked tap-major, for the functions that read every tap at once."""
  ndim = len(taps.sizes)
  taps_per_axis, num_points = taps.axes[0].position.shape
  full = (taps_per_axis,) * ndim + (num_points,)

  def spread(array, axis):
    # (T, P) -> (1, .., T, .., 1, P) broadcast to (T, .., T, P) -> (K, P):
    # axis's taps vary along tap dimension ``axis``.
    shape = [1] * ndim + [num_points]
    shape[axis] = taps_per_axis
    return jnp.broadcast_to(array.reshape(shape), full).reshape(taps_per_axis**ndim, num_points)

  inside_axis = [_inside(axis, size) for axis, size in zip(taps.axes, taps.sizes)]
  index = tuple(spread(_clamped_index(axis.position, ok), a)
                for a, (axis, ok) in enumerate(zip(taps.axes, inside_axis)))
  inside = _all([spread(ok, a) for a, ok in enumerate(inside_axis)])
  weights = [spread(axis.weight, a) for a, axis in enumerate(taps.axes)]
  slopes = None
  if taps.axes[0].slope is not None:
    slopes = tuple(
        _masked_product(weights[:a] + [spread(axis.slope, a)] + weights[a + 1:], inside)
        for a, axis in enumerate(taps.axes))
  return TapTable(index, _masked_product(weights, inside), slopes, inside)


# Flat pixel indices are int32: arrays of this many pixels or more are
# indexed per axis instead.
FLAT_INDEX_LIMIT = 2**31


def flat_taps(taps: PointTaps) -> FlatTaps:
  """All taps as flat pixel indices (fewer than ``FLAT_INDEX_LIMIT`` pixels)."""
  table = tap_table(taps)
  flat = table.index[0]
  for index, size in zip(table.index[1:], taps.sizes[1:]):
    flat = flat * size + index
  weight = None if taps.axes[0].slope is None else table.weight
  return FlatTaps(jnp.where(table.inside, flat, -1), weight)


# Two ways to read taps, each where XLA's CPU backend does it fastest:
#
# * the forward of up to 16 taps (linear, nearest, bicubic) unrolls one
#   gather per tap in the caller's layout, which XLA fuses with the weighted
#   sum: several times faster than gathering all taps into a (P, K, C)
#   temporary;
# * so does the grid gradient of up to 8 taps (bilinear, trilinear): grid
#   gradient alone 0.7x the time of the all-taps version on the trilinear
#   workload. Bicubic's 16 taps times two axes gained 0.75x but doubled the
#   compile time of value_and_grad (0.9 -> 1.7 s), so it stays all-taps;
# * everything else gathers all taps at once from a channels-last view, rows
#   of C contiguous values, and scatter-adds into a channels-last accumulator
#   (unrolling 64 tricubic taps, or the backward's scatters, was slower and
#   multiplied compile time).
UNROLL_LIMIT = 16
GRAD_UNROLL_LIMIT = 8


def per_point(x, channels_last: bool):
  """Broadcasts a per-point (P,) array against a (P, C) or (C, P) one."""
  return x[:, None] if channels_last else x[None, :]


def _mask(read, inside):
  # A select, not a zero weight: an inf/NaN pixel must not leak into taps
  # that merely borrowed its (clamped) index.
  return jnp.where(inside, read, jnp.zeros((), read.dtype))


def _read(values, index, inside, channels_last: bool):
  """Values at per-axis pixel ``index`` (P,) arrays, (P, C) or (C, P); zero where not ``inside``."""
  ndim = len(index)
  spatial = tuple(range(ndim)) if channels_last else tuple(range(1, ndim + 1))
  dims = lax.GatherDimensionNumbers(offset_dims=(1,) if channels_last else (0,), collapsed_slice_dims=spatial,
                                    start_index_map=spatial)
  slice_sizes = (1,) * ndim + values.shape[-1:] if channels_last else values.shape[:1] + (1,) * ndim
  indices = jnp.stack(index, axis=-1)
  read = lax.gather(values, indices, dims, slice_sizes, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  return _mask(read, per_point(inside, channels_last))


def _read_tap(values, tap: Tap, channels_last: bool):
  """Values of one tap at every point, (P, C) or (C, P); zero outside the input."""
  return _read(values, tap.index, tap.inside, channels_last)


def _point_major(index):
  # The taps of one point lie in a small neighbourhood: reading or writing
  # them one after the other (P, K) rather than tap by tap across the whole
  # image (K, P) keeps the memory accesses local (bicubic's backward, 16
  # taps: measured 1.7x faster).
  return tuple(i.T for i in index)


def _read_all_taps(values_last, table: TapTable):
  """Every tap of every point from channels-last values: (P, K, C)."""
  read = values_last.at[_point_major(table.index)].get(mode="promise_in_bounds")
  return _mask(read, table.inside.T[..., None])


@jax.custom_jvp
def materialized(x):
  """``x`` unchanged, but computed into its own buffer by XLA's CPU backend.

  XLA fuses cheap elementwise producers into every consumer. For per-point
  arrays that a channels-first loop reads once per channel, that repeats the
  coordinate arithmetic C times. A reduce-window is never fused into its
  consumers; this one takes the maximum of each element and one padding
  value of -inf, or the lowest integer (a dilated base puts a hole after
  every element), which is the element itself, NaN included. A
  reduce-window of ``max`` has no derivative rule of its own, so the
  identity's is given: the forward inside ``jax.vjp`` is differentiated by
  grad-of-grad.
  """
  last = x.ndim - 1
  ones = (1,) * last
  lowest = jnp.iinfo(x.dtype).min if jnp.issubdtype(x.dtype, jnp.integer) else -jnp.inf
  return lax.reduce_window(x, jnp.array(lowest, x.dtype), lax.max, ones + (2,), ones + (2,),
                           ((0, 0),) * last + ((0, 1),), base_dilation=ones + (2,))


@materialized.defjvp
def _materialized_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return materialized(x), dx


def interpolate(values, taps: PointTaps, channels_last: bool):
  """Forward, one gather per tap: (P, C) or (C, P). For at most 16 taps."""
  out = 0
  any_inside = None
  for tap in each_tap(taps):
    out = out + per_point(tap.weight, channels_last) * _read_tap(values, tap, channels_last)
    any_inside = tap.inside if any_inside is None else any_inside | tap.inside
  # A no-op select (a point with no tap inside sums to zero anyway) that
  # keeps the forward one fused loop: XLA's CPU backend can pull a final add
  # into a consumer's reduction (seen with ``sum(out * w)`` for a constant
  # ``w``), and then materialises every tap's gather on its own, 4-8x slower
  # than this forward alone; it leaves a select where it is.
  return _mask(out, per_point(any_inside, channels_last))


def interpolate_flat(values, flat: FlatTaps, channels_last: bool):
  """Forward, one gather per tap by flat pixel index: (P, C) or (C, P).

  With the taps' indices and weights computed into buffers of their own
  (:func:`materialized`), each of the C reads of a tap is a load, a compare
  and a multiply-add, where :func:`interpolate` re-expands the taps from the
  coordinates for every channel.
  """
  channels = values.shape[-1] if channels_last else values.shape[0]
  pixels = math.prod(values.shape[:-1] if channels_last else values.shape[1:])
  # One spatial axis: (pixels, C) or (C, pixels).
  flat_values = values.reshape((pixels, channels) if channels_last else (channels, pixels))
  out = 0
  for k in range(flat.index.shape[0]):
    index = flat.index[k]
    read = _read(flat_values, (jnp.maximum(index, 0),), index >= 0, channels_last)
    out = out + (read if flat.weight is None else per_point(flat.weight[k], channels_last) * read)
  return out


# Channel counts up to these (by spatial rank) count as few for the
# channels-first grid gradient (:func:`grad_points_unrolled`).
FEW_CHANNELS = {2: 4, 3: 8}


def grad_points_unrolled(values, taps: PointTaps, grad_out, points, channels_last: bool):
  """grad_grid, (P, ndim), one gather per tap in the caller's layout. For at most 8 taps.

  ATen's order: per channel, the taps' values times their slopes summed (the
  spatial derivative, ``gx``/``gy``), then times the incoming gradient and
  summed over channels.

  Args:
    values: (*spatial_in, C), or (C, *spatial_in) unless ``channels_last``.
    taps: the taps of P points.
    grad_out: (P, C), or (C, P) unless ``channels_last``, incoming gradient.
    points: (P, ndim) the grid points.
    channels_last: the layout of ``values`` and ``grad_out``.
  """
  if taps.axes[0].slope is None:
    return _zero_grad_points(points, values.dtype)
  if values.shape[-1 if channels_last else 0] == 1:
    return _grad_points_one_channel(values, taps, grad_out.reshape(-1), channels_last)
  derivatives = [0] * len(taps.axes)
  for tap in each_tap(taps, with_slopes=True):
    read = _read_tap(values, tap, channels_last)
    for axis, slope in enumerate(tap.slopes):
      derivatives[axis] = derivatives[axis] + per_point(slope, channels_last) * read
  channel_axis = 1 if channels_last else 0
  if not channels_last and values.shape[0] <= FEW_CHANNELS[len(taps.axes)]:
    # Few channel planes: each channel's terms computed into buffers of their
    # own, then summed. Fused into the channel reduction, every tap's gather
    # and weights were evaluated once per channel in a scalar loop, 6x the
    # forward's time per point. Measured fwd+bwd, 2-D: C = 2-4 0.85-0.95x,
    # C = 8 1.0-1.08x, C = 16-32 1.4-1.6x; 3-D: C = 3-8 0.84-0.95x, C = 16
    # 1.5x.
    terms = tuple(materialized(grad_out * d) for d in derivatives)
    per_axis = _sum_each(terms, channel_axis)
  elif len(derivatives) == 2:
    # Both axes as one complex number, summed over channels by one
    # single-output reduction with the gathers fused in: grid gradient alone
    # 0.7-0.9x the time of the variadic reduction below (bilinear, C = 3 to
    # 32). Multiplying by the real incoming gradient adds ``dy * 0`` to
    # ``dx * g`` (and ``dx * 0`` to ``dy * g``), which is exact unless the
    # other component is non-finite; that happens only where an input value
    # at one of the taps is, and then both components are already non-finite
    # (as in ATen: every tap enters both), though one may be NaN where ATen
    # has an infinity.
    both = jnp.sum(lax.complex(derivatives[0], derivatives[1]) * grad_out, axis=channel_axis)
    per_axis = (jnp.real(both), jnp.imag(both))
  else:
    # One variadic reduction over channels for all axes. XLA's CPU backend
    # hands a plain sum to a library kernel that needs its operands
    # materialised (each tap's gather on its own); this one it emits itself,
    # with the gathers fused in. (The complex form above, or a complex pair
    # plus a real sum, was no faster for three axes.)
    per_axis = _sum_each(tuple(grad_out * d for d in derivatives), channel_axis)
  return jnp.stack(per_axis[::-1], axis=-1)


def _sum_each(arrays, axis: int):
  """``jnp.sum(a, axis)`` of every array, as one variadic reduction."""
  zero = jnp.zeros((), arrays[0].dtype)
  return lax.reduce(tuple(arrays), (zero,) * len(arrays), lambda a, b: tuple(x + y for x, y in zip(a, b)),
                    (axis,))


def _grad_points_one_channel(values, taps: PointTaps, grad_out, channels_last: bool):
  """:func:`grad_points_unrolled` for a single channel; ``grad_out`` is (P,).

  With one channel there is no channel sum, and XLA fused the taps' gathers
  into the in-place update of the grid gradient: a single-threaded loop that
  evaluated them once per axis. Summing the taps' terms as a (K, P) stack
  instead keeps one parallel reduction that reads each tap once (C = 1
  forward+backward: 0.57-0.71x the time in 2-D, 0.79-0.93x in 3-D).
  """
  terms = [[] for _ in taps.axes]
  for tap in each_tap(taps, with_slopes=True):
    read = _read_tap(values, tap, channels_last).reshape(-1)
    for axis, slope in enumerate(tap.slopes):
      terms[axis].append(slope * read)
  if len(terms) == 2:
    # The complex pairing of grad_points_unrolled, summed over the taps.
    both = jnp.sum(lax.complex(jnp.stack(terms[0]), jnp.stack(terms[1])), axis=0)
    derivatives = (jnp.real(both), jnp.imag(both))
  else:
    derivatives = _sum_each([jnp.stack(t) for t in terms], 0)
  # ATen's order: the spatial derivative first, then times the incoming gradient.
  return jnp.stack([d * grad_out for d in derivatives[::-1]], axis=-1)


def _zero_grad_points(points, dtype):
  # Zero, but computed from the points rather than a constant, so that a
  # batch-sharded grid gives a batch-sharded (not replicated) gradient.
  return jnp.where(jnp.isfinite(points), points * 0, 0).astype(dtype)


# The functions below take channels-last values (*spatial_in, C) and
# per-point arrays (P, C): the caller transposes once for the whole batch.


def interpolate_all_taps(values, taps: PointTaps):
  """Forward, all taps in one gather: (P, C)."""
  table = tap_table(taps)
  # As a contraction (XLA emits a dot): measured 2x faster for many taps
  # than a multiply followed by a reduction.
  return jnp.einsum("kp,pkc->pc", table.weight, _read_all_taps(values, table))


def spatial_gradient(values, taps: PointTaps):
  """d output / d grid value per grid component, (ndim, P, C)."""
  table = tap_table(taps)
  reads = _read_all_taps(values, table)
  return jnp.stack([jnp.einsum("kp,pkc->pc", slope, reads) for slope in table.slopes[::-1]])


def _with_zero_channels(rows, channels: int):
  """(P, C') -> (P, channels): zero channels appended (see ``_autodiff.scatter_channels``)."""
  return jnp.pad(rows, ((0, 0), (0, channels - rows.shape[-1])))


def add_grad_values(accumulator, taps: PointTaps, grad_out, channels_last: bool = True):
  """grad_input: scatter-adds ``weight * grad_out`` to every tap inside the input.

  Args:
    accumulator: (*spatial_in, C) gradient so far, or (C, *spatial_in) unless
      ``channels_last``.
    taps: the taps of P points.
    grad_out: (P, C') with C' <= C (channels C' and after get zero), or
      (C, P) unless ``channels_last``, incoming gradient of those points.
    channels_last: the layout of ``accumulator`` and ``grad_out``.

  Returns:
    ``accumulator`` plus these points' contributions.
  """
  table = tap_table(taps)
  index = _point_major(table.index)
  # A select, not just the zero weight: a tap outside the input writes to a
  # clamped index, where 0 * inf (a non-finite incoming gradient) would leave
  # a NaN that ATen never writes (it skips such taps).
  if channels_last:
    grad_out = _with_zero_channels(grad_out, accumulator.shape[-1])
    updates = _mask(table.weight.T[..., None] * grad_out[:, None, :], table.inside.T[..., None])
  else:
    # (C, P, K) updates, each point's taps one window across the C planes.
    updates = _mask(table.weight.T[None] * grad_out[..., None], table.inside.T[None])
    index = (slice(None),) + index
  return accumulator.at[index].add(updates, mode="promise_in_bounds")


def add_grad_values_in_windows(padded, taps: PointTaps, grad_out):
  """grad_input for adjacent taps (linear, or bicubic under zeros padding), one window per row of taps.

  Each point's T taps along the last axis are adjacent pixels. With the last
  spatial axis merged with the channels, they are one contiguous window of
  T * C values, and XLA's CPU scatter-add, which pays per update row, writes
  T ** (ndim - 1) windows per point instead of T ** ndim rows of C (linear
  pairs, scatter alone, 384x384: C = 1 0.55x, C = 3 0.63-0.77x, C = 8 0.71x,
  C = 32 0.84x the time of rows; a two-dimensional (T, C) window was 1.4-3x
  slower than rows). A window may start up to T - 1 pixels before the input
  or end as far after it, so the accumulator has a margin of T - 1 pixels
  on every axis.

  Args:
    padded: (*(spatial_in + 2 * (T - 1)), C) gradient so far, pixel ``i`` at
      ``i + T - 1``.
    taps: the taps of P points, T per axis, each one pixel after the one
      before.
    grad_out: (P, C') incoming gradient of those points, C' <= C; channels
      C' and after get zero.

  Returns:
    ``padded`` plus these points' contributions.
  """
  ndim = len(taps.sizes)
  channels = padded.shape[-1]
  per_axis = taps.axes[0].position.shape[0]
  margin = per_axis - 1
  rows = per_axis ** (ndim - 1)

  def start(axis, size, row):
    # The padded index of a window's first pixel (or of one lead-axis tap);
    # a point whose taps all lie outside writes zeros, anywhere in range.
    first = axis.position[row]
    ok = (first >= -margin) & (first <= size - 1)
    return jnp.where(ok, first, -margin).astype(jnp.int32) + margin

  window_start = start(taps.axes[-1], taps.sizes[-1], 0) * channels
  lead_starts = [[start(axis, size, k) for k in range(per_axis)] for axis, size in zip(taps.axes[:-1], taps.sizes[:-1])]
  index_rows = []
  for combo in itertools.product(range(per_axis), repeat=ndim - 1):
    # Index: the lead axes' taps in ``combo``, then the window's start on the last axis.
    row = [starts[k] for starts, k in zip(lead_starts, combo)]
    index_rows.append(jnp.stack(row + [window_start], axis=-1))  # (P, ndim)
  index = jnp.stack(index_rows, axis=1)  # (P, R, ndim), R = T ** (ndim - 1)
  # The tap table's order (last axis fastest) puts each window's taps side by side: (K, P) -> (P, R, T).
  table = tap_table(taps)
  weight = table.weight.T.reshape(-1, rows, per_axis)
  inside = table.inside.T.reshape(-1, rows, per_axis)
  grad_out = _with_zero_channels(grad_out, channels)
  updates = _mask(weight[..., None] * grad_out[:, None, None, :], inside[..., None])  # (P, R, T, C)
  merged = padded.reshape(padded.shape[:-2] + (padded.shape[-2] * channels,))
  dims = lax.ScatterDimensionNumbers(update_window_dims=(2,), inserted_window_dims=tuple(range(ndim - 1)),
                                     scatter_dims_to_operand_dims=tuple(range(ndim)))
  merged = lax.scatter_add(merged, index, updates.reshape(updates.shape[:2] + (per_axis * channels,)), dims,
                           mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
  return merged.reshape(padded.shape)


def grad_points(values, taps: PointTaps, grad_out, points):
  """grad_grid: (P, ndim), per axis ``sum_k slope_k * sum_c grad_out_c * value_kc``."""
  if taps.axes[0].slope is None:
    return _zero_grad_points(points, values.dtype)
  table = tap_table(taps)
  # Contract channels first: one (K, P) array instead of one (P, K, C) per axis.
  response = jnp.einsum("pkc,pc->kp", _read_all_taps(values, table), grad_out)
  per_axis = [jnp.sum(slope * response, axis=0) for slope in table.slopes]
  return jnp.stack(per_axis[::-1], axis=-1)
