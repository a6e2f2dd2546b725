"""Dtypes: float16/bfloat16 computed in float32, and mixed input/grid dtypes.

Our rule (``_autodiff.compute_dtype``): the arithmetic runs in the wider of
the input's and the grid's float dtypes, at least float32; the output and
grad_input have the input's dtype, grad_grid has the grid's dtype. So a
float16 or bfloat16 result is the float32 result on the same (upcast) values,
rounded once to the low precision.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
LOW = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}


@functools.cache
def _vjp_fn(mode, padding_mode, align_corners):
  def run(inp, grid, cotangent):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding_mode, align_corners), inp, grid)
    return (out,) + vjp(cotangent)

  return jax.jit(run)


def _arrays(ndim, seed, specials=()):
  """float64 input, grid (with ``specials`` appended as extra points) and cotangent."""
  rng = np.random.default_rng(seed)
  spatial_in = (3, 4, 5)[-ndim:]
  inp = rng.uniform(-4, 4, (2, 3) + spatial_in)
  points = rng.uniform(-1.2, 1.2, (2, 6, ndim))
  if specials:
    along_x = [[v] + [0.1] * (ndim - 1) for v in specials]
    along_last = [[0.2] * (ndim - 1) + [v] for v in specials]
    extra = np.array(along_x + along_last)
    points = np.concatenate([points, np.broadcast_to(extra, (2,) + extra.shape)], axis=1)
  grid = points.reshape((2, points.shape[1]) + (1,) * (ndim - 1) + (ndim,))
  cotangent = rng.uniform(-1, 1, (2, 3) + grid.shape[1:-1])
  return inp, grid, cotangent


def _eps(dtype):
  return float(jnp.finfo(dtype).eps)


def _assert_rounded_from(low, exact, dtype, ulps=2.0):
  """``low`` is ``exact`` rounded to ``dtype``: within a few ulps relative to max |exact|."""
  low = np.asarray(low, np.float64)
  exact = np.asarray(exact, np.float64)
  assert np.isfinite(low).all()
  scale = max(float(np.abs(exact).max(initial=0.0)), 1e-30)
  np.testing.assert_allclose(low, exact, rtol=0, atol=ulps * _eps(dtype) * scale)


LOW_CONFIGS = list(itertools.product(LOW, (2, 3), MODES))


@pytest.mark.parametrize("dtype_name,ndim,mode", LOW_CONFIGS)
def test_low_precision_is_float32_rounded(dtype_name, ndim, mode):
  dtype = LOW[dtype_name]
  padding_mode = PADDINGS[(ndim + MODES.index(mode)) % 3]
  align_corners = mode != "bilinear"
  specials = (np.nan, np.inf, -np.inf, 6e4, -6e4)  # 6e4 is close to float16's largest value
  inp, grid, cotangent = (jnp.asarray(a, dtype) for a in _arrays(ndim, 1, specials))
  fn = _vjp_fn(mode, padding_mode, align_corners)
  out, grad_input, grad_grid = fn(inp, grid, cotangent)
  assert out.dtype == dtype and grad_input.dtype == dtype and grad_grid.dtype == dtype
  assert out.shape == cotangent.shape

  # The same (upcast) values in float32.
  up = [a.astype(jnp.float32) for a in (inp, grid, cotangent)]
  out32, grad_input32, grad_grid32 = fn(*up)
  _assert_rounded_from(out, out32, dtype)
  _assert_rounded_from(grad_input, grad_input32, dtype)
  _assert_rounded_from(grad_grid, grad_grid32, dtype)
  nonfinite = ~np.isfinite(np.asarray(grid, np.float32))
  assert nonfinite.any()
  assert (np.asarray(grad_grid, np.float32)[nonfinite] == 0).all()
  if mode == "nearest":
    # No arithmetic at all: the low-precision output is exactly an input value.
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(out32))


# (input dtype, grid dtype, compute dtype, mode); one mode per compute dtype keeps compilations shared.
MIXED = [
    ("float32", "float64", "float64", "bilinear"),
    ("float64", "float32", "float64", "bilinear"),
    ("float16", "float64", "float64", "bilinear"),
    ("bfloat16", "float32", "float32", "bicubic"),
    ("float16", "bfloat16", "float32", "bicubic"),
    ("float32", "float16", "float32", "bicubic"),
]


@pytest.mark.parametrize("input_dtype,grid_dtype,compute,mode", MIXED)
def test_mixed_dtypes_promote_for_the_arithmetic(input_dtype, grid_dtype, compute, mode):
  input_dtype, grid_dtype, compute = (jnp.dtype(name) for name in (input_dtype, grid_dtype, compute))
  inp, grid, cotangent = _arrays(2, 2)
  inp = jnp.asarray(inp, input_dtype)
  grid = jnp.asarray(grid, grid_dtype)
  cotangent = jnp.asarray(cotangent, input_dtype)
  fn = _vjp_fn(mode, "reflection", False)
  out, grad_input, grad_grid = fn(inp, grid, cotangent)
  assert out.dtype == input_dtype
  assert grad_input.dtype == input_dtype
  assert grad_grid.dtype == grid_dtype

  # The same values, both in the compute dtype: the mixed result is that, rounded to the output dtypes.
  # (A float64 grad_grid within one float64 ulp shows the arithmetic did run in float64.)
  wide_out, wide_grad_input, wide_grad_grid = fn(*(a.astype(compute) for a in (inp, grid, cotangent)))
  _assert_rounded_from(out, wide_out, input_dtype, ulps=1.0)
  _assert_rounded_from(grad_input, wide_grad_input, input_dtype, ulps=1.0)
  _assert_rounded_from(grad_grid, wide_grad_grid, grid_dtype, ulps=1.0)
