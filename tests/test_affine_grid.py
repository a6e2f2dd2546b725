"""affine_grid: known values, parity with PyTorch (golden and live), SciPy rotations, errors.

The golden values (``make_golden_affine.py``, torch 2.13.0 CPU) are matched
bit for bit in the forward; theta gradients are sums over every pixel, whose
order differs from torch's BLAS call, so they are compared with a tolerance.
"""

from __future__ import annotations

import itertools
import pathlib
import re

import cases
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import affine_grid, grid_sample

GOLDEN = pathlib.Path(__file__).parent / "golden" / "affine_grid.npz"
# Relative tolerances for theta gradients (and live forward values), scaled by the largest entry.
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _assert_close(actual, expected, dtype):
  expected = np.asarray(expected)
  tol = TOLERANCE[np.dtype(dtype)]
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol * np.abs(expected).max())


def re_escape(value) -> str:
  return re.escape(str(value))


def _grid_and_grad(theta, size, align_corners, cotangent):
  grid, vjp = jax.vjp(lambda t: affine_grid(t, size, align_corners), jnp.asarray(theta))
  (grad,) = vjp(jnp.asarray(cotangent))
  return np.asarray(grid), np.asarray(grad)


# --- Known values (SPEC section 6) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "align_corners, expected",
    [
        (True, [[[0, -3], [2, 5]], [[4, 7], [6, 15]]]),
        (False, [[[1.5, 1.5], [2.5, 5.5]], [[3.5, 6.5], [4.5, 10.5]]]),
    ],
)
def test_known_values_2d(align_corners, expected):
  theta = jnp.arange(1.0, 7.0, dtype=jnp.float64).reshape(1, 2, 3)
  grid = affine_grid(theta, (1, 1, 2, 2), align_corners=align_corners)
  assert grid.shape == (1, 2, 2, 2) and grid.dtype == jnp.float64
  np.testing.assert_array_equal(grid[0], np.array(expected, np.float64))


def test_known_values_3d_first_point():
  theta = jnp.arange(1.0, 13.0, dtype=jnp.float64).reshape(1, 3, 4)
  grid = affine_grid(theta, (1, 1, 2, 2, 2), align_corners=True)
  assert grid.shape == (1, 2, 2, 2, 3) and grid.dtype == jnp.float64
  np.testing.assert_array_equal(grid[0, 0, 0, 0], [-2.0, -10.0, -18.0])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("length", [1, 2, 3, 7, 10, 64, 101])
def test_identity_gives_the_base_coordinates(length, align_corners):
  grid = affine_grid(jnp.eye(2, 3, dtype=jnp.float64)[None], (1, 1, 2, length), align_corners)
  if length == 1:  # a unit axis is 0 in both conventions, without a warning
    expected = np.zeros(1)
  elif align_corners:
    expected = np.linspace(-1.0, 1.0, length)
  else:
    expected = (2 * np.arange(length) + 1) / length - 1
  np.testing.assert_allclose(grid[0, 0, :, 0], expected, rtol=0, atol=4e-16)


# --- Parity with PyTorch: committed golden values ----------------------------------------------------------


GOLDEN_CASES = cases.load_golden(GOLDEN)


def _golden_id(case):
  return f"{tuple(int(s) for s in case['size'])}-ac{bool(case['align_corners'])}-{case['theta'].dtype}"


def test_golden_file_covers_both_ranks_dtypes_and_unit_axes():
  assert len(GOLDEN_CASES) >= 40
  ranks = {len(c["size"]) for c in GOLDEN_CASES}
  dtypes = {c["theta"].dtype for c in GOLDEN_CASES}
  assert ranks == {4, 5} and dtypes == {np.dtype(np.float32), np.dtype(np.float64)}
  assert any(1 in c["size"][2:] for c in GOLDEN_CASES)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=_golden_id)
