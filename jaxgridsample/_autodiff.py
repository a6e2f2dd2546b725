"""Batched sampling with hand-written derivatives (the custom-derivative wiring).

The per-sample kernel (``_kernel``) is written once and ``jax.vmap``-ed over
the batch, like ATen's grid slice iterator walks one sample at a time.

Two wrappers share that kernel:

* :func:`sample` (the default) is a ``jax.custom_vjp``: its residuals are just
  the input and the grid, and its backward reproduces ATen's formulas in
  plain JAX ops, so it can itself be differentiated (grad of grad). JAX does
  not apply forward mode to custom_vjp functions. The backward walks each
  sample's points in chunks (a ``fori_loop``), which keeps its temporaries to
  a few MiB whatever the output size.
* :func:`sample_forward_mode` is a ``jax.custom_jvp`` with the same formulas
  as a JVP rule: forward mode, Hessians, and reverse mode by transposition.

Both run in one of two implementations (``implementation``): "xla", the
kernel above in JAX operations, or "cpu", the compiled CPU kernel
(``_cpu_kernel``), for the forward and the first-order backward. The compiled
backward is differentiated with the JAX one's derivatives
(:func:`_compiled_backward`), so every order of differentiation works with
either.

Arrays are in the user's layout throughout: ``values`` is (N, C, *spatial_in)
or, with ``channels_last``, (N, *spatial_in, C); the output and its
cotangent likewise; the grid is (N, *spatial_out, ndim).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from . import _cpu_kernel, _cubic, _kernel, _linear, _nearest

# Interpolation families by mode: a new mode is one more entry.
INTERPOLATION_FAMILIES = {
    "bilinear": _linear.FAMILY,
    "nearest": _nearest.FAMILY,
    "bicubic": _cubic.FAMILY,
}
_TAPS_PER_AXIS = {"bilinear": 2, "nearest": 1, "bicubic": 4}
IMPLEMENTATIONS = ("xla", "cpu")


def compute_dtype(*dtypes):
  """The dtype the arithmetic runs in: the widest input float, at least float32.

  float16 and bfloat16 are computed in float32, as PyTorch's opmath does.
  """
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _flatten_points(grid):
  """(N, *spatial_out, ndim) -> (N, P, ndim); explicit sizes, as N or P may be 0."""
  return grid.reshape(grid.shape[0], math.prod(grid.shape[1:-1]), grid.shape[-1])


def _flatten_output_like(x, num_points: int, channels_last: bool):
  """(N, C, *spatial_out) -> (N, C, P), or (N, *spatial_out, C) -> (N, P, C)."""
  if channels_last:
    return x.reshape(x.shape[0], num_points, x.shape[-1])
  return x.reshape(x.shape[0], x.shape[1], num_points)


def _unflatten_output(x, grid_shape, channels_last: bool):
  """Inverse of :func:`_flatten_output_like` for the grid's output shape."""
  out_spatial = tuple(grid_shape[1:-1])
  if channels_last:
    return x.reshape((x.shape[0],) + out_spatial + (x.shape[-1],))
  return x.reshape(x.shape[:2] + out_spatial)


def _to_channels_last(x, channels_last: bool):
  return x if channels_last else jnp.moveaxis(x, 1, -1)


def _from_channels_last(x, channels_last: bool):
  return x if channels_last else jnp.moveaxis(x, -1, 1)


def _batched(kernel_fn, mode, padding_mode, align_corners, values_last=True, materialize=False):
  """Lifts ``kernel_fn(values, taps, *extra)`` from one sample to a batch.

  The returned function takes values (channels-last (N, *spatial_in, C)
  unless ``values_last`` is False), grid (N, *spatial_out, ndim) and extra
  per-sample arrays already flattened to one point axis; it returns
  ``kernel_fn``'s results with a leading batch axis. With ``materialize``,
  the points' coordinates are computed into buffers of their own first.
  """
  family = INTERPOLATION_FAMILIES[mode]

  def batched(values, grid, *extra):
    spatial_shape = values.shape[1:-1] if values_last else values.shape[2:]
    # The coordinate arithmetic is elementwise, so it runs on the whole batch
    # outside ``vmap``: under it, every jax.numpy function (a jit of its own)
    # went through the batching rule, a tenth of value_and_grad's lowering time.
    coordinates = _kernel.point_coordinates(family, _flatten_points(grid), spatial_shape, padding_mode,
                                            align_corners)
    if materialize:
      coordinates = jax.tree.map(_kernel.materialized, coordinates)

    def one_sample(values, coordinates, *extra):
      taps = _kernel.taps_at(family, coordinates, spatial_shape, padding_mode, align_corners)
      return kernel_fn(values, taps, *extra)

    return jax.vmap(one_sample)(values, coordinates, *extra)

  return batched


