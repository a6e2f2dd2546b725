"""PyTorch's own groundtruth tables from test_nn.py's test_grid_sample (SPEC 8.3).

Forward values for every mode x padding x align_corners on a 2x5 ramp, and
grid gradients on the edge-case grid, typed in from the table so this test
stands independently of any generator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample

FORWARD_GRID = [
    [(-0.9, -4.1), (0.0, 0.2), (1.0, -1.0), (-0.333, 1e-6), (0.5, 1.0)],
    [(-1.0, -0.5), (0.0, 0.3333), (1.0, -1.0), (-0.2, 1e-6), (1.5, 0.5)],
]

FORWARD_EXPECTED = {
    ("bilinear", "zeros", True): [[0, 6, 5, 4.834, 9], [2.25, 6.33325, 5, 5.1, 0]],
    ("bilinear", "zeros", False): [[0, 6.5, 1.25, 4.6675, 4.625], [0.5, 7.1665, 1.25, 5, 0]],
    ("bilinear", "border", True): [[1.2, 6, 5, 4.834, 9], [2.25, 6.33325, 5, 5.1, 8.75]],
    ("bilinear", "border", False): [[1, 6.5, 5, 4.6675, 9.25], [1, 7.1665, 5, 5, 10]],
    ("bilinear", "reflection", True): [[3.45, 6, 5, 4.834, 9], [2.25, 6.33325, 5, 5.1, 7.75]],
    ("bilinear", "reflection", False): [[3.0, 6.5, 5, 4.6675, 9.25], [1, 7.1665, 5, 5, 9.25]],
    ("nearest", "zeros", True): [[0, 8, 5, 7, 9], [1, 8, 5, 8, 0]],
    ("nearest", "zeros", False): [[0, 8, 5, 7, 0], [1, 8, 5, 8, 0]],
    ("nearest", "border", True): [[1, 8, 5, 7, 9], [1, 8, 5, 8, 10]],
    ("nearest", "border", False): [[1, 8, 5, 7, 9], [1, 8, 5, 8, 10]],
    ("nearest", "reflection", True): [[1, 8, 5, 7, 9], [1, 8, 5, 8, 9]],
    ("nearest", "reflection", False): [[1, 8, 5, 7, 9], [1, 8, 5, 8, 9]],
    ("bicubic", "zeros", True): [[-0.10424726, 7.14, 5, 5.7842274, 9],
                                 [2.4492188, 7.481404, 5, 6.027752, 0]],
    ("bicubic", "zeros", False): [[0, 7.6287503, 1.0625, 5.597723, 5.3270264],
                                  [0.40625, 8.028877, 1.0625, 5.9375067, -0.3515625]],
    ("bicubic", "border", True): [[1.152001, 6.059999, 5, 4.87093, 9],
                                  [2.1328125, 6.4258375, 5, 5.076003, 8.8671875]],
    ("bicubic", "border", False): [[0.894531, 6.605002, 4.625, 4.7138715, 9.800781],
                                   [0.90625, 7.2822485, 4.625, 5.0000052, 10]],
    ("bicubic", "reflection", True): [[3.1822524, 6.239998, 5, 4.8709273, 9],
                                      [1.78125, 6.703594, 5, 5.0760007, 8.21875]],
    ("bicubic", "reflection", False): [[2.7993753, 6.605002, 4.25, 4.7138715, 10.269531],
                                       [0.8125, 7.2822485, 4.25, 5.0000052, 9.332031]],
}

GRADIENT_GRID = [
    [(1.0, 1.0), (1.0, -1.0), (0.8, 0.8), (0.8, -0.8)],
    [(-1.0, -1.0), (-1.0, 1.0), (-0.8, -0.8), (-0.8, 0.8)],
]

_ZERO = [[(0, 0)] * 4] * 2
_BORDER_TRUE = [[(0, 0), (0, 0), (2, 0), (2, 0)]] * 2
GRADIENT_EXPECTED = {
    ("bilinear", "zeros", True): [[(-8, -8), (-8, 0), (2, 0), (2, 0)], [(2, 0)] * 4],
    ("bilinear", "zeros", False): [[(-5, -5), (-5, 5), (-10, -10), (-10, 10)], [(0, 0)] * 4],
    ("bilinear", "border", True): _BORDER_TRUE,
    ("bilinear", "reflection", True): _BORDER_TRUE,
    ("bilinear", "border", False): _ZERO,
    ("bilinear", "reflection", False): _ZERO,
    ("bicubic", "zeros", True): [
        [(-4.5, -6), (-4.5, 6), (2.725679, 0.740878), (2.725679, -0.740878)],
        [(1.5, 0), (1.5, 0), (1.927921, -0.05688), (1.927921, 0.05688)]],
    ("bicubic", "zeros", False): [
        [(-5.859375, -5.888672), (-5.859375, 5.888672), (-5.625, -7.5), (-5.625, 7.5)],
        [(-0.234375, -0.263672), (-0.234375, 0.263672), (1.875, 0), (1.875, 0)]],
    ("bicubic", "border", True): [[(1.5, 0), (1.5, 0), (1.74, 0), (1.74, 0)]] * 2,
    ("bicubic", "border", False): [[(-0.46875, 0), (-0.46875, 0), (1.875, 0), (1.875, 0)]] * 2,
    ("bicubic", "reflection", True): [[(0, 0), (0, 0), (1.92, 0), (1.92, 0)]] * 2,
    ("bicubic", "reflection", False): [[(0, 0), (0, 0), (1.875, 0), (1.875, 0)]] * 2,
}
for _padding in ("zeros", "border", "reflection"):
  for _ac in (True, False):
    GRADIENT_EXPECTED[("nearest", _padding, _ac)] = _ZERO

DTYPES = (jnp.float32, jnp.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", sorted(FORWARD_EXPECTED), ids=lambda k: "-".join(map(str, k)))
def test_forward_groundtruth(key, dtype, implementation):
  mode, padding, ac = key
  image = jnp.arange(1, 11, dtype=dtype).reshape(1, 1, 2, 5)
  grid = jnp.asarray(FORWARD_GRID, dtype)[None]
  out = grid_sample(image, grid, mode, padding, ac, implementation=implementation)
  assert out.dtype == dtype
  np.testing.assert_allclose(np.asarray(out)[0, 0], np.asarray(FORWARD_EXPECTED[key]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", sorted(GRADIENT_EXPECTED), ids=lambda k: "-".join(map(str, k)))
def test_grid_gradient_groundtruth(key, dtype, implementation):
  mode, padding, ac = key
  image = jnp.broadcast_to(jnp.arange(0, 5, dtype=dtype), (1, 1, 5, 5))
  grid = jnp.asarray(GRADIENT_GRID, dtype)[None]
  grad = jax.grad(lambda g: grid_sample(image, g, mode, padding, ac, implementation=implementation).sum())(grid)
  np.testing.assert_allclose(np.asarray(grad)[0], np.asarray(GRADIENT_EXPECTED[key], np.float64),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", sorted(GRADIENT_EXPECTED), ids=lambda k: "-".join(map(str, k)))
def test_grid_gradient_groundtruth_with_input_gradient(key, implementation):
  """PyTorch runs the table with input.requires_grad both False and True."""
  mode, padding, ac = key
  image = jnp.broadcast_to(jnp.arange(0, 5, dtype=jnp.float64), (1, 1, 5, 5))
  grid = jnp.asarray(GRADIENT_GRID, jnp.float64)[None]

  def total(x, g):
    return grid_sample(x, g, mode, padding, ac, implementation=implementation).sum()

  grad_input, grad_grid = jax.grad(total, (0, 1))(image, grid)
  np.testing.assert_allclose(np.asarray(grad_grid)[0], np.asarray(GRADIENT_EXPECTED[key], np.float64),
                             atol=1e-5, rtol=0)
  # The output is linear in the input, so <grad_input, input> = sum(output).
  out_sum = total(image, grid)
  np.testing.assert_allclose(float(jnp.sum(grad_input * image)), float(out_sum), rtol=1e-12)