def test_golden_parity(case):
  size = tuple(int(s) for s in case["size"])
  grid, grad = _grid_and_grad(case["theta"], size, bool(case["align_corners"]), case["cotangent"])
  assert grid.dtype == case["grid"].dtype and grad.dtype == case["grad_theta"].dtype
  np.testing.assert_array_equal(grid, case["grid"])  # same arithmetic as ATen, same order
  _assert_close(grad, case["grad_theta"], case["theta"].dtype)


# --- Parity with PyTorch: live ------------------------------------------------------------------------------

LIVE_SPATIAL = [(1, 1), (1, 9), (6, 1), (13, 10), (32, 31), (1, 1, 1), (1, 4, 3), (5, 1, 7), (9, 8, 10)]
LIVE_CASES = [  # (seed, spatial, align_corners, dtype)
    (seed, *case)
    for seed, case in enumerate(itertools.product(LIVE_SPATIAL, (False, True), (np.float32, np.float64)))
]


@pytest.mark.parametrize("seed, spatial, align_corners, dtype", LIVE_CASES)
def test_torch_parity_live(seed, spatial, align_corners, dtype):
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F

  rng = np.random.default_rng(seed)
  ndim = len(spatial)
  batch = int(rng.integers(1, 4))
  size = (batch, 2, *spatial)
  theta = rng.uniform(-3, 3, (batch, ndim, ndim + 1)).astype(dtype)
  cotangent = rng.normal(size=(batch, *spatial, ndim)).astype(dtype)
  t = torch.tensor(theta, requires_grad=True)
  if align_corners and min(spatial) == 1:
    with pytest.warns(UserWarning, match="unit-size grids"):  # torch warns; we do not
      expected = F.affine_grid(t, list(size), align_corners=align_corners)
  else:
    expected = F.affine_grid(t, list(size), align_corners=align_corners)
  (expected_grad,) = torch.autograd.grad(expected, t, torch.tensor(cotangent))
  grid, grad = _grid_and_grad(theta, size, align_corners, cotangent)
  assert grid.dtype == dtype and grad.dtype == dtype
  _assert_close(grid, expected.detach().numpy(), dtype)
  _assert_close(grad, expected_grad.numpy(), dtype)


# --- SciPy rotations (PyTorch's test_affine_*_rotate*) -----------------------------------------------------


def _scipy_equivalent(theta, in_spatial, out_spatial):
  """``affine_transform``'s (matrix, offset) for affine_grid + grid_sample with align_corners=True.

  With align_corners=True, output index i maps to the normalised p = s_out * i - 1
  (s = 2 / (L - 1)), affine_grid maps p to A p + b, and grid_sample reads input
  index (A p + b + 1) / s_in. Coordinate j (x, y, z) is array axis k - 1 - j,
  and SciPy indexes in array order, so both sides are reversed.
  """
  k = len(in_spatial)
  a, b = theta[:, :k], theta[:, k]
  s_in = 2.0 / (np.array(in_spatial[::-1], np.float64) - 1)
  s_out = 2.0 / (np.array(out_spatial[::-1], np.float64) - 1)
  matrix = a * s_out[None, :] / s_in[:, None]
  offset = (b - a.sum(axis=1) + 1) / s_in
  return matrix[::-1, ::-1], offset[::-1]


# Compiled once per shape: much faster than grid_sample's op-by-op eager path.
_jit_grid_sample = jax.jit(grid_sample, static_argnames=("mode", "padding_mode", "align_corners"))


def _warp_both_ways(theta, image, out_spatial):
  """(grid, ours, scipy's) for one theta (k, k+1) and an image (C, *in_spatial), float64."""
  ndimage = pytest.importorskip("scipy.ndimage")
  channels, in_spatial = image.shape[0], image.shape[1:]
  grid = affine_grid(jnp.asarray(theta[None]), (1, channels, *out_spatial), align_corners=True)
  ours = _jit_grid_sample(jnp.asarray(image[None]), grid, mode="bilinear", padding_mode="border",
                          align_corners=True)[0]
  matrix, offset = _scipy_equivalent(theta, in_spatial, out_spatial)
  theirs = np.stack([
      ndimage.affine_transform(c, matrix, offset=offset, output_shape=out_spatial, order=1, mode="nearest")
      for c in image
  ])
  return np.asarray(grid[0]), np.asarray(ours), theirs


