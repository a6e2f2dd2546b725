"""grid_sample under jit, vmap and repeated calls."""

from __future__ import annotations

import cases
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample


@pytest.mark.parametrize("combination", list(cases.combinations()),
                         ids=lambda c: f"{c[0]}d-{c[1]}-{c[2]}-ac{c[3]}")
def test_jit_and_eager_agree(combination):
  ndim, mode, padding, ac = combination
  rng = np.random.default_rng(11)
  case = cases.make_case(rng, ndim, mode, padding, ac, np.float64)
  inp, grid = jnp.asarray(case["inp"]), jnp.asarray(case["grid"])

  def f(x, g):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding, ac), x, g)
    return (out,) + vjp(jnp.asarray(case["grad_out"]))

  eager = f(inp, grid)
  jitted = jax.jit(f)(inp, grid)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_extra_vmap_matches_loop(ndim, mode):
  rng = np.random.default_rng(12)
  inp = jnp.asarray(rng.standard_normal((3, 2, 2) + (4,) * ndim))  # (B, N, C, ...)
  grid = jnp.asarray(rng.uniform(-1.2, 1.2, (3, 2) + (3,) * ndim + (ndim,)))
  cotangent = jnp.asarray(rng.standard_normal((3, 2, 2) + (3,) * ndim))

  def f(x, g, ct):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, "reflection"), x, g)
    return (out,) + vjp(ct)

  batched = jax.vmap(f)(inp, grid, cotangent)
  for b in range(3):
    single = f(inp[b], grid[b], cotangent[b])
    for a, s in zip(batched, single):
      np.testing.assert_allclose(np.asarray(a[b]), np.asarray(s), rtol=1e-13, atol=1e-13)


def test_vmap_over_grid_only_broadcasts_input():
  rng = np.random.default_rng(13)
  inp = jnp.asarray(rng.standard_normal((1, 3, 5, 6)))
  grids = jnp.asarray(rng.uniform(-1, 1, (4, 1, 2, 3, 2)))
  batched = jax.vmap(lambda g: grid_sample(inp, g, align_corners=True))(grids)
  for b in range(4):
    np.testing.assert_allclose(np.asarray(batched[b]), np.asarray(grid_sample(inp, grids[b], align_corners=True)),
                               rtol=1e-13)


def test_repeated_calls_do_not_retrace():
  rng = np.random.default_rng(14)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(x, g):
    return jnp.sum(grid_sample(x, g, "bicubic", "border") ** 2)

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  for _ in range(3):
    inp = jnp.asarray(rng.standard_normal((2, 3, 6, 7)), jnp.float32)
    grid = jnp.asarray(rng.uniform(-1, 1, (2, 4, 5, 2)), jnp.float32)
    loss(inp, grid)
    step(inp, grid)
  chex.clear_trace_counter()