# The forward computes each point's coordinates (``_kernel.Family``) into
# buffers of their own (``_kernel.materialized``) before its gathers, rather
# than letting XLA fuse the coordinate arithmetic into every tap's gather,
# where it runs once per channel. Measured, interleaved A/B of the forward
# against fusing: feature maps 0.91x, image (C = 3) 0.84x, reflection-padded
# downsampling 0.70-0.95x, channels-last C = 32 0.88-0.91x, tricubic 0.79x,
# trilinear and nearest 0.99-1.03x. Not for 2-D bicubic (0.97-1.19x): its
# sixteen taps' expansion from carried positions costs more than it saves.
# (Materialising the expanded taps instead, as before, paid off only for 2-D
# bilinear and nearest with at least 4 channels.)
def _materializes_coordinates(mode: str, ndim: int) -> bool:
  return not (mode == "bicubic" and ndim == 2)


# With at most 4 taps (2-D bilinear, nearest), the forward also computes the
# taps into buffers, as flat pixel indices and weights (``_kernel.FlatTaps``),
# so each channel's read of a tap is a load and a multiply-add. That writes
# and reads K (index, weight) pairs per point, which pays off once enough
# channels share them. Measured, interleaved A/B of the forward against
# expanding the coordinates per channel: feature maps (C = 32) 0.76-0.92x,
# C = 16 0.71-0.74x, C = 8 0.82-0.83x, C = 4 0.61-1.0x, nearest (C = 16)
# 0.54-0.66x, 3-D nearest 0.56-0.73x, nearest with C = 3 0.64-0.90x,
# downsampling 0.75-0.87x; but bilinear with C = 3 1.3-1.6x (image), and
# trilinear (8 taps) 1.06-1.17x.
_FLAT_TAPS_LIMIT = 4
_FLAT_TAPS_MIN_CHANNELS = {"bilinear": 4, "nearest": 1}


def _reads_flat_taps(mode: str, spatial_shape, channels: int) -> bool:
  return (_TAPS_PER_AXIS[mode]**len(spatial_shape) <= _FLAT_TAPS_LIMIT
          and channels >= _FLAT_TAPS_MIN_CHANNELS[mode]
          and math.prod(spatial_shape) < _kernel.FLAT_INDEX_LIMIT)


def _interpolate_flat(values, taps, channels_last):
  flat = jax.tree.map(_kernel.materialized, _kernel.flat_taps(taps))
  return _kernel.interpolate_flat(values, flat, channels_last)


