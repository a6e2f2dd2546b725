"""Live parity with torch.nn.functional.grid_sample (runs when torch is installed).

Fresh random cases (other seeds and shapes than the golden file), grids mixed
with hard points, every combination PyTorch supports, float32 and float64:
forward, grad_input and grad_grid through jax.vjp with a random cotangent,
and, in float64, the double backward.
"""

from __future__ import annotations

import cases
import numpy as np
import pytest
from jax_side import jax_grid_sample

from jaxgridsample import _autodiff, _kernel

torch_oracle = pytest.importorskip("torch_oracle")
if torch_oracle.torch is None:
  pytest.skip("torch is not installed", allow_module_level=True)

COMBINATIONS = list(cases.combinations())


def _id(combination):
  ndim, mode, padding, ac = combination
  return f"{ndim}d-{mode}-{padding}-ac{ac}"


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("combination", COMBINATIONS, ids=_id)
def test_random_cases_with_hard_points(combination, dtype, implementation):
  ndim, mode, padding, ac = combination
  rng = np.random.default_rng(cases.stable_seed(ndim, mode, padding, ac, np.dtype(dtype).name))
  for _ in range(2):
    case = cases.make_case(rng, ndim, mode, padding, ac, dtype)
    ddot = (case["u"], case["w"]) if dtype == np.float64 else None
    expected = torch_oracle.torch_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac,
                                              ddot=ddot)
    ours = jax_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac, ddot=ddot,
                           implementation=implementation)
    for field, value in expected.items():
      cases.assert_close(ours[field], value, dtype, what=field)


@pytest.mark.parametrize("combination", [c for c in COMBINATIONS if c[1] != "nearest"], ids=_id)
def test_larger_uniform_case(combination, implementation):
  """A bigger case like PyTorch's OpInfo samples: values uniform in [-2, 2]."""
  ndim, mode, padding, ac = combination
  rng = np.random.default_rng(7)
  in_shape = (2, 3) + ((9, 11) if ndim == 2 else (5, 6, 7))
  out_shape = (2,) + ((13, 10) if ndim == 2 else (4, 5, 3))
  inp = rng.standard_normal(in_shape)
  grid = rng.uniform(-2, 2, out_shape + (ndim,))
  grad_out = rng.standard_normal(in_shape[:2] + out_shape[1:])
  expected = torch_oracle.torch_grid_sample(inp, grid, grad_out, mode, padding, ac)
  ours = jax_grid_sample(inp, grid, grad_out, mode, padding, ac, implementation=implementation)
  for field, value in expected.items():
    cases.assert_close(ours[field], value, np.float64, what=field)


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("combination", [c for c in COMBINATIONS if c[2] == "reflection"], ids=_id)
def test_reflection_far_outside_a_wide_plane(combination, dtype, implementation):
  """x far outside a 731-pixel row (cases.make_far_reflection_case), fresh seeds; golden values in test_golden.

  One rounding more than PyTorch's (a multiply and a subtract where its 2-D
  kernel has one fma, or XLA's reciprocal for a division) moved the
  remainder across the far half and read the wrong pixel.
  """
  ndim, mode, padding, ac = combination
  rng = np.random.default_rng(cases.stable_seed("far", ndim, mode, ac, np.dtype(dtype).name))
  case = cases.make_far_reflection_case(rng, ndim, dtype)
  expected = torch_oracle.torch_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac)
  ours = jax_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac,
                         implementation=implementation)
  for field, value in expected.items():
    cases.assert_close(ours[field], value, dtype, what=field)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
def test_pixel_centres_exactly(ndim, align_corners, dtype, implementation):
  """Grid values computed the way users compute pixel centres, on every axis size 1..12.

  A coordinate landing one ulp off an integer flips floor() and the grid
  gradient; this checks we round exactly as PyTorch's kernels do.
  """
  for size in range(1, 13):
    i = np.arange(-size, 2 * size, dtype=dtype)
    if align_corners:
      values = i * dtype(2) / dtype(max(size - 1, 1)) - dtype(1)
    else:
      values = (dtype(2) * i + dtype(1)) / dtype(size) - dtype(1)
    values = np.concatenate([values, np.linspace(-3, 3, 8 * size + 1, dtype=dtype)])
    grid = np.zeros((1, values.size) + (1,) * (ndim - 1) + (ndim,), dtype)
    grid[..., 0] = values.reshape(grid.shape[1:-1])
    grid[..., 1:] = dtype(0.3)
    rng = np.random.default_rng(size)
    in_shape = (1, 2) + (3,) * (ndim - 1) + (size,)
    inp = rng.standard_normal(in_shape).astype(dtype)
    grad_out = rng.standard_normal((1, 2) + grid.shape[1:-1]).astype(dtype)
    for padding in cases.PADDINGS:
      expected = torch_oracle.torch_grid_sample(inp, grid, grad_out, "bilinear", padding, align_corners)
      ours = jax_grid_sample(inp, grid, grad_out, "bilinear", padding, align_corners, implementation=implementation)
      for field, value in expected.items():
        cases.assert_close(ours[field], value, dtype, what=f"size {size} {padding} {field}")


