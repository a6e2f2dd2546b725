"""Batched sampling with hand-written derivatives (the custom-derivative wiring).

The per-sample kernel (``_kernel``) is written once and ``jax.vmap``-ed over
the batch, like ATen's grid slice iterator walks one sample at a time.

Two wrappers share that kernel:

* :func:`sample` (the default) is a ``jax.custom_vjp``: its residuals are just
  the input and the grid, and its backward reproduces ATen's formulas in
  plain JAX ops, so it can itself be differentiated (grad of grad). JAX does
  not apply forward mode to custom_vjp functions.
* :func:`sample_forward_mode` is a ``jax.custom_jvp`` with the same formulas
  as a JVP rule: forward mode, Hessians, and reverse mode by transposition.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from . import _cubic, _kernel, _linear, _nearest

# Interpolation families by mode: a new mode is one more entry.
INTERPOLATION_FAMILIES = {
    "bilinear": _linear.axis_taps,
    "nearest": _nearest.axis_taps,
    "bicubic": _cubic.axis_taps,
}


def compute_dtype(*dtypes):
  """The dtype the arithmetic runs in: the widest input float, at least float32.

  float16 and bfloat16 are computed in float32, as PyTorch's opmath does.
  """
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _batched(kernel_fn, mode, padding_mode, align_corners):
  """Lifts ``kernel_fn(values, table, *value_args, *point_args)`` from one sample to a batch.

  The returned function takes values (N, *spatial_in, C), grid
  (N, *spatial_out, ndim), ``point_args`` batched like the grid's points
  ((N, *spatial_out, ...)) and keyword ``value_args`` shaped like ``values``;
  it returns ``kernel_fn``'s results with a leading batch axis and the output
  points flattened to one axis P.
  """
  axis_taps = INTERPOLATION_FAMILIES[mode]

  def one_sample(values, points, value_args, point_args):
    table = _kernel.tap_table(axis_taps, points, values.shape[:-1], padding_mode, align_corners)
    return kernel_fn(values, table, *value_args, *point_args)

  def batched(values, grid, *point_args, value_args=()):
    batch, ndim = grid.shape[0], grid.shape[-1]
    num_points = math.prod(grid.shape[1:-1])
    points = grid.reshape(batch, num_points, ndim)
    point_args = tuple(a.reshape(batch, num_points, *a.shape[grid.ndim - 1:]) for a in point_args)
    return jax.vmap(one_sample)(values, points, tuple(value_args), point_args)

  return batched


def _backward_kernel(values, table, grad_out, points):
  return (_kernel.grad_values(values, table, grad_out),
          _kernel.grad_points(values, table, grad_out, points))


def _forward(values, grid, mode, padding_mode, align_corners):
  dtype = compute_dtype(values.dtype, grid.dtype)
  run = _batched(_kernel.interpolate, mode, padding_mode, align_corners)
  out = run(values.astype(dtype), grid.astype(dtype))
  return out.reshape(grid.shape[:-1] + values.shape[-1:]).astype(values.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def sample(values, grid, mode, padding_mode, align_corners):
  """Samples channels-last ``values`` at ``grid``.

  Args:
    values: (N, *spatial_in, C) input, channels last.
    grid: (N, *spatial_out, ndim) normalised coordinates, x first.
    mode: a key of ``INTERPOLATION_FAMILIES``.
    padding_mode: "zeros", "border" or "reflection".
    align_corners: PyTorch's corner convention.

  Returns:
    (N, *spatial_out, C) samples with ``values``' dtype.
  """
  return _forward(values, grid, mode, padding_mode, align_corners)


def _sample_fwd(values, grid, mode, padding_mode, align_corners):
  return _forward(values, grid, mode, padding_mode, align_corners), (values, grid)


def _sample_bwd(mode, padding_mode, align_corners, residuals, grad_out):
  values, grid = residuals
  dtype = compute_dtype(values.dtype, grid.dtype)
  run = _batched(_backward_kernel, mode, padding_mode, align_corners)
  grid_c = grid.astype(dtype)
  grad_values, grad_points = run(values.astype(dtype), grid_c, grad_out.astype(dtype), grid_c)
  return grad_values.astype(values.dtype), grad_points.reshape(grid.shape).astype(grid.dtype)


sample.defvjp(_sample_fwd, _sample_bwd)


def _tangent_kernel(values, table, tangent_values, tangent_points):
  out = _kernel.interpolate(values, table)
  tangent_out = _kernel.interpolate(tangent_values, table)
  if table.slopes is not None:
    tangent_out = tangent_out + jnp.einsum("pcd,pd->pc", _kernel.spatial_gradient(values, table), tangent_points)
  return out, tangent_out


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def sample_forward_mode(values, grid, mode, padding_mode, align_corners):
  """Same as :func:`sample`, differentiated by a JVP rule instead of a VJP.

  Supports forward mode (jax.jvp, jacfwd, hessian) and reverse mode (JAX
  transposes the rule). Reverse mode keeps the spatial derivative,
  (N, *spatial_out, C, ndim), as a residual, where :func:`sample` keeps only
  the input and the grid.
  """
  return _forward(values, grid, mode, padding_mode, align_corners)


@sample_forward_mode.defjvp
def _sample_forward_mode_jvp(mode, padding_mode, align_corners, primals, tangents):
  values, grid = primals
  tangent_values, tangent_grid = tangents
  dtype = compute_dtype(values.dtype, grid.dtype)
  run = _batched(_tangent_kernel, mode, padding_mode, align_corners)
  out, tangent_out = run(values.astype(dtype), grid.astype(dtype), tangent_grid.astype(dtype),
                         value_args=(tangent_values.astype(dtype),))
  shape = grid.shape[:-1] + values.shape[-1:]
  return out.reshape(shape).astype(values.dtype), tangent_out.reshape(shape).astype(values.dtype)