def _rotation_2d(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0]])


def _assert_grid_is_the_transform(grid, theta, out_spatial):
  """Every grid point is theta applied to its normalised (align_corners=True) coordinates."""
  axes = [np.linspace(-1.0, 1.0, n) for n in out_spatial[::-1]]  # x, y[, z]
  mesh = np.meshgrid(*axes[::-1], indexing="ij")[::-1]
  points = np.stack([*mesh, np.ones_like(mesh[0])], axis=-1)
  np.testing.assert_allclose(grid, points @ theta.T, rtol=0, atol=1e-14)


def test_affine_2d_rotate0():
  rng = np.random.default_rng(0)
  image = rng.random((1, 3, 3))
  theta = _rotation_2d(0.0)
  grid, ours, theirs = _warp_both_ways(theta, image, (5, 5))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
  np.testing.assert_array_equal(ours[:, ::2, ::2], image)  # every other output point is an input pixel


def test_affine_2d_rotate90():
  rng = np.random.default_rng(1)
  image = rng.random((2, 4, 6))
  theta = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # exactly 90 degrees
  grid, ours, theirs = _warp_both_ways(theta, image, (5, 3))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
  # Corners go to corners exactly: out (x, y) reads in (-y, x).
  np.testing.assert_array_equal(ours[:, 0, 0], image[:, 0, -1])
  np.testing.assert_array_equal(ours[:, 0, -1], image[:, -1, -1])
  np.testing.assert_array_equal(ours[:, -1, 0], image[:, 0, 0])
  np.testing.assert_array_equal(ours[:, -1, -1], image[:, -1, 0])


def test_affine_2d_rotate45():
  rng = np.random.default_rng(2)
  image = rng.random((1, 5, 5))
  theta = _rotation_2d(np.pi / 4)
  grid, ours, theirs = _warp_both_ways(theta, image, (7, 7))
  _assert_grid_is_the_transform(grid, theta, (7, 7))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_affine_2d_rotate_random(seed):
  rng = np.random.default_rng(seed)
  in_spatial = tuple(int(n) for n in rng.integers(2, 9, 2))
  out_spatial = tuple(int(n) for n in rng.integers(2, 9, 2))
  image = rng.random((2, *in_spatial))
  theta = _rotation_2d(rng.uniform(-np.pi, np.pi))
  theta[:, 2] = rng.uniform(-0.3, 0.3, 2)  # and a shift, so the centre moves too
  grid, ours, theirs = _warp_both_ways(theta, image, out_spatial)
  _assert_grid_is_the_transform(grid, theta, out_spatial)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_affine_3d_rotate_random():
  rotation = pytest.importorskip("scipy.spatial.transform").Rotation
  rng = np.random.default_rng(6)
  in_spatial, out_spatial = (4, 5, 6), (5, 4, 3)
  image = rng.random((2, *in_spatial))
  theta = np.concatenate([rotation.random(random_state=7).as_matrix(), rng.uniform(-0.3, 0.3, (3, 1))], 1)
  grid, ours, theirs = _warp_both_ways(theta, image, out_spatial)
  _assert_grid_is_the_transform(grid, theta, out_spatial)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


