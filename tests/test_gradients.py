"""Derivatives against finite differences (jax.test_util.check_grads), float64.

Points are kept away from integer pixel coordinates (and from the padding's
kinks), where the sampler is smooth and finite differences are valid. Order 2
in reverse mode differentiates the hand-written backward itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxgridsample import grid_sample


def _smooth_grid(rng, in_spatial, out_spatial, align_corners, inside):
  """Grid values whose pixel coordinates are at least 0.1 from an integer.

  With ``inside``, the coordinates also stay within ``[0, S - 1]``, away from
  the clip bounds and reflection planes where border and reflection padding
  have kinks.
  """
  ndim = len(in_spatial)
  grid = np.empty(out_spatial + (ndim,))
  for k in range(ndim):
    size = in_spatial[ndim - 1 - k]
    low, high = (0, size - 1) if inside else (-1, size + 1)
    pixel = rng.integers(low, high, size=out_spatial) + rng.uniform(0.1, 0.9, size=out_spatial)
    if align_corners:
      grid[..., k] = 2 * pixel / max(size - 1, 1) - 1
    else:
      grid[..., k] = (2 * pixel + 1) / size - 1
  return grid


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("ndim", [2, 3])
def test_check_grads_second_order(mode, padding, align_corners, ndim):
  rng = np.random.default_rng(3)
  in_spatial = (4, 5) if ndim == 2 else (3, 4, 3)
  out_spatial = (3, 2) if ndim == 2 else (2, 2, 2)
  inp = jnp.asarray(rng.standard_normal((1, 2) + in_spatial))
  grid = _smooth_grid(rng, in_spatial, out_spatial, align_corners, inside=padding != "zeros")
  grid = jnp.asarray(grid[None])

  def f(x, g):
    return grid_sample(x, g, mode, padding, align_corners)

  check_grads(f, (inp, grid), order=2, modes=["rev"], atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_second_order_through_vjp_with_many_channels(mode, ndim):
  """Grad of a loss on the forward's output and both first-order gradients, C = 6.

  The forward computes the coordinates into buffers of their own, whose
  reduce-window has no derivative rule of its own; grad-of-grad
  differentiates that forward (it failed to linearise, once only for
  C >= 4, which the parity cases with 1-3 channels never reached).
  """
  rng = np.random.default_rng(11)
  in_spatial = (4, 5) if ndim == 2 else (3, 4, 3)
  out_spatial = (3, 2) if ndim == 2 else (2, 2, 2)
  inp = jnp.asarray(rng.standard_normal((2, 6) + in_spatial))
  grid = jnp.asarray(np.stack([_smooth_grid(rng, in_spatial, out_spatial, True, inside=True) for _ in range(2)]))
  cotangent = jnp.asarray(rng.standard_normal((2, 6) + out_spatial))

  def loss(x, g):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, "border", True), x, g)
    grad_x, grad_g = vjp(cotangent)
    return jnp.sum(out**2) + jnp.sum(grad_x * x) + jnp.sum(grad_g**2)

  check_grads(loss, (inp, grid), order=1, modes=["rev"], atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_nearest_grid_gradient_is_zero_and_input_gradient_counts_hits(ndim, padding):
  rng = np.random.default_rng(4)
  in_spatial = (4, 5) if ndim == 2 else (3, 4, 5)
  inp = jnp.asarray(rng.standard_normal((1, 1) + in_spatial))
  grid = jnp.asarray(rng.uniform(-1.5, 1.5, (1, 6) + (2,) * (ndim - 1) + (ndim,)))
  grad_input, grad_grid = jax.grad(lambda x, g: grid_sample(x, g, "nearest", padding).sum(), (0, 1))(inp, grid)
  assert not np.any(np.asarray(grad_grid))
  # Each output point adds 1 to the pixel it reads (if any): the total is the
  # number of points that read an in-bounds pixel.
  hits = np.asarray(grid_sample(jnp.ones_like(inp), grid, "nearest", padding)).sum()
  np.testing.assert_allclose(float(grad_input.sum()), hits)