@pytest.mark.parametrize("combination", COMBINATIONS, ids=_id)
def test_many_channels_in_float32(combination, implementation):
  """6 channels (the XLA forward reads 2-D bilinear by flat index from 4 channels on), float32."""
  ndim, mode, padding, ac = combination
  rng = np.random.default_rng(cases.stable_seed("float32", *combination))
  case = cases.make_case(rng, ndim, mode, padding, ac, np.float32)
  inp = rng.standard_normal(case["inp"].shape[:1] + (6,) + case["inp"].shape[2:]).astype(np.float32)
  grad_out = rng.standard_normal(case["grad_out"].shape[:1] + (6,) + case["grad_out"].shape[2:]).astype(np.float32)
  expected = torch_oracle.torch_grid_sample(inp, case["grid"], grad_out, mode, padding, ac)
  ours = jax_grid_sample(inp, case["grid"], grad_out, mode, padding, ac, implementation=implementation)
  for field, value in expected.items():
    cases.assert_close(ours[field], value, np.float32, what=field)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=_id)
def test_double_backward_with_many_channels(combination, implementation):
  """The random cases have 1-3 channels; this one has 6, with hard points, float64."""
  ndim, mode, padding, ac = combination
  rng = np.random.default_rng(cases.stable_seed(*combination))
  case = cases.make_case(rng, ndim, mode, padding, ac, np.float64)
  inp = rng.standard_normal(case["inp"].shape[:1] + (6,) + case["inp"].shape[2:])
  grad_out = rng.standard_normal(case["grad_out"].shape[:1] + (6,) + case["grad_out"].shape[2:])
  ddot = (rng.standard_normal(inp.shape), case["w"])
  expected = torch_oracle.torch_grid_sample(inp, case["grid"], grad_out, mode, padding, ac, ddot=ddot)
  ours = jax_grid_sample(inp, case["grid"], grad_out, mode, padding, ac, ddot=ddot, implementation=implementation)
  for field, value in expected.items():
    cases.assert_close(ours[field], value, np.float64, what=field)


def _channel_threshold_cases():
  # The channel counts where the backward changes form. Bilinear/trilinear:
  # either side of the counts that scatter-add tap pairs as windows
  # (_autodiff.WINDOW_CHANNELS), that materialise each channel's grid
  # gradient terms (_kernel.FEW_CHANNELS), and from which the incoming
  # gradient is transposed before the loop
  # (_autodiff.ROWS_BEFORE_LOOP_CHANNELS), and the counts whose scatter-add
  # gets zero channels (_autodiff.scatter_channels): windows of 3, rows of
  # 10. Nearest: rows of 5 and 6 channels (6 gets a zero channel). Bicubic:
  # either side of its window counts, under zeros padding (the only one with
  # adjacent taps).
  pairs = _autodiff.WINDOW_CHANNELS["bilinear"]
  for ndim, few in sorted(_kernel.FEW_CHANNELS.items()):
    counts = {pairs[0], few, few + 1, pairs[-1], pairs[-1] + 1, _autodiff.ROWS_BEFORE_LOOP_CHANNELS,
              *_autodiff.WINDOW_PADDED_CHANNELS, 10}
    for channels in sorted(counts):
      for padding in cases.PADDINGS:
        for ac in (False, True):
          yield ndim, "bilinear", channels, padding, ac
    for channels in (5, 6):
      for padding in cases.PADDINGS:
        yield ndim, "nearest", channels, padding, ndim == 2
  quads = _autodiff.WINDOW_CHANNELS["bicubic"]
  for channels in (quads[0] - 1, quads[0], quads[-1], quads[-1] + 1):
    for ac in (False, True):
      yield 2, "bicubic", channels, "zeros", ac


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("ndim,mode,channels,padding,ac", list(_channel_threshold_cases()))
def test_backward_forms_by_channel_count(ndim, mode, channels, padding, ac, dtype):
  """Hard points on both sides of every channel count where the XLA backward changes form; float64
  adds the double backward."""
  rng = np.random.default_rng(
      cases.stable_seed("channels", ndim, mode, channels, padding, ac, np.dtype(dtype).name))
  case = cases.make_case(rng, ndim, mode, padding, ac, dtype)
  batch = case["inp"].shape[0]
  inp = rng.standard_normal((batch, channels) + case["inp"].shape[2:]).astype(dtype)
  grad_out = rng.standard_normal((batch, channels) + case["grad_out"].shape[2:]).astype(dtype)
  ddot = (rng.standard_normal(inp.shape).astype(dtype), case["w"]) if dtype == np.float64 else None
  expected = torch_oracle.torch_grid_sample(inp, case["grid"], grad_out, mode, padding, ac, ddot=ddot)
  ours = jax_grid_sample(inp, case["grid"], grad_out, mode, padding, ac, ddot=ddot, implementation="xla")
  second_order = {"dd_input", "dd_grid", "dd_grad_out"} if ddot else set()
  assert set(expected) == {"out", "grad_input", "grad_grid"} | second_order
  for field, value in expected.items():
    cases.assert_close(ours[field], value, dtype, what=f"C={channels} {field}")