# --- Transformations, derivatives and dtypes ---------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(3, 2, 6, 1), (2, 1, 3, 4, 5)])
def test_jit_matches_eager(size, align_corners):
  ndim = len(size) - 2
  theta = np.random.default_rng(7).normal(size=(size[0], ndim, ndim + 1)).astype(np.float32)
  eager = affine_grid(theta, size, align_corners)
  jitted = jax.jit(affine_grid, static_argnums=(1, 2))(theta, size, align_corners)
  np.testing.assert_array_equal(jitted, eager)
  jitted_grad = jax.jit(jax.grad(lambda t: jnp.sum(affine_grid(t, size, align_corners) ** 2)))(theta)
  eager_grad = jax.grad(lambda t: jnp.sum(affine_grid(t, size, align_corners) ** 2))(theta)
  _assert_close(jitted_grad, eager_grad, np.float32)


def test_vmap_over_an_extra_batch_axis():
  thetas = jnp.asarray(np.random.default_rng(8).normal(size=(4, 2, 2, 3)))
  size = (2, 1, 3, 5)
  batched = jax.vmap(lambda t: affine_grid(t, size))(thetas)
  for i in range(4):
    np.testing.assert_array_equal(batched[i], affine_grid(thetas[i], size))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(2, 1, 3, 4), (1, 1, 2, 1, 3)])
def test_jacobian_is_the_base_grid(size, align_corners):
  # The identity has zero entries: their derivative must still be the base coordinate.
  ndim = len(size) - 2
  theta = jnp.broadcast_to(jnp.eye(ndim, ndim + 1, dtype=jnp.float64), (size[0], ndim, ndim + 1))
  grid = affine_grid(theta, size, align_corners)
  base = np.asarray(affine_grid(np.eye(ndim, ndim + 1)[None], (1, 1, *size[2:]), align_corners))[0]
  base = np.concatenate([base, np.ones((*size[2:], 1))], axis=-1)  # (*spatial, ndim + 1)
  expected = np.zeros(grid.shape + theta.shape)
  for n in range(size[0]):
    for i in range(ndim):
      expected[n, ..., i, n, i, :] = base
  for jacobian in (jax.jacfwd, jax.jacrev):
    np.testing.assert_array_equal(jacobian(lambda t: affine_grid(t, size, align_corners))(theta), expected)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_is_computed_in_float32(dtype):
  theta = jnp.asarray(np.random.default_rng(9).normal(size=(2, 2, 3)), dtype)
  grid = affine_grid(theta, (2, 1, 4, 5))
  assert grid.dtype == dtype
  np.testing.assert_array_equal(grid, affine_grid(theta.astype(jnp.float32), (2, 1, 4, 5)).astype(dtype))
  assert jax.grad(lambda t: jnp.sum(affine_grid(t, (2, 1, 4, 5))))(theta).dtype == dtype


def test_theta_dtype_is_kept_and_sizes_may_be_lists_or_numpy_ints():
  theta32 = np.eye(2, 3, dtype=np.float32)[None]
  assert affine_grid(theta32, (1, 1, 2, 3)).dtype == jnp.float32
  from_list = affine_grid([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], [1, 1, 2, 3])
  assert from_list.dtype == jnp.asarray(1.0).dtype
  from_numpy = affine_grid(theta32, np.array([1, 1, 2, 3]))
  np.testing.assert_array_equal(from_numpy, affine_grid(theta32, (1, 1, 2, 3)))


# --- Argument checks ---------------------------------------------------------------------------------------

THETA_2D = np.zeros((1, 2, 3), np.float32)
THETA_3D = np.zeros((1, 3, 4), np.float32)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64])
def test_rejects_non_floating_theta(dtype):
  match = r"affine_grid\(\): expected theta to have a floating point dtype \(float16, bfloat16, float32 or " \
          rf"float64\), but got {np.dtype(dtype).name}"
  with pytest.raises(TypeError, match=match):
    affine_grid(THETA_2D.astype(dtype), (1, 1, 2, 2))


@pytest.mark.parametrize("size", [(1, 1, 2), (1, 1, 2, 2, 2, 2), ()])
def test_rejects_size_of_wrong_length(size):
  match = (r"affine_grid\(\): expected size of length 4 \(N, C, H, W\) or 5 \(N, C, D, H, W\), "
           rf"but got size {re_escape(size)} of length {len(size)}")
  with pytest.raises(ValueError, match=match):
    affine_grid(THETA_2D, size)


