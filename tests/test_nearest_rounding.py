"""PyTorch's nearest rounding-consistency check (SPEC 8.1), bit-exact.

Pixel coordinates 0, 0.1, ..., 9.0 on an axis of size 10 are normalised and
sampled with nearest along 2-D x, 2-D y and 3-D x, y, z; all five must agree
exactly, for every padding mode and both align_corners values. Half-way
coordinates round to even (nearbyint), as in PyTorch.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [True, False])
def test_rounding_is_consistent_across_axes(padding, align_corners, dtype):
  size = 10
  pixels = np.arange(0, 9.01, 0.1, dtype=dtype)
  if align_corners:
    normalised = pixels / dtype(size - 1) * 2 - 1
  else:
    normalised = (pixels + dtype(0.5)) / dtype(size) * 2 - 1
  normalised = normalised.astype(dtype)
  count = normalised.size
  values = np.arange(size, dtype=dtype)

  def sample(input_shape, grid_shape, component, ndim):
    grid = np.zeros(grid_shape + (ndim,), dtype)
    grid[..., component] = normalised.reshape(grid_shape)
    inp = values.reshape(input_shape)
    return np.asarray(grid_sample(jnp.asarray(inp), jnp.asarray(grid), "nearest", padding, align_corners)).ravel()

  results = [
      sample((1, 1, 1, size), (1, 1, count), 0, 2),
      sample((1, 1, size, 1), (1, count, 1), 1, 2),
      sample((1, 1, 1, 1, size), (1, 1, 1, count), 0, 3),
      sample((1, 1, 1, size, 1), (1, 1, count, 1), 1, 3),
      sample((1, 1, size, 1, 1), (1, count, 1, 1), 2, 3),
  ]
  for other in results[1:]:
    np.testing.assert_array_equal(results[0], other)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ndim", [2, 3])
def test_exact_ties_round_half_to_even(ndim, dtype):
  """On an axis of 8 pixels (align_corners=False), g = (k + 1) / 4 - 1 is pixel k + 0.5 exactly."""
  k = np.arange(-1, 8)
  grid = np.zeros((1, k.size) + (1,) * (ndim - 1) + (ndim,), dtype)
  grid[..., 0] = ((k + 1) / 4 - 1).reshape(grid.shape[1:-1])
  inp = np.arange(8, dtype=dtype).reshape((1, 1) + (1,) * (ndim - 1) + (8,))
  out = np.asarray(grid_sample(jnp.asarray(inp), jnp.asarray(grid), "nearest", "border")).ravel()
  # -0.5 -> -0 (pixel 0), 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, ..., 7.5 -> 8 (clipped before rounding: 7).
  np.testing.assert_array_equal(out, [0, 0, 2, 2, 4, 4, 6, 6, 7])
