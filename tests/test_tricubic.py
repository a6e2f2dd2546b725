"""Tricubic (bicubic on 5-D input), which released PyTorch rejects.

It cannot be compared with PyTorch, so it is checked by construction: a
volume constant along depth reproduces 2-D bicubic; a separable volume
f(z) g(y) h(x) gives the product of three 1-D cubic convolutions computed
here from Keys' kernel (A = -0.75, which reproduces constants exactly, and
any data at pixel centres); second derivatives match finite differences; and
the hand-written backward equals plain autodiff of the same forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxgridsample import _autodiff, grid_sample

PADDINGS = ["zeros", "border", "reflection"]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_constant_along_depth_equals_bicubic(padding, align_corners):
  rng = np.random.default_rng(21)
  image = rng.standard_normal((2, 3, 6, 7))
  volume = np.broadcast_to(image[:, :, None], (2, 3, 5, 6, 7))
  grid2 = rng.uniform(-1.4, 1.4, (2, 4, 5, 2))
  depth = rng.uniform(-1, 1, (2, 3, 4, 5, 1))  # any depth reads the same plane
  grid3 = np.concatenate([np.broadcast_to(grid2[:, None], (2, 3, 4, 5, 2)), depth], axis=-1)
  out2 = grid_sample(jnp.asarray(image), jnp.asarray(grid2), "bicubic", padding, align_corners)
  out3 = grid_sample(jnp.asarray(volume), jnp.asarray(grid3), "bicubic", padding, align_corners)
  expected = np.broadcast_to(np.asarray(out2)[:, :, None], out3.shape)
  if padding == "zeros":
    # Depth taps outside the volume read zero: compare only points whose four
    # depth taps are all inside (floor of the depth pixel coordinate in [1, D - 3]).
    size = 5
    pz = (depth[..., 0] + 1) / 2 * (size - 1) if align_corners else ((depth[..., 0] + 1) * size - 1) / 2
    inside = np.broadcast_to(((np.floor(pz) >= 1) & (np.floor(pz) <= size - 3))[:, None], out3.shape)
    assert inside.any()
    np.testing.assert_allclose(np.asarray(out3)[inside], expected[inside], rtol=1e-12, atol=1e-12)
  else:
    np.testing.assert_allclose(np.asarray(out3), expected, rtol=1e-12, atol=1e-12)


def _keys_kernel(d, a=-0.75):
  """Keys' cubic convolution kernel W(d), written out piecewise."""
  d = np.abs(d)
  near = (a + 2) * d**3 - (a + 3) * d**2 + 1
  far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
  return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _cubic_1d(samples, pixel):
  """1-D cubic convolution of ``samples`` at ``pixel`` (border-clamped taps)."""
  base = np.floor(pixel)
  total = np.zeros_like(pixel)
  for offset in (-1, 0, 1, 2):
    tap = base + offset
    total += _keys_kernel(pixel - tap) * samples[np.clip(tap, 0, samples.size - 1).astype(int)]
  return total


@pytest.mark.parametrize("align_corners", [True, False])
def test_separable_volume_is_a_product_of_1d_cubics(align_corners):
  rng = np.random.default_rng(22)
  shape = (6, 7, 8)  # D, H, W
  profiles = [rng.standard_normal(s) for s in shape]
  volume = np.einsum("i,j,k->ijk", *profiles)[None, None]
  sizes = np.array(shape[::-1], np.float64)  # x, y, z sizes
  pixel = rng.uniform(-2, sizes - 1 + 2, (1, 3, 4, 5, 3))
  pixel[0, 0, 0, :3] = np.round(pixel[0, 0, 0, :3])  # some exact pixel centres too
  grid = 2 * pixel / (sizes - 1) - 1 if align_corners else (2 * pixel + 1) / sizes - 1
  out = grid_sample(jnp.asarray(volume), jnp.asarray(grid), "bicubic", "border", align_corners)
  expected = (_cubic_1d(profiles[0], pixel[..., 2]) * _cubic_1d(profiles[1], pixel[..., 1])
              * _cubic_1d(profiles[2], pixel[..., 0]))
  np.testing.assert_allclose(np.asarray(out)[:, 0], expected, rtol=1e-11, atol=1e-12)


def test_constant_volume_is_reproduced_exactly_in_the_interior():
  volume = jnp.full((1, 2, 5, 6, 7), 3.25, jnp.float64)
  rng = np.random.default_rng(25)
  sizes = np.array([7, 6, 5], np.float64)
  pixel = rng.uniform(1, sizes - 2, (1, 4, 3, 2, 3))
  grid = jnp.asarray((2 * pixel + 1) / sizes - 1)
  out = grid_sample(volume, grid, "bicubic", "zeros")
  np.testing.assert_allclose(np.asarray(out), 3.25, rtol=1e-14)


@pytest.mark.parametrize("padding", PADDINGS)
def test_second_order_finite_differences(padding):
  rng = np.random.default_rng(23)
  volume = jnp.asarray(rng.standard_normal((1, 2, 4, 5, 4)))
  sizes = np.array([4, 5, 4], np.float64)  # x, y, z sizes
  pixel = rng.integers(0, 3, (1, 2, 2, 2, 3)) + rng.uniform(0.1, 0.9, (1, 2, 2, 2, 3))
  grid = jnp.asarray((2 * pixel + 1) / sizes - 1)
  check_grads(lambda x, g: grid_sample(x, g, "bicubic", padding), (volume, grid), order=2, modes=["rev"],
              atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_hand_written_backward_equals_plain_autodiff(padding, align_corners):
  rng = np.random.default_rng(24)
  values = jnp.asarray(rng.standard_normal((2, 4, 5, 3, 2)))  # channels last
  grid = jnp.asarray(rng.uniform(-1.5, 1.5, (2, 3, 2, 4, 3)))
  cotangent = jnp.asarray(rng.standard_normal((2, 3, 2, 4, 2)))

  def plain(v, g):
    return _autodiff._forward(v, g, "bicubic", padding, align_corners, True)

  def custom(v, g):
    return _autodiff.sample(v, g, "bicubic", padding, align_corners, True)

  _, plain_vjp = jax.vjp(plain, values, grid)
  _, custom_vjp = jax.vjp(custom, values, grid)
  for a, b in zip(custom_vjp(cotangent), plain_vjp(cotangent)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
