"""Batched sampling with hand-written derivatives (the custom_vjp wiring).

The per-sample kernel (``_kernel``) is written once and ``jax.vmap``-ed over
the batch, like ATen's grid slice iterator walks one sample at a time. The
public function is wrapped in ``jax.custom_vjp``: its residuals are just the
input and the grid, and its backward reproduces ATen's formulas in plain JAX
ops, so it can itself be differentiated (grad of grad).
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
  """Lifts ``kernel_fn(values, table, *rest)`` from one sample to a batch.

  The returned function takes values (N, *spatial_in, C), grid
  (N, *spatial_out, ndim) and extra arrays batched like the grid's points
  ((N, *spatial_out, ...)); it returns ``kernel_fn``'s results with a leading
  batch axis and the output points flattened to one axis P.
  """
  axis_taps = INTERPOLATION_FAMILIES[mode]

  def one_sample(values, points, *rest):
    table = _kernel.tap_table(axis_taps, points, values.shape[:-1], padding_mode, align_corners)
    return kernel_fn(values, table, *rest)

  def batched(values, grid, *rest):
    batch, ndim = grid.shape[0], grid.shape[-1]
    num_points = math.prod(grid.shape[1:-1])
    points = grid.reshape(batch, num_points, ndim)
    rest = [r.reshape(batch, num_points, *r.shape[grid.ndim - 1:]) for r in rest]
    return jax.vmap(one_sample)(values, points, *rest)

  return batched


def _backward_kernel(values, table, grad_out):
  return (_kernel.grad_values(values, table, grad_out),
          _kernel.grad_points(values, table, grad_out))


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
  grad_values, grad_points = run(values.astype(dtype), grid.astype(dtype), grad_out.astype(dtype))
  return grad_values.astype(values.dtype), grad_points.reshape(grid.shape).astype(grid.dtype)


sample.defvjp(_sample_fwd, _sample_bwd)
