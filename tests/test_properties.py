"""Property tests: random shapes, modes, paddings and grids full of non-finite values.

Every example draws a rank (2-D or 3-D), a mode, a padding, align_corners, a
dtype (float32 or float64), shapes with size-1 axes now and then, a finite
input, and a grid mixing ordinary values with NaN, +-inf and +-1e30. It then
checks the forward and grad_input against the slow NumPy reference
(``numpy_reference``, which implements SPEC section 9's rule for non-finite
coordinates) and the invariants of our contract:

* with a finite input, the output, grad_input and grad_grid are finite;
* grad_grid is exactly 0 at every non-finite grid entry (and everywhere for
  nearest);
* under zeros padding, an all-non-finite grid reads nothing: output 0,
  grad_input 0, grad_grid 0.

A last test checks the premise of ``AxisTaps.bounded`` (taps whose inside
test is skipped): over any grid, such taps lie inside the input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy_reference import grad_input_ref, grid_sample_ref, unnormalize

from jaxgridsample import _kernel, grid_sample
from jaxgridsample._autodiff import INTERPOLATION_FAMILIES

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
SPECIALS = (np.nan, np.inf, -np.inf, 1e30, -1e30)
NONFINITE = (np.nan, np.inf, -np.inf)
PROPERTY_SETTINGS = settings(max_examples=35, deadline=None)


@functools.cache
def _value_and_grads(mode, padding_mode, align_corners):
  """A jitted ``(input, grid, cotangent) -> (out, grad_input, grad_grid)``."""

  def run(inp, grid, cotangent):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding_mode, align_corners), inp, grid)
    return (out,) + vjp(cotangent)

  return jax.jit(run)


def _avoid_nearest_ties(grid, input_spatial, align_corners):
  """Moves ordinary grid values whose pixel coordinate is within 1e-4 of a rounding tie.

  Exact ties are kept (both sides compute them exactly); only near ties,
  where float32 and float64 coordinates may round differently, are moved.
  """
  grid = grid.copy()
  ndim = grid.shape[-1]
  for _ in range(4):
    moved = False
    for k in range(ndim):
      size = input_spatial[ndim - 1 - k]
      g = grid[..., k].astype(np.float64)
      finite = np.abs(g) < 10
      p = np.array([unnormalize(v, size, align_corners) if f else 0.0
                    for v, f in zip(g.ravel(), finite.ravel(), strict=True)]).reshape(g.shape)
      distance = np.abs(p - np.floor(p) - 0.5)
      near = finite & (distance > 0) & (distance < 1e-4)
      if near.any():
        grid[..., k] = np.where(near, (g + 3e-3).astype(grid.dtype), grid[..., k])
        moved = True
    if not moved:
      return grid
  raise AssertionError("could not move the grid away from nearest-mode ties")


def _grid_elements(dtype):
  width = 32 if dtype == np.float32 else 64
  ordinary = st.floats(-3, 3, width=width)
  return st.one_of(ordinary, ordinary, st.sampled_from(SPECIALS))


@st.composite
def sampling_cases(draw, specials=True):
  ndim = draw(st.sampled_from([2, 3]))
  mode = draw(st.sampled_from(MODES))
  padding_mode = draw(st.sampled_from(PADDINGS))
  align_corners = draw(st.booleans())
  dtype = draw(st.sampled_from([np.float32, np.float64]))
  batch = draw(st.integers(1, 2))
  channels = draw(st.integers(1, 2))
  in_spatial = tuple(draw(st.sampled_from([1, 2, 3, 5])) for _ in range(ndim))
  out_spatial = tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(ndim))
  values = st.floats(-4, 4, width=32)
  inp = draw(hnp.arrays(dtype, (batch, channels) + in_spatial, elements=values))
  grid = draw(hnp.arrays(dtype, (batch,) + out_spatial + (ndim,), elements=_grid_elements(dtype)))
  cotangent = draw(hnp.arrays(dtype, (batch, channels) + out_spatial, elements=values))
  if mode == "nearest":
    grid = _avoid_nearest_ties(grid, in_spatial, align_corners)
  return dict(inp=inp, grid=grid, cotangent=cotangent, mode=mode, padding_mode=padding_mode,
              align_corners=align_corners)


def _tolerance(dtype, scale):
  return (1e-5 if dtype == np.float32 else 1e-10) * (1.0 + scale)


@PROPERTY_SETTINGS
@given(sampling_cases())
def test_matches_reference_and_keeps_the_contract(case):
  inp, grid, cotangent = case["inp"], case["grid"], case["cotangent"]
  mode, padding_mode, align_corners = case["mode"], case["padding_mode"], case["align_corners"]
  dtype = inp.dtype
  out, grad_input, grad_grid = (np.asarray(a) for a in _value_and_grads(mode, padding_mode, align_corners)(
      jnp.asarray(inp), jnp.asarray(grid), jnp.asarray(cotangent)))

  assert out.shape == cotangent.shape and out.dtype == dtype
  assert grad_input.shape == inp.shape and grad_input.dtype == dtype
  assert grad_grid.shape == grid.shape and grad_grid.dtype == dtype

  # A finite input gives a finite output and finite gradients, whatever the grid holds.
  assert np.isfinite(out).all()
  assert np.isfinite(grad_input).all()
  assert np.isfinite(grad_grid).all()
  # The gradient with respect to a non-finite grid value is exactly 0.
  nonfinite = ~np.isfinite(grid)
  assert (grad_grid[nonfinite] == 0).all()
  if mode == "nearest":
    assert (grad_grid == 0).all()

  expected = grid_sample_ref(inp, grid, mode, padding_mode, align_corners)
  open_points = np.isnan(expected)
  max_in = float(np.abs(inp).max(initial=0.0))
  np.testing.assert_allclose(out[~open_points], expected[~open_points], rtol=0,
                             atol=_tolerance(dtype, max_in))
  if open_points.any():
    # Reflection of +-1e30: which pixel is read is left open, but it is a pixel of the input.
    assert padding_mode == "reflection"
    bound = max_in * (1.0 if mode != "bicubic" else 1.5 ** inp.ndim)
    assert (np.abs(out[open_points]) <= bound * (1 + 1e-6) + 1e-6).all()

  expected_grad = grad_input_ref(inp.shape, grid, cotangent, mode, padding_mode, align_corners)
  determined = ~np.isnan(expected_grad)
  scale = float(np.abs(cotangent).sum())
  np.testing.assert_allclose(grad_input[determined], expected_grad[determined], rtol=0,
                             atol=_tolerance(dtype, scale))


@st.composite
def all_nonfinite_cases(draw):
  ndim = draw(st.sampled_from([2, 3]))
  mode = draw(st.sampled_from(MODES))
  align_corners = draw(st.booleans())
  dtype = draw(st.sampled_from([np.float32, np.float64]))
  in_spatial = tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(ndim))
  out_spatial = tuple(draw(st.sampled_from([1, 2])) for _ in range(ndim))
  batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 2))
  inp = draw(hnp.arrays(dtype, (batch, channels) + in_spatial, elements=st.floats(-4, 4, width=32)))
  grid = draw(hnp.arrays(dtype, (batch,) + out_spatial + (ndim,), elements=st.sampled_from(NONFINITE)))
  return inp, grid, mode, align_corners


@settings(max_examples=15, deadline=None)
@given(all_nonfinite_cases())
def test_all_nonfinite_grid_reads_nothing_under_zeros_padding(case):
  inp, grid, mode, align_corners = case
  cotangent = np.ones(inp.shape[:2] + grid.shape[1:-1], inp.dtype)
  out, grad_input, grad_grid = (np.asarray(a) for a in _value_and_grads(mode, "zeros", align_corners)(
      jnp.asarray(inp), jnp.asarray(grid), jnp.asarray(cotangent)))
  assert (out == 0).all()
  assert (grad_input == 0).all()
  assert (grad_grid == 0).all()


@PROPERTY_SETTINGS
@given(size=st.integers(1, 6), padding_mode=st.sampled_from(("border", "reflection")), align_corners=st.booleans(),
       spatial_rank=st.sampled_from((2, 3)), dtype=st.sampled_from((np.float32, np.float64)),
       grid=hnp.arrays(np.float64, st.integers(1, 40),
                       elements=st.one_of(st.floats(-40, 40), st.sampled_from(SPECIALS + (-1.0, 1.0, 0.0)))))
def test_taps_marked_bounded_lie_inside(size, padding_mode, align_corners, spatial_rank, dtype, grid):
  """``AxisTaps.bounded`` skips the inside test (its mask is a constant): such taps must lie inside."""
  points = jnp.asarray(grid.astype(dtype))[:, None].repeat(spatial_rank, axis=1)
  shape = (size,) * spatial_rank
  for mode, family in INTERPOLATION_FAMILIES.items():
    coordinates = _kernel.point_coordinates(family, points, shape, padding_mode, align_corners)
    taps = _kernel.taps_at(family, coordinates, shape, padding_mode, align_corners)
    for axis in taps.axes:
      if axis.bounded:
        positions = np.asarray(axis.position)
        assert np.all((positions >= 0) & (positions <= size - 1)), (mode, positions)
    if mode == "bicubic":
      assert all(axis.bounded for axis in taps.axes)
