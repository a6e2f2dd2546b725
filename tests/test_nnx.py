"""Flax NNX layers: SpatialTransformer and Warp."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

from jaxgridsample import (  # noqa: E402
  affine_grid,
  grid_sample,
  warp,  # noqa: E402
)
from jaxgridsample.nnx import SpatialTransformer, Warp  # noqa: E402


def _images(shape=(4, 12, 10, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, shape), jnp.float32)


def test_spatial_transformer_is_the_identity_at_init():
  stn = SpatialTransformer(3, rngs=nnx.Rngs(0))
  x = _images()
  np.testing.assert_array_equal(np.asarray(stn.theta(x)), np.broadcast_to(np.eye(2, 3), (4, 2, 3)))
  out = stn(x)
  assert out.shape == x.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np.asarray(x), rtol=0, atol=1e-6)


def test_spatial_transformer_options():
  stn = SpatialTransformer(1, features=(4,), hidden=(8, 8), pooled_shape=(3, 3), output_shape=(5, 7),
                           mode="bicubic", padding_mode="border", align_corners=True, rngs=nnx.Rngs(1))
  x = _images((2, 9, 11, 1))
  out = stn(x)
  assert out.shape == (2, 5, 7, 1)
  grid = affine_grid(jnp.broadcast_to(jnp.eye(2, 3, dtype=jnp.float32), (2, 2, 3)), (2, 1, 5, 7), True)
  expected = grid_sample(x, grid, "bicubic", "border", True, channels_last=True)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match=r"expected mode to be one of"):
    SpatialTransformer(1, mode="area", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"expected images of shape \(N, H, W, C\)"):
    stn(x[0])


def test_spatial_transformer_learns_a_shift_without_retracing():
  # Target: the inputs translated by a fixed affine map; the STN must learn it.
  x = _images((8, 16, 16, 1), seed=2)
  theta_true = jnp.broadcast_to(jnp.array([[1.0, 0.0, 0.25], [0.0, 1.0, -0.125]], jnp.float32), (8, 2, 3))
  target = grid_sample(x, affine_grid(theta_true, x.shape[:1] + x.shape[3:] + x.shape[1:3]), "bilinear",
                       "zeros", channels_last=True)
  model = SpatialTransformer(1, rngs=nnx.Rngs(3))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, x, target):
    traces.append(1)  # runs only while tracing

    def loss_fn(model):
      return jnp.mean((model(x) - target) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x, target)) for _ in range(30)]
  assert len(traces) == 1
  assert losses[-1] < 0.5 * losses[0], losses
  # It found the translation (0.25, -0.125), near the identity otherwise.
  theta = np.asarray(model.theta(x)).mean(0)
  np.testing.assert_allclose(theta, np.asarray(theta_true[0]), atol=0.05)


def test_head_receives_gradients_at_init():
  model = SpatialTransformer(3, rngs=nnx.Rngs(4))
  x = _images(seed=5)
  ramp = jnp.linspace(0, 1, x.shape[2], dtype=jnp.float32).reshape(1, 1, -1, 1)
  grads = nnx.grad(lambda m: jnp.sum(m(x) * ramp))(model)
  assert np.any(np.asarray(grads["head"]["kernel"][...]) != 0)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(grads))


def test_warp_layer_matches_warp():
  rng = np.random.default_rng(6)
  image = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
  flow = rng.uniform(-2, 2, (2, 6, 7, 2)).astype(np.float32)
  layer = Warp("bicubic", "reflection")
  expected = warp(image, flow, "bicubic", "reflection", channels_last=True)
  np.testing.assert_array_equal(np.asarray(layer(image, flow)), np.asarray(expected))
  first = Warp(channels_last=False)(np.moveaxis(image, -1, 1), flow)
  np.testing.assert_array_equal(np.moveaxis(np.asarray(first), 1, -1), np.asarray(warp(image, flow,
                                                                                        channels_last=True)))
  with pytest.raises(ValueError, match=r"expected padding_mode to be one of"):
    Warp(padding_mode="wrap")
  with pytest.raises(TypeError, match=r"expected align_corners to be a bool"):
    Warp(align_corners="yes")


def test_package_imports_without_flax():
  code = textwrap.dedent("""
      import sys
      sys.modules["flax"] = None  # makes `import flax` fail
      import jaxgridsample
      try:
        import jaxgridsample.nnx
      except ImportError as error:
        print("ImportError:", error)
  """)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert "jaxgridsample.nnx needs Flax: pip install flax" in result.stdout
