"""Deterministic checks of our non-finite and huge-coordinate contract (SPEC section 9).

For every rank (2-D, 3-D), mode, padding and dtype (float32, float64) one
grid holds, side by side:

* special points: one grid component NaN, +-inf, +-1e30 or +-(largest float)
  (whose pixel coordinate overflows to infinity), the other components at a
  pixel centre;
* ordinary finite points inside and slightly outside the image.

The rules checked: zeros padding reads nothing at a special point (output 0,
no grad_input, grad_grid 0); border and reflection read pixel 0 for NaN and
-inf and the last pixel for +inf; +-1e30 behaves like "far outside" (zeros:
0, border: the edge pixel, reflection: some pixel of the input); the gradient
with respect to a non-finite grid value is exactly 0; everything stays
finite. The ordinary points in the same arrays keep PyTorch's values (output,
grad_input, grad_grid), or the NumPy reference's for 3-D bicubic, which
PyTorch lacks.
"""

from __future__ import annotations

import functools
import itertools
import zlib

import jax
import numpy as np
import pytest
from numpy_reference import grad_input_ref, grid_sample_ref

from jaxgridsample import grid_sample

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
DTYPES = (np.float32, np.float64)
SPATIAL = {2: (3, 4), 3: (2, 3, 4)}
CHANNELS = 2
NUM_ORDINARY = 8
CENTRE = 1  # the pixel index the non-special components point at

CONFIGS = [(ndim, mode, padding, dtype)
           for ndim, mode, padding, dtype in itertools.product((2, 3), MODES, PADDINGS, DTYPES)]


def _config_id(config):
  ndim, mode, padding, dtype = config
  return f"{ndim}d-{mode}-{padding}-{np.dtype(dtype).name}"


def _align_corners(config):
  # Both conventions are covered for every (mode, padding) across the two dtypes.
  ndim, mode, padding, dtype = config
  return (dtype == np.float64) != (PADDINGS.index(padding) % 2 == 1)


def _specials(dtype):
  big = float(np.finfo(dtype).max)
  return (np.nan, np.inf, -np.inf, 1e30, -1e30, big, -big)


def _centre(size, align_corners):
  """The normalised grid value of pixel CENTRE's centre."""
  if align_corners:
    return 2 * CENTRE / (size - 1) - 1
  return (2 * CENTRE + 1) / size - 1


def _rule_pixel(value, size, padding):
  """The pixel a special value reads along its axis: an index, None (nothing) or "open"."""
  if padding == "zeros":
    return None
  if padding == "reflection" and np.isfinite(value):
    return "open"  # +-1e30 or +-max: far outside, the fold's pixel is not pinned down
  low = bool(np.isnan(value) or value < 0)
  return 0 if low else size - 1


def _build_case(config):
  """Input, grid, cotangent and the expectation for each special point."""
  ndim, mode, padding, dtype = config
  ac = _align_corners(config)
  spatial = SPATIAL[ndim]
  rng = np.random.default_rng(zlib.crc32(_config_id(config).encode()))
  inp = rng.standard_normal((1, CHANNELS) + spatial).astype(dtype)
  centre = [_centre(spatial[ndim - 1 - k], ac) for k in range(ndim)]  # per grid component
  points, expectations, special_component = [], [], []
  for k in range(ndim):
    axis = ndim - 1 - k
    for value in _specials(dtype):
      point = list(centre)
      point[k] = value
      points.append(point)
      special_component.append(k)
      pixel = _rule_pixel(value, spatial[axis], padding)
      if pixel is None or pixel == "open":
        expectations.append(pixel)
      else:
        index = [CENTRE] * ndim
        index[axis] = pixel
        expectations.append(tuple(index))
  num_special = len(points)
  points.extend(rng.uniform(-1.15, 1.15, (NUM_ORDINARY, ndim)).tolist())
  grid = np.array(points, np.float64).astype(dtype).reshape((1, len(points)) + (1,) * (ndim - 1) + (ndim,))
  cotangent = rng.standard_normal((1, CHANNELS) + grid.shape[1:-1]).astype(dtype)
  return dict(inp=inp, grid=grid, cotangent=cotangent, ac=ac, num_special=num_special,
              expectations=expectations, special_component=special_component)


def _point_mask(case, which):
  """(1, 1, P, 1...) cotangent mask selecting the special or the ordinary points."""
  num_points = case["grid"].shape[1]
  mask = np.zeros(num_points, bool)
  if which == "special":
    mask[:case["num_special"]] = [e != "open" for e in case["expectations"]]
  else:
    mask[case["num_special"]:] = True
  return mask.reshape((1, 1, num_points) + (1,) * (case["grid"].ndim - 3))


