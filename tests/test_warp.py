"""identity_grid, flow_to_grid / grid_to_flow and warp."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import ndimage

from jaxgridsample import flow_to_grid, grid_sample, grid_to_flow, identity_grid, warp
from jaxgridsample._affine import affine_grid

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
# Sizes whose pixel centres are representable: the identity is then exact.
EXACT_SHAPES = {(2, False): (8, 16), (3, False): (4, 8, 2), (2, True): (9, 17), (3, True): (5, 3, 9)}


def _maybe_jit(fn, use_jit, **static):
  fn = functools.partial(fn, **static)
  return jax.jit(fn) if use_jit else fn


def _identity_cases():
  # Every mode with both conventions in 2-D and 3-D; the padding rotates so
  # that each one is covered without compiling the full product.
  for k, (mode, align_corners, ndim) in enumerate(itertools.product(MODES, (False, True), (2, 3))):
    yield mode, PADDINGS[k % 3], align_corners, ndim


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,padding_mode,align_corners,ndim", list(_identity_cases()))
def test_zero_flow_is_exact_identity(mode, padding_mode, align_corners, ndim, dtype):
  shape = EXACT_SHAPES[ndim, align_corners]
  image = np.random.default_rng(ndim).standard_normal((2, 3) + shape).astype(dtype)
  flow = np.zeros((2,) + shape + (ndim,), dtype)
  out = warp(image, flow, mode, padding_mode, align_corners)
  chex.assert_trees_all_equal(np.asarray(out), image)
  grid = identity_grid(shape, align_corners, dtype)
  direct = grid_sample(image, jnp.broadcast_to(grid, (2,) + grid.shape), mode, padding_mode, align_corners)
  chex.assert_trees_all_equal(np.asarray(direct), image)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_flow_other_sizes_within_an_ulp_of_the_pixel_index(dtype, align_corners):
  # Pixel centres such as (2 i + 1) / 7 - 1 are not representable: the sample
  # point is then within about one ulp of the largest pixel index.
  shape = (7, 13)
  image = np.random.default_rng(1).uniform(-1, 1, (1, 2) + shape).astype(dtype)
  flow = np.zeros((1,) + shape + (2,), dtype)
  nearest = warp(image, flow, "nearest", "zeros", align_corners)
  chex.assert_trees_all_equal(np.asarray(nearest), image)
  for mode in ("bilinear", "bicubic"):
    out = warp(image, flow, mode, "zeros", align_corners)
    np.testing.assert_allclose(np.asarray(out), image, rtol=0, atol=8 * max(shape) * np.finfo(dtype).eps)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [(5, 7), (1, 6), (3, 4, 6), (2, 1, 5)])
def test_identity_grid_is_affine_grid_of_the_identity(shape, align_corners):
  ndim = len(shape)
  for dtype in (np.float32, np.float64):
    grid = identity_grid(shape, align_corners, dtype)
    assert grid.shape == shape + (ndim,) and grid.dtype == dtype
    theta = np.eye(ndim, ndim + 1, dtype=dtype)[None]
    reference = affine_grid(theta, (1, 1) + shape, align_corners)[0]
    # The same pixel centres; affine_grid follows PyTorch's linspace rounding.
    np.testing.assert_allclose(np.asarray(grid), np.asarray(reference), rtol=0, atol=np.finfo(dtype).eps)


def test_identity_grid_values_and_component_order():
  grid = np.asarray(identity_grid((2, 4), align_corners=False, dtype=jnp.float64))
  np.testing.assert_array_equal(grid[0, :, 0], [-0.75, -0.25, 0.25, 0.75])  # x along W
  np.testing.assert_array_equal(grid[:, 0, 1], [-0.5, 0.5])  # y along H
  grid = np.asarray(identity_grid((3, 1, 2), align_corners=True, dtype=jnp.float64))
  np.testing.assert_array_equal(grid[0, 0, :, 0], [-1, 1])
  np.testing.assert_array_equal(grid[..., 1], 0)  # unit axis: the single coordinate 0
  np.testing.assert_array_equal(grid[:, 0, 0, 2], [-1, 0, 1])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 9), (2, 4, 5, 7)])
def test_flow_grid_round_trip(shape, align_corners):
  rng = np.random.default_rng(2)
  flow = rng.uniform(-20, 20, shape + (len(shape) - 1,))
  grid = flow_to_grid(flow, align_corners)
  assert grid.shape == flow.shape and grid.dtype == np.float64
  np.testing.assert_allclose(np.asarray(grid_to_flow(grid, align_corners)), flow, rtol=0, atol=1e-12)
  grid = rng.uniform(-1.5, 1.5, flow.shape)
  np.testing.assert_allclose(np.asarray(flow_to_grid(grid_to_flow(grid, align_corners), align_corners)), grid,
                             rtol=0, atol=1e-14)
  flow32 = flow.astype(np.float32)
  back = grid_to_flow(flow_to_grid(flow32, align_corners), align_corners)
  assert back.dtype == np.float32
  np.testing.assert_allclose(np.asarray(back), flow32, rtol=0, atol=1e-4)


def test_flow_to_grid_scale_matches_affine_translation():
  # A constant flow is a translation: theta's last column is 2 * flow / S.
  for align_corners, extent in ((False, (8, 5)), (True, (7, 4))):
    flow = np.broadcast_to(np.array([1.5, -2.0]), (1, 5, 8, 2))
    theta = np.array([[[1, 0, 2 * 1.5 / extent[0]], [0, 1, -2 * 2.0 / extent[1]]]])
    expected = affine_grid(theta, (1, 1, 5, 8), align_corners)
    np.testing.assert_allclose(np.asarray(flow_to_grid(flow, align_corners)), np.asarray(expected),
                               rtol=0, atol=1e-15)


def test_unit_axis_with_align_corners_drops_the_displacement():
  flow = np.ones((1, 1, 4, 2))
  grid = np.asarray(flow_to_grid(flow, align_corners=True))
  np.testing.assert_array_equal(grid[..., 1], 0)
  np.testing.assert_array_equal(np.asarray(grid_to_flow(grid, align_corners=True))[..., 1], 0)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_integer_flow_is_a_shift(mode, use_jit):
  rng = np.random.default_rng(3)
  image = rng.standard_normal((2, 3, 16, 32)).astype(np.float32)
  dx, dy = 3, -2
  flow = np.zeros((2, 16, 32, 2), np.float32)
  flow[..., 0], flow[..., 1] = dx, dy
  out = np.asarray(_maybe_jit(warp, use_jit, mode=mode)(image, flow))
  # Interior: output[y, x] = image[y + dy, x + dx]; power-of-two sizes make it exact.
  np.testing.assert_array_equal(out[..., 2:16, 0:29], image[..., 0:14, 3:32])
  # Border padding repeats the last column beyond the right edge.
  if mode != "bicubic":
    np.testing.assert_array_equal(out[..., 2:16, 29:], np.repeat(image[..., 0:14, 31:], 3, axis=-1))


def test_integer_flow_is_a_shift_3d_and_other_sizes():
  rng = np.random.default_rng(4)
  image = rng.standard_normal((1, 2, 6, 7, 9))
  flow = np.zeros((1, 6, 7, 9, 3))
  flow[..., 0], flow[..., 1], flow[..., 2] = -1, 2, 1
  for align_corners in (False, True):
    out = np.asarray(warp(image, flow, "bilinear", "zeros", align_corners))
    np.testing.assert_allclose(out[..., 0:5, 0:5, 1:9], image[..., 1:6, 2:7, 0:8], rtol=0, atol=1e-13)


@pytest.mark.parametrize("ndim", [2, 3])
def test_matches_scipy_map_coordinates(ndim):
  # Independent reference: linear interpolation at p + flow(p) with edge
  # replication is bilinear warp with border padding.
  rng = np.random.default_rng(5)
  shape = (6, 9, 7)[-ndim:]
  image = rng.standard_normal((1, 1) + shape)
  flow = rng.uniform(-3, 3, (1,) + shape + (ndim,))
  positions = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
  positions = positions + np.moveaxis(flow[0, ..., ::-1], -1, 0)  # flow is x first, arrays axis first
  reference = ndimage.map_coordinates(image[0, 0], positions, order=1, mode="nearest")
  for align_corners in (False, True):
    out = warp(image, flow, "bilinear", "border", align_corners)
    np.testing.assert_allclose(np.asarray(out)[0, 0], reference, rtol=0, atol=1e-12)


def test_channels_last_matches_channels_first():
  rng = np.random.default_rng(6)
  image = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
  flow = rng.uniform(-2, 2, (2, 5, 6, 2)).astype(np.float32)
  first = warp(image, flow, "bicubic", "reflection")
  last = warp(np.moveaxis(image, 1, -1), flow, "bicubic", "reflection", channels_last=True)
  # Not bit-equal: XLA may contract a multiply-add of the 16-tap sum into an
  # fma in one layout and not the other (1 ulp).
  chex.assert_trees_all_close(np.moveaxis(np.asarray(last), -1, 1), np.asarray(first), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradients_flow_through_warp(ndim):
  rng = np.random.default_rng(7)
  shape = (5, 6, 4)[:ndim]
  image = rng.standard_normal((1, 2) + shape)
  # Fractional displacements: away from pixel centres, where finite differences hold.
  flow = rng.uniform(-1.5, 1.5, (1,) + shape + (ndim,)) + 0.25
  weights = rng.standard_normal((1, 2) + shape)

  def loss(image, flow):
    return jnp.sum(warp(image, flow, "bilinear", "zeros") * weights)

  grad_image, grad_flow = jax.grad(loss, (0, 1))(image, flow)
  assert np.all(np.isfinite(grad_flow)) and np.any(grad_flow != 0)
  assert np.any(grad_image != 0)
  check_grads(loss, (image, flow), order=1, modes=["rev"], eps=1e-6)
  # Under jit as well, to the same numbers.
  jitted = jax.jit(jax.grad(loss, (0, 1)))(image, flow)
  np.testing.assert_allclose(np.asarray(jitted[1]), np.asarray(grad_flow), rtol=1e-12, atol=1e-12)


def test_flow_gradient_is_the_image_gradient():
  # On a ramp image(y, x) = 2 x + 3 y, d output / d flow = (2, 3) everywhere inside.
  height, width = 8, 8
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  image = (2.0 * xs + 3.0 * ys)[None, None]
  flow = np.full((1, height, width, 2), 0.3)
  grad = jax.grad(lambda f: jnp.sum(warp(image, f, "bilinear", "zeros")))(flow)
  np.testing.assert_allclose(np.asarray(grad)[0, 1:-2, 1:-2], np.broadcast_to([2.0, 3.0], (5, 5, 2)),
                             rtol=0, atol=1e-12)


def test_jit_and_no_retracing():
  rng = np.random.default_rng(8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(image, flow):
    return warp(image, flow, "bilinear", "border")

  image = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
  for _ in range(3):
    flow = rng.uniform(-2, 2, (2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(step(image, flow)), np.asarray(warp(image, flow)),
                               rtol=1e-6, atol=1e-6)
  chex.clear_trace_counter()


def test_vmap_over_a_leading_axis():
  rng = np.random.default_rng(9)
  images = rng.standard_normal((4, 1, 2, 5, 5))
  flows = rng.uniform(-1, 1, (4, 1, 5, 5, 2))
  batched = jax.vmap(warp)(images, flows)
  looped = np.stack([np.asarray(warp(i, f)) for i, f in zip(images, flows, strict=True)])
  np.testing.assert_allclose(np.asarray(batched), looped, rtol=0, atol=1e-14)


def test_float32_stays_float32():
  image = np.ones((1, 1, 4, 4), np.float32)
  flow = np.zeros((1, 4, 4, 2), np.float32)
  assert warp(image, flow).dtype == np.float32
  assert flow_to_grid(flow).dtype == np.float32
  assert grid_to_flow(flow).dtype == np.float32
  assert identity_grid((4, 4)).dtype == np.float32


@pytest.mark.parametrize("call,error,match", [
    (lambda: warp(np.ones((1, 1, 4, 4)), np.zeros((1, 4, 5, 2))), ValueError,
     r"expected flow of shape \(N, H, W, 2\) = \(1, 4, 4, 2\) for an image of shape \(1, 1, 4, 4\)"),
    (lambda: warp(np.ones((1, 1, 4, 4)), np.zeros((2, 4, 4, 2))), ValueError,
     r"but got flow of shape \(2, 4, 4, 2\)"),
    (lambda: warp(np.ones((1, 4, 5, 3)), np.zeros((1, 3, 4, 2)), channels_last=True), ValueError,
     r"= \(1, 4, 5, 2\) for an image of shape \(1, 4, 5, 3\) \(N, H, W, C\)"),
    (lambda: warp(np.ones((1, 1, 4)), np.zeros((1, 4, 2))), ValueError, r"expected a 4-D image"),
    (lambda: warp(np.ones((1, 1, 4, 4)), np.zeros((1, 4, 4, 2), np.int32)), TypeError,
     r"expected flow to have a floating point dtype"),
    (lambda: warp(np.ones((1, 1, 4, 4), np.int32), np.zeros((1, 4, 4, 2))), TypeError,
     r"expected image to have a floating point dtype"),
    (lambda: warp(np.ones((1, 1, 4, 4)), np.zeros((1, 4, 4, 2)), mode="linear"), ValueError,
     r"expected mode to be one of 'bilinear', 'nearest', 'bicubic', but got: 'linear'"),
    (lambda: warp(np.ones((1, 1, 4, 4)), np.zeros((1, 4, 4, 2)), padding_mode="edge"), ValueError,
     r"expected padding_mode to be one of 'zeros', 'border', 'reflection', but got: 'edge'"),
    (lambda: warp(np.ones((1, 1, 4, 4)), np.zeros((1, 4, 4, 2)), align_corners=None), TypeError,
     r"expected align_corners to be a bool"),
    (lambda: warp(np.ones((1, 1, 4, 4)), [[0.0]]), TypeError, r"expected flow to be an array, but got list"),
    (lambda: flow_to_grid(np.zeros((1, 4, 4, 3))), ValueError,
     r"flow_to_grid\(\): expected flow of shape \(N, H, W, 2\) or \(N, D, H, W, 3\), but got flow of shape"),
    (lambda: flow_to_grid(np.zeros((1, 0, 4, 2))), ValueError, r"non-empty spatial dimensions"),
    (lambda: grid_to_flow(np.zeros((4, 4, 2))), ValueError, r"grid_to_flow\(\): expected grid of shape"),
    (lambda: grid_to_flow(np.zeros((1, 4, 4, 2)), align_corners=1), TypeError, r"align_corners to be a bool"),
    (lambda: identity_grid((4,)), ValueError, r"expected spatial_shape \(H, W\) or \(D, H, W\) of positive"),
    (lambda: identity_grid((4, 0)), ValueError, r"of positive sizes, but got \(4, 0\)"),
    (lambda: identity_grid((4, 4.0)), TypeError, r"expected spatial_shape to be a sequence of ints"),
    (lambda: identity_grid((4, 4), dtype=jnp.int32), TypeError, r"expected dtype to have a floating point"),
])
def test_errors(call, error, match):
  with pytest.raises(error, match=match):
    call()
