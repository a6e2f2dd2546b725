"""Composition with JAX transformations: checkpoint, scan, vmap, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample


def _image_and_grid(seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.standard_normal((2, 3, 12, 14)), dtype)
  grid = jnp.asarray(rng.uniform(-1.1, 1.1, (2, 10, 9, 2)), dtype)
  return image, grid


def test_checkpoint_gives_the_same_gradients():
  image, grid = _image_and_grid(41, jnp.float64)

  def loss(x, g):
    return jnp.sum(grid_sample(x, g, "bicubic", "reflection") ** 2)

  plain = jax.grad(loss, (0, 1))(image, grid)
  remat = jax.grad(jax.checkpoint(loss), (0, 1))(image, grid)
  for a, b in zip(plain, remat):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)


def test_scan_over_a_sequence_of_warps():
  """Repeatedly warp an image by small displacements inside lax.scan, and differentiate."""
  rng = np.random.default_rng(42)
  image = jnp.asarray(rng.standard_normal((1, 2, 8, 8)))
  shifts = jnp.asarray(rng.uniform(-0.05, 0.05, (5, 2)))
  base = jnp.stack(jnp.meshgrid(jnp.linspace(-1, 1, 8), jnp.linspace(-1, 1, 8), indexing="xy"), -1)[None]

  def run(img, shifts):
    def step(carry, shift):
      warped = grid_sample(carry, base + shift[None, None, None, :], "bilinear", "border", True)
      return warped, jnp.sum(warped)

    final, sums = jax.lax.scan(step, img, shifts)
    return jnp.sum(final**2) + jnp.sum(sums)

  unrolled_img = image
  total = 0.0
  for shift in shifts:
    unrolled_img = grid_sample(unrolled_img, base + shift[None, None, None, :], "bilinear", "border", True)
    total = total + jnp.sum(unrolled_img)
  np.testing.assert_allclose(float(run(image, shifts)), float(jnp.sum(unrolled_img**2) + total), rtol=1e-12)
  grads = jax.grad(run, (0, 1))(image, shifts)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  assert float(jnp.abs(grads[1]).sum()) > 0


def test_vmap_over_input_only_with_shared_grid():
  rng = np.random.default_rng(43)
  images = jnp.asarray(rng.standard_normal((4, 1, 2, 6, 7)))
  grid = jnp.asarray(rng.uniform(-1, 1, (1, 3, 4, 2)))
  batched = jax.vmap(lambda x: grid_sample(x, grid, "bicubic"))(images)
  for b in range(4):
    np.testing.assert_allclose(np.asarray(batched[b]), np.asarray(grid_sample(images[b], grid, "bicubic")),
                               rtol=1e-13)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_outputs_and_gradients_are_bit_identical_across_runs_and_recompilations(mode):
  image, grid = _image_and_grid(44)
  # Many grid points hit the same pixels, so grad_input sums many scatter-adds.
  grid = jnp.concatenate([grid, grid * 0.1], axis=1)

  def loss(x, g):
    weights = jnp.cos(jnp.arange(g.shape[2], dtype=x.dtype))[None, None, None, :]
    return jnp.sum(grid_sample(x, g, mode, "border") * weights)

  first = jax.jit(jax.value_and_grad(loss, (0, 1)))(image, grid)
  for _ in range(3):
    again = jax.jit(jax.value_and_grad(loss, (0, 1)))(image, grid)  # a fresh jit: recompiles
    jax.clear_caches()
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