@functools.cache
def _run(config, implementation):
  """Our forward and gradients for a config, computed once and shared by the tests."""
  ndim, mode, padding, dtype = config
  case = _build_case(config)
  ct_special = np.where(_point_mask(case, "special"), case["cotangent"], 0).astype(dtype)
  ct_ordinary = np.where(_point_mask(case, "ordinary"), case["cotangent"], 0).astype(dtype)

  # grad_input and grad_grid are linear in the cotangent: one backward pass over a batch of three
  # copies gives the gradients for the three cotangents at once (one compilation, not three).
  cotangents = np.concatenate([ct_special, ct_ordinary, case["cotangent"]])
  inp, grid = (np.repeat(case[name], 3, axis=0) for name in ("inp", "grid"))

  @jax.jit
  def run(inp, grid, cotangents):
    out, vjp = jax.vjp(
        lambda a, b: grid_sample(a, b, mode, padding, case["ac"], implementation=implementation), inp, grid)
    return (out,) + vjp(cotangents)

  out, grad_input, grad_grid = (np.asarray(a) for a in run(inp, grid, cotangents))
  out = out[:1]
  special_grads, ordinary_grads, full_grads = ((grad_input[i:i + 1], grad_grid[i:i + 1]) for i in range(3))
  return case, ct_special, ct_ordinary, out, special_grads, ordinary_grads, full_grads


def _tol(dtype, scale=1.0):
  return (2e-5 if dtype == np.float32 else 1e-12) * (1.0 + scale)


def _parity_tol(dtype, scale=1.0):
  """PyTorch parity: a few float32 roundings (observed at most 3e-6 on values of a few units)."""
  return (1e-6 if dtype == np.float32 else 1e-13) * (1.0 + scale)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_special_points_follow_the_rule(config, implementation):
  ndim, mode, padding, dtype = config
  case, ct_special, _, out, (gi_special, gg_special), _, (gi_full, gg_full) = _run(config, implementation)
  inp, grid = case["inp"], case["grid"]
  assert out.dtype == dtype and gi_full.dtype == dtype and gg_full.dtype == dtype
  # A finite input gives a finite output and finite gradients (the cotangent is nonzero everywhere).
  assert np.isfinite(out).all() and np.isfinite(gi_full).all() and np.isfinite(gg_full).all()
  assert (gg_full[~np.isfinite(grid)] == 0).all()

  flat_out = out.reshape(CHANNELS, -1)
  flat_grid = grid.reshape(-1, ndim)
  flat_gg = gg_special.reshape(-1, ndim)
  expected_gi = np.zeros(inp.shape, np.float64)
  flat_ct = ct_special.reshape(CHANNELS, -1)
  for i, expectation in enumerate(case["expectations"]):
    if expectation is None:  # zeros padding: reads nothing, no gradient at all
      assert (flat_out[:, i] == 0).all(), (i, flat_grid[i])
      assert (flat_gg[i] == 0).all(), (i, flat_grid[i])
    elif expectation == "open":  # reflection of a huge coordinate: some pixel of the input
      bound = np.abs(inp).max() * (1.5**ndim if mode == "bicubic" else 1.0)
      assert (np.abs(flat_out[:, i]) <= bound * (1 + 1e-6)).all(), (i, flat_grid[i])
    else:
      expected = inp[(0, slice(None)) + expectation]
      np.testing.assert_allclose(flat_out[:, i], expected, rtol=0, atol=_tol(dtype),
                                 err_msg=str(flat_grid[i]))
      expected_gi[(0, slice(None)) + expectation] += flat_ct[:, i]
    special = ~np.isfinite(flat_grid[i])
    # The gradient with respect to a non-finite grid value is exactly 0.
    assert (flat_gg[i][special] == 0).all(), (i, flat_grid[i], flat_gg[i])
    if padding == "border" and expectation is not None:
      # Far outside under border padding nothing moves: the gradient of the huge component vanishes.
      k = case["special_component"][i]
      assert abs(flat_gg[i][k]) <= _tol(dtype) * 0.1, (i, flat_grid[i], flat_gg[i])
  np.testing.assert_allclose(gi_special, expected_gi, rtol=0, atol=_tol(dtype, np.abs(flat_ct).sum()))