def _forward(values, grid, mode, padding_mode, align_corners, channels_last, implementation="xla"):
  """The forward of a batch, in either implementation."""
  if implementation == "cpu":
    return _compiled_forward(values, grid, mode, padding_mode, align_corners, channels_last)
  dtype = compute_dtype(values.dtype, grid.dtype)
  values_c, grid_c = values.astype(dtype), grid.astype(dtype)
  materialize = _materializes_coordinates(mode, grid.shape[-1])
  spatial_shape = values.shape[1:-1] if channels_last else values.shape[2:]
  channels = values.shape[-1 if channels_last else 1]
  if _TAPS_PER_AXIS[mode] ** grid.shape[-1] <= _kernel.UNROLL_LIMIT:
    # Few taps: gather tap by tap straight from the caller's layout.
    interpolate = (_interpolate_flat if _reads_flat_taps(mode, spatial_shape, channels)
                   else _kernel.interpolate)
    kernel = functools.partial(interpolate, channels_last=channels_last)
    out = _batched(kernel, mode, padding_mode, align_corners, values_last=channels_last,
                   materialize=materialize)(values_c, grid_c)
    return _unflatten_output(out, grid.shape, channels_last).astype(values.dtype)
  run = _batched(_kernel.interpolate_all_taps, mode, padding_mode, align_corners, materialize=materialize)
  out = run(_to_channels_last(values_c, channels_last), grid_c)
  out = _unflatten_output(out, grid.shape, channels_last=True)
  return _from_channels_last(out, channels_last).astype(values.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _compiled_forward(values, grid, mode, padding_mode, align_corners, channels_last):
  """:func:`_forward` computed by the compiled CPU kernel.

  Differentiated as the XLA forward is (an outer derivative of grad of grad
  differentiates the forward pass of :func:`sample`'s VJP too).
  """
  dtype = compute_dtype(values.dtype, grid.dtype)
  out = _cpu_kernel.forward(values.astype(dtype), grid.astype(dtype), mode=mode, padding_mode=padding_mode,
                            align_corners=align_corners, channels_last=channels_last)
  return out.astype(values.dtype)


@_compiled_forward.defjvp
def _compiled_forward_jvp(mode, padding_mode, align_corners, channels_last, primals, tangents):
  xla_forward = functools.partial(_forward, mode=mode, padding_mode=padding_mode, align_corners=align_corners,
                                  channels_last=channels_last)
  _, tangent_out = jax.jvp(xla_forward, primals, tangents)
  return _compiled_forward(*primals, mode, padding_mode, align_corners, channels_last), tangent_out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def sample(values, grid, mode, padding_mode, align_corners, channels_last, implementation="xla"):
  """Samples ``values`` at ``grid``; the public grid_sample minus its checks.

  Args:
    values: (N, C, *spatial_in), or (N, *spatial_in, C) with channels_last.
    grid: (N, *spatial_out, ndim) normalised coordinates, x first.
    mode: a key of ``INTERPOLATION_FAMILIES``.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.
    channels_last: the layout of ``values`` and of the result.
    implementation: one of ``IMPLEMENTATIONS``.

  Returns:
    (N, C, *spatial_out), or (N, *spatial_out, C), with ``values``' dtype.
  """
  return _forward(values, grid, mode, padding_mode, align_corners, channels_last, implementation)


def _sample_fwd(values, grid, mode, padding_mode, align_corners, channels_last, implementation):
  return _forward(values, grid, mode, padding_mode, align_corners, channels_last, implementation), (values, grid)


# The backward walks the points in chunks whose temporaries, (N, taps, chunk,
# C) values, stay near this many bytes. Gathering and scatter-adding all
# points at once held ~10x the input in temporaries (feature-map workload),
# and buffers that large are freshly mapped and page-faulted by every call.
# Of 0.25, 1, 4 and 16 MiB, 1 MiB was fastest overall.
BACKWARD_CHUNK_BYTES = 1 << 20

# The channel counts (by mode) for which the backward scatter-adds each
# point's adjacent taps along the last axis as one window of T * C values
# (``_kernel.add_grad_values_in_windows``) instead of one row of C per tap.
# Measured fwd+bwd against rows (linear at C = 1: against (2, 1) windows):
# * bilinear, pairs: C = 1 0.92-0.95x, C = 2 0.55x, C = 3 0.75x, C = 4
#   0.61-0.82x, C = 6 0.71-0.81x, C = 8 about even (0.95-1.06x: 192x192
#   0.95-0.97x, 64x64 upsampled 4x 1.01-1.06x); trilinear C = 1
#   0.84-0.94x, C = 3-6 0.77-0.82x, C = 8 0.95-0.99x; but C = 16 1.2x
#   (2.1x for 16 channels downsampled 4x) and C = 24-64 1.0-1.3x;
# * bicubic under zeros padding (only there are the four taps adjacent):
#   C = 2 0.96x, C = 3 0.88x, C = 8 0.83-0.84x, C = 16 0.92x, C = 32 0.98x;
#   tricubic C = 3 0.87x, C = 8 0.96x, C = 16 0.84x; but C = 1 1.06x
#   against scattering into the channel plane.
WINDOW_CHANNELS = {"bilinear": range(1, 9), "bicubic": range(2, 17)}

# Channel counts whose bilinear windows scatter with zero channels added
# (cut off at the end; see ``scatter_channels``): windows of 2 * 3 values
# take 2 * 4. Measured fwd+bwd, three channels (RGB): image 0.78-0.85x,
# trilinear 0.90-0.94x. Padding 5 or 7 channels to 6 or 8 gained 0.88-0.99x
# in 2-D but lost 1.12-1.21x in 3-D with 7 (its updates' fusion ran 3x
# slower).
WINDOW_PADDED_CHANNELS = {3: 4}


def scatter_channels(mode: str, channels: int, windowed: bool) -> int:
  """The channel count of the backward's channels-last accumulator.

  XLA's CPU scatter-add writes a window (or row) of ``w`` values 1.5-2x
  slower when ``w`` is 2 more than a multiple of 4 (w = 6, 10, 14, 18, 22)
  than one value more or less (scatter alone, 384x384: w = 6 8.9 ms, 7 6.2
  ms, 8 6.1 ms; w = 14 25.7 ms, 13 12.0 ms). Such channel counts get zero
  channels, cut off at the end: the bilinear windows of
  ``WINDOW_PADDED_CHANNELS``, and rows of 6, 10, 14, ... channels of the
  linear and nearest modes (one more channel). Measured fwd+bwd, rows:
  bilinear C = 10 0.88x, C = 14 0.85x, C = 18 0.87x, trilinear C = 10
  0.94x, nearest C = 6 0.90x, C = 10 0.91x; but bicubic C = 6 or 10
  1.08-1.14x (C = 18 0.83-0.84x), so bicubic keeps its rows as they are.
  """
  if windowed:
    return WINDOW_PADDED_CHANNELS.get(channels, channels) if mode == "bilinear" else channels
  if mode != "bicubic" and channels >= 6 and channels % 4 == 2:
    return channels + 1
  return channels

# From this many channels, the linear backward transposes the
# channels-first incoming gradient to channel rows once, before its loop
# (see ``_backward``).
ROWS_BEFORE_LOOP_CHANNELS = 32


def channel_rows(x):
  """(N, C, P) -> (N, P, C), in one pass over ``x``.

  A bare transpose whose result enters the backward's loop was laid out by
  XLA as a free relabelling of ``x`` and then copied twice (an identity copy,
  then the real transpose): 2.6 ms for the feature maps' incoming gradient
  against 1.4 ms for one copy. Transposing with a trailing unit axis that a
  reshape then drops makes XLA emit the single copy.
  """
  num_batch, channels, num_points = x.shape
  return jnp.moveaxis(x.reshape(num_batch, channels, num_points, 1), 1, -1).reshape(num_batch, num_points, channels)


def _chunk_size(num_points: int, bytes_per_point: int, budget: int) -> int:
  """Points per chunk (at least 64, at most all of them).

  Prefers a divisor of ``num_points`` within a factor of two of the budget:
  a remainder chunk is a second copy of the loop body, which doubles the
  compile time.
  """
  largest = max(1, min(num_points, max(64, budget // max(1, bytes_per_point))))
  for chunk in range(largest, (largest - 1) // 2, -1):
    if num_points % chunk == 0:
      return chunk
  return largest


def _over_chunks(prepare, consume, num_points: int, chunk: int, carry):
  """Folds ``carry = consume(start, size, prepare(start, size), carry)`` over chunks of the points.

  Full chunks run in a ``fori_loop`` (one copy of the body whatever the
  number of chunks), a remainder chunk after it. Each iteration prepares the
  next chunk's arrays and carries them over. A loop carry is materialised
  (XLA cannot fuse it into its consumers): the per-point coordinate
  arithmetic then runs once per chunk, vectorised, instead of being fused
  into (and repeated by) every tap's gather and scatter index (measured:
  forward+backward 0.6-0.85x the time).
  """
  num_full = num_points // chunk
  if num_full:
    def body(i, state):
      prepared, carry = state
      upcoming = prepare(jnp.minimum(i + 1, num_full - 1) * chunk, chunk)
      return upcoming, consume(i * chunk, chunk, prepared, carry)

    _, carry = jax.lax.fori_loop(0, num_full, body, (prepare(0, chunk), carry))
  rest = num_points - num_full * chunk
  if rest:
    start = num_full * chunk
    carry = consume(start, rest, prepare(start, rest), carry)
  return carry


def _backward(values, points, grad_out, *, mode, padding_mode, align_corners, chunk, channels_last):
  """grad_input and grad_grid of a batch, chunk by chunk over the points.

  The loop runs over the whole batch, each step ``jax.vmap``-ing the
  per-sample kernel over it. (A ``vmap`` of a per-sample loop gives the same
  program, but JAX traces a batched loop body several times to find out
  which of its carries are batched: lowering value_and_grad took 0.1 s more.)

  Args:
    values: (N, C, *spatial_in), or (N, *spatial_in, C) with ``channels_last``.
    points: (N, P, ndim) grid points.
    grad_out: (N, C, P), or (N, P, C) with ``channels_last``, incoming gradient.
    mode, padding_mode, align_corners: as for :func:`sample`.
    chunk: points per chunk.
    channels_last: the layout of ``values`` and ``grad_out``.

  Returns:
    (grad_values in the layout of ``values``, grad_points (N, P, ndim)).
  """
  family = INTERPOLATION_FAMILIES[mode]
  spatial_shape = tuple(values.shape[1:-1] if channels_last else values.shape[2:])
  unrolled = _TAPS_PER_AXIS[mode]**len(spatial_shape) <= _kernel.GRAD_UNROLL_LIMIT
  # Scatter-adds write whole channel rows, so grad_values is channels-last
  # (except for few channels and many taps: ``scatter_planes`` below).
  # The grid gradient of up to 8 taps reads the caller's layout tap by tap,
  # like the forward (no transposed copy of the input); more taps read all
  # at once from channels-last rows.
  values_read = values if channels_last or unrolled else jnp.moveaxis(values, 1, -1)
  point_axis = 1 if channels_last else 2  # of grad_out

  # The scatter's updates (weight times incoming gradient) need the gradient
  # as channel rows. Transposed inside the updates' fusion, each point's
  # gradient is read across C strided rows once per tap; with 16 or 64 taps
  # (bicubic, tricubic) a transpose of the next chunk, carried like its taps,
  # is cheaper. Measured fwd+bwd, bicubic: C = 32 0.59x, C = 16 0.88x,
  # C = 8 0.92-1.0x; tricubic C = 8 1.0x. With 4 or 8 taps (bilinear,
  # trilinear) it was 1.0-1.3x slower, so they keep the fused read, except
  # with many channels: then the fused read of a point's gradient touches C
  # cache lines per tap, and the whole gradient is transposed once, before
  # the loop. Measured fwd+bwd, bilinear: C = 16-24 0.98-1.02x, C = 32
  # 0.86-0.94x, C = 64 0.70x; trilinear C = 16 1.12x, C = 32 0.83-0.94x,
  # C = 64 0.75x; but nearest (one tap) C = 32 1.1x. The transposed copy
  # adds up to the output's size to the backward's temporaries (feature
  # maps: 2.0x -> 2.2x the input and grid).
  channels = values.shape[-1 if channels_last else 1]
  rows_before_loop = not channels_last and mode == "bilinear" and channels >= ROWS_BEFORE_LOOP_CHANNELS
  # With at most 3 channels and no windows (below: one channel, or border
  # and reflection padding), the scatter of 16 or 64 taps (bicubic,
  # tricubic) writes channel planes straight into the caller's layout
  # instead: no transpose of grad_values, and its updates read the incoming
  # gradient's planes (the grid gradient still reads the transposed rows).
  # Measured fwd+bwd: bicubic C = 3 0.78-0.82x, tricubic C = 3 0.89x, C = 2
  # 0.96x, C = 4 1.02x, C = 8 1.16-1.20x; bilinear or nearest with C = 3 or 4
  # 1.07-1.28x.
  # Adjacent taps scatter-add as windows along the last axis (see
  # ``WINDOW_CHANNELS``) into an accumulator with a margin, cut off at the
  # end. Bicubic taps under border and reflection padding are padded one by
  # one, so they are not adjacent.
  windowed = (channels in WINDOW_CHANNELS.get(mode, ())
              and (mode == "bilinear" or padding_mode == "zeros"))
  margin = _TAPS_PER_AXIS[mode] - 1
  accumulator_channels = scatter_channels(mode, channels, windowed)
  scatter_planes = not channels_last and not unrolled and channels <= 3 and not windowed
  transpose_ahead = not channels_last and not unrolled
  grad_rows = channel_rows(grad_out) if rows_before_loop else None  # (N, P, C)

  def one_sample(values, coordinates, grad_values, chunk_points, chunk_grad, chunk_grad_last):
    taps = _kernel.taps_at(family, coordinates, spatial_shape, padding_mode, align_corners)
    if scatter_planes:
      grad_values = _kernel.add_grad_values(grad_values, taps, chunk_grad, channels_last=False)
    elif windowed:
      grad_values = _kernel.add_grad_values_in_windows(grad_values, taps, chunk_grad_last)
    else:
      grad_values = _kernel.add_grad_values(grad_values, taps, chunk_grad_last)
    if unrolled:
      chunk_grad_points = _kernel.grad_points_unrolled(values, taps, chunk_grad, chunk_points, channels_last)
    else:
      chunk_grad_points = _kernel.grad_points(values, taps, chunk_grad_last, chunk_points)
    return grad_values, chunk_grad_points

  def chunk_of_grad(start, size):
    return jax.lax.dynamic_slice_in_dim(grad_out, start, size, axis=point_axis)

  def as_rows(chunk_grad):
    # (N, C, size) -> (N, size, C): channel rows, as the scatter writes them.
    return chunk_grad if channels_last else jnp.swapaxes(chunk_grad, 1, 2)

  def prepare(start, size):
    # The chunk's coordinates (see ``_kernel.Family``), carried into the next
    # iteration and expanded into taps there.
    chunk_points = jax.lax.dynamic_slice_in_dim(points, start, size, axis=1)
    coordinates = _kernel.point_coordinates(family, chunk_points, spatial_shape, padding_mode, align_corners)
    return coordinates, (as_rows(chunk_of_grad(start, size)) if transpose_ahead else None)

  def one_chunk(start, size, prepared, carry):
    coordinates, rows = prepared
    grad_values, grad_points = carry
    chunk_points = jax.lax.dynamic_slice_in_dim(points, start, size, axis=1)
    chunk_grad = chunk_of_grad(start, size)
    if rows_before_loop:
      rows = jax.lax.dynamic_slice_in_dim(grad_rows, start, size, axis=1)
    elif rows is None:
      rows = as_rows(chunk_grad)
    grad_values, chunk_grad_points = jax.vmap(one_sample)(values_read, coordinates, grad_values, chunk_points,
                                                          chunk_grad, rows)
    return grad_values, jax.lax.dynamic_update_slice_in_dim(grad_points, chunk_grad_points, start, axis=1)

  if scatter_planes:
    grad_values = jnp.zeros((values.shape[0], channels) + spatial_shape, values.dtype)
  elif windowed:
    grad_values = jnp.zeros((values.shape[0],) + tuple(s + 2 * margin for s in spatial_shape)
                            + (accumulator_channels,), values.dtype)
  else:
    grad_values = jnp.zeros((values.shape[0],) + spatial_shape + (accumulator_channels,), values.dtype)
  grad_values, grad_points = _over_chunks(prepare, one_chunk, points.shape[1], chunk,
                                          (grad_values, jnp.zeros_like(points)))
  if windowed:
    grad_values = grad_values[(slice(None),) + (slice(margin, -margin),) * len(spatial_shape)]
  if not scatter_planes:
    grad_values = grad_values[..., :channels]
    if not channels_last:
      grad_values = jnp.moveaxis(grad_values[..., None], -2, 1)[..., 0]
  return grad_values, grad_points


def _xla_backward(values, points, grad_out, mode, padding_mode, align_corners, channels_last):
  """grad_input and grad_grid in JAX operations; arguments as for :func:`_backward`."""
  num_batch, num_points, ndim = points.shape
  channels = values.shape[-1 if channels_last else 1]
  taps = _TAPS_PER_AXIS[mode]**ndim
  chunk = _chunk_size(num_points, num_batch * taps * channels * jnp.dtype(values.dtype).itemsize,
                      BACKWARD_CHUNK_BYTES)
  return _backward(values, points, grad_out, mode=mode, padding_mode=padding_mode, align_corners=align_corners,
                   chunk=chunk, channels_last=channels_last)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6))
def _compiled_backward(values, points, grad_out, mode, padding_mode, align_corners, channels_last):
  """:func:`_xla_backward` computed by the compiled CPU kernel.

  Its derivatives (grad of grad, forward over reverse) are those of
  :func:`_xla_backward`, the same formulas in JAX operations. A JVP rule
  rather than a VJP: JAX transposes it for reverse mode, and forward mode
  works too.
  """
  return _cpu_kernel.backward(values, points, grad_out, mode=mode, padding_mode=padding_mode,
                              align_corners=align_corners, channels_last=channels_last)


@_compiled_backward.defjvp
def _compiled_backward_jvp(mode, padding_mode, align_corners, channels_last, primals, tangents):
  backward = functools.partial(_xla_backward, mode=mode, padding_mode=padding_mode, align_corners=align_corners,
                               channels_last=channels_last)
  _, tangent_out = jax.jvp(backward, primals, tangents)
  return _compiled_backward(*primals, mode, padding_mode, align_corners, channels_last), tangent_out


def _sample_bwd(mode, padding_mode, align_corners, channels_last, implementation, residuals, grad_out):
  values, grid = residuals
  dtype = compute_dtype(values.dtype, grid.dtype)
  points = _flatten_points(grid.astype(dtype))
  # The incoming gradient stays in the caller's layout; each chunk transposes
  # its own slice where it needs channel rows.
  grad_out = _flatten_output_like(grad_out.astype(dtype), points.shape[1], channels_last)
  backward = _compiled_backward if implementation == "cpu" else _xla_backward
  grad_values, grad_points = backward(values.astype(dtype), points, grad_out, mode, padding_mode, align_corners,
                                      channels_last)
  return grad_values.astype(values.dtype), grad_points.reshape(grid.shape).astype(grid.dtype)


sample.defvjp(_sample_fwd, _sample_bwd)


def _tangent_kernel(values, taps, tangent_values, tangent_points):
  out = _kernel.interpolate_all_taps(values, taps)
  tangent_out = _kernel.interpolate_all_taps(tangent_values, taps)
  if taps.axes[0].slope is not None:
    slopes = _kernel.spatial_gradient(values, taps)  # (ndim, P, C)
    for axis in range(slopes.shape[0]):
      tangent_out = tangent_out + slopes[axis] * tangent_points[:, axis, None]
  return out, tangent_out


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def sample_forward_mode(values, grid, mode, padding_mode, align_corners, channels_last, implementation="xla"):
  """Same as :func:`sample`, differentiated by a JVP rule instead of a VJP.

  Supports forward mode (jax.jvp, jacfwd, hessian) and reverse mode (JAX
  transposes the rule). Reverse mode keeps the spatial derivative (ndim
  times the output's size) as a residual, where :func:`sample` keeps only
  the input and the grid. ``implementation`` computes the undifferentiated
  output; the rule is in JAX operations.
  """
  return _forward(values, grid, mode, padding_mode, align_corners, channels_last, implementation)


@sample_forward_mode.defjvp
def _sample_forward_mode_jvp(mode, padding_mode, align_corners, channels_last, implementation, primals, tangents):
  del implementation  # the rule computes output and tangent together, in JAX operations
  values, grid = primals
  tangent_values, tangent_grid = tangents
  dtype = compute_dtype(values.dtype, grid.dtype)
  run = _batched(_tangent_kernel, mode, padding_mode, align_corners)
  out, tangent_out = run(_to_channels_last(values.astype(dtype), channels_last), grid.astype(dtype),
                         _to_channels_last(tangent_values.astype(dtype), channels_last),
                         _flatten_points(tangent_grid.astype(dtype)))

  def finish(x):
    x = _from_channels_last(_unflatten_output(x, grid.shape, channels_last=True), channels_last)
    return x.astype(values.dtype)

  return finish(out), finish(tangent_out)