@pytest.mark.parametrize("size", [4, "1122", (1, 1, 2.0, 2), (1, 1, True, 2), None])
def test_rejects_size_that_is_not_a_sequence_of_ints(size):
  with pytest.raises(TypeError, match=r"affine_grid\(\): expected size to be a sequence of static ints"):
    affine_grid(THETA_2D, size)


@pytest.mark.parametrize(
    "theta_shape, size, expected",
    [
        ((2, 3), (1, 1, 2, 2), "(N, 2, 3)"),  # theta[0]
        ((1, 1, 2, 3), (1, 1, 2, 2), "(N, 2, 3)"),  # theta.unsqueeze(0)
        ((1, 4, 3), (1, 1, 2, 2), "(N, 2, 3)"),  # repeated along dim 1
        ((1, 2, 6), (1, 1, 2, 2), "(N, 2, 3)"),  # repeated along dim 2
        ((1, 2, 3), (1, 1, 2, 2, 2), "(N, 3, 4)"),  # a 2-D theta for a 3-D size
        ((1, 3, 4), (1, 1, 2, 2), "(N, 2, 3)"),  # and the other way round
    ],
)
def test_rejects_theta_of_wrong_shape(theta_shape, size, expected):
  axes = "(N, C, H, W)" if len(size) == 4 else "(N, C, D, H, W)"
  match = (rf"affine_grid\(\): expected theta of shape {re_escape(expected)} for a size of length "
           rf"{len(size)} {re_escape(axes)}, but got theta of shape {re_escape(theta_shape)} "
           rf"and size {re_escape(size)}")
  with pytest.raises(ValueError, match=match):
    affine_grid(np.zeros(theta_shape, np.float32), size)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "theta, size",
    [
        (THETA_2D, (1, 1, 0, 2)),
        (THETA_2D, (1, 1, 1, 0)),  # PyTorch lets this through (with a warning) when align_corners=True
        (THETA_2D, (1, 0, 2, 2)),
        (THETA_2D, (1, 1, -2, 2)),
        (np.zeros((0, 2, 3), np.float32), (0, 1, 2, 2)),
        (THETA_3D, (1, 1, 2, 0, 2)),
    ],
)
def test_rejects_non_positive_sizes(theta, size, align_corners):
  axes = "(N, C, H, W)" if len(size) == 4 else "(N, C, D, H, W)"
  match = rf"affine_grid\(\): expected positive sizes {re_escape(axes)}, but got size {re_escape(size)}"
  with pytest.raises(ValueError, match=match):
    affine_grid(theta, size, align_corners)


@pytest.mark.parametrize("theta, size", [(np.zeros((2, 2, 3)), (1, 1, 2, 2)), (THETA_3D, (3, 1, 2, 2, 2))])
def test_rejects_batch_mismatch(theta, size):
  match = (r"affine_grid\(\): expected theta's batch size to equal size\[0\] \(N\), but got theta of shape "
           rf"{re_escape(theta.shape)} and size {re_escape(size)}")
  with pytest.raises(ValueError, match=match):
    affine_grid(theta, size)


@pytest.mark.parametrize("align_corners", [None, 1, "True"])
def test_rejects_non_bool_align_corners(align_corners):
  match = rf"affine_grid\(\): expected align_corners to be a bool, but got {re_escape(repr(align_corners))}"
  with pytest.raises(TypeError, match=match):
    affine_grid(THETA_2D, (1, 1, 2, 2), align_corners)


def test_checks_run_before_tracing():
  # Under jit the error is still ours, raised from the static shape, not from inside JAX.
  with pytest.raises(ValueError, match=r"expected theta of shape \(N, 2, 3\)"):
    jax.jit(lambda t: affine_grid(t, (1, 1, 2, 2)))(np.zeros((1, 3, 3), np.float32))