def _ordinary(case, array, point_axis=2):
  return np.take(array, np.arange(case["num_special"], array.shape[point_axis]), axis=point_axis)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_ordinary_points_keep_torch_parity(config, implementation):
  ndim, mode, padding, dtype = config
  case, _, ct_ordinary, out, _, (gi_ordinary, gg_ordinary), _ = _run(config, implementation)
  assert np.isfinite(gi_ordinary).all() and np.isfinite(gg_ordinary).all()
  inp, ac = case["inp"], case["ac"]
  grid = _ordinary(case, case["grid"], point_axis=1)
  ct = _ordinary(case, ct_ordinary)
  scale = float(np.abs(ct).sum())
  if ndim == 3 and mode == "bicubic":
    # PyTorch has no tricubic: the NumPy reference is the oracle (forward and grad_input).
    np.testing.assert_allclose(_ordinary(case, out), grid_sample_ref(inp, grid, mode, padding, ac),
                               rtol=0, atol=_tol(dtype))
    np.testing.assert_allclose(gi_ordinary, grad_input_ref(inp.shape, grid, ct, mode, padding, ac),
                               rtol=0, atol=_tol(dtype, scale))
    assert (_ordinary(case, gg_ordinary, point_axis=1) != 0).any()
    return
  pytest.importorskip("torch")
  from torch_oracle import torch_grid_sample

  expected = torch_grid_sample(inp, grid, ct, mode, padding, ac)
  np.testing.assert_allclose(_ordinary(case, out), expected["out"], rtol=0, atol=_parity_tol(dtype))
  np.testing.assert_allclose(gi_ordinary, expected["grad_input"], rtol=0, atol=_parity_tol(dtype, scale))
  np.testing.assert_allclose(_ordinary(case, gg_ordinary, point_axis=1), expected["grad_grid"], rtol=0,
                             atol=_parity_tol(dtype, scale * 4))
  # The special points in the same grid get no gradient from the ordinary points' cotangent.
  assert (gg_ordinary[:, :case["num_special"]] == 0).all()


INCOMING_CONFIGS = [(ndim, mode, padding, dtype) for ndim, mode, padding, dtype
                    in itertools.product((2, 3), MODES, PADDINGS, DTYPES) if padding == "zeros" or dtype == np.float64]


@pytest.mark.parametrize("autodiff", ("vjp", "jvp"))
@pytest.mark.parametrize("config", INCOMING_CONFIGS, ids=_config_id)
def test_nonfinite_incoming_gradient_reaches_only_its_points_taps(config, autodiff, implementation):
  """A NaN or inf in the incoming gradient reaches grad_input only at taps inside the input.

  ATen skips a tap outside the input; a kernel that zeroes its weight and
  clamps its index instead would add 0 * inf = NaN to pixel 0. Points inside,
  straddling the border and far outside carry NaN, +inf and -inf.
  """
  ndim, mode, padding, dtype = config
  ac = _align_corners(config)
  spatial = SPATIAL[ndim]
  rng = np.random.default_rng(zlib.crc32(("incoming-" + _config_id(config)).encode()))
  inp = rng.standard_normal((1, CHANNELS) + spatial).astype(dtype)
  points = rng.uniform(-1.4, 1.4, (12, ndim))
  # Far outside, far outside, straddling the border, inside, inside.
  points[:5] = [[3.0] * ndim, [-2.5] * ndim, [1.05] + [0.0] * (ndim - 1), [0.1] * ndim, [-0.3] * ndim]
  grid = points.astype(dtype).reshape((1, len(points)) + (1,) * (ndim - 1) + (ndim,))
  cotangent = rng.standard_normal((1, CHANNELS) + grid.shape[1:-1]).astype(dtype)
  flat = cotangent.reshape(CHANNELS, -1)
  for point, value in enumerate((np.nan, np.inf, -np.inf, np.nan, np.inf)):
    flat[point % CHANNELS, point] = value

  _, vjp = jax.vjp(
      lambda a, b: grid_sample(a, b, mode, padding, ac, autodiff=autodiff, implementation=implementation), inp, grid)
  grad_input, grad_grid = (np.asarray(g) for g in vjp(cotangent))

  with np.errstate(invalid="ignore"):  # inf * 0 (a zero-weight tap) and inf - inf are NaN on purpose
    expected = grad_input_ref(inp.shape, grid, cotangent, mode, padding, ac)
  assert not np.isfinite(expected).all()  # the case does reach some taps
  np.testing.assert_array_equal(np.isnan(grad_input), np.isnan(expected))
  np.testing.assert_array_equal(np.isinf(grad_input), np.isinf(expected))
  finite = np.isfinite(expected)
  np.testing.assert_allclose(grad_input[finite], expected[finite], rtol=0,
                             atol=_tol(dtype, np.abs(cotangent[np.isfinite(cotangent)]).sum()))
  # A point's grid gradient depends on its own incoming gradient only.
  finite_points = np.isfinite(cotangent).reshape(CHANNELS, -1).all(axis=0)
  assert np.isfinite(grad_grid.reshape(-1, ndim)[finite_points]).all()
