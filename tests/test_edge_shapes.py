"""Edge shapes: empty tensors, and inputs too large for a flat int32 index.

Empty tensors (SPEC section 1.2): N = 0, C = 0 and an empty output spatial
axis are legal; the output is empty with the right shape, the gradients are
zero or empty, nothing crashes (forward and ``jax.vjp``, under ``jax.jit``).

Large inputs (SPEC section 8.2, test_grid_sample_large_index): our kernel
indexes every axis separately and never forms a flat index, so an input with
more than 2**31 elements must be read correctly near its far corner, where a
flat int32 offset would overflow. Three tests show it:

* ``test_far_corner_of_a_huge_input_reads_correctly`` runs a (1, 1, 46341,
  46341) input (2**31 + 4633 elements) and a (1, 1, 1291, 1291, 1291) input
  (2**31 + 4.2e6 elements) whose values are an arithmetic function of the
  pixel index, built inside ``jax.jit`` from ``iota``: XLA fuses it into the
  gather, so the 8 GiB input is never stored, yet every read goes through our
  per-axis indices (a flat index would read the wrong value). Output and
  grad_grid must equal sampling an 8-pixel crop of the far corner.
* ``test_compiled_program_never_flattens_a_huge_input`` lowers and compiles
  (without running) the forward and both gradients, grad_input's scatter
  included, for a (1, 1, 46341, 46341) float16 ``jax.ShapeDtypeStruct`` and
  checks that no gather or scatter works on a flattened operand.
* ``test_huge_float16_input_in_memory`` (marked slow: about 4.3 GB of RAM)
  does the same as the first test on a real float16 array in memory.

grad_input of such an input cannot be run here: it is an 8.6 GB float32
scatter target plus a 4.3 GB result, too much for the 24 GiB machines; the
compile-only test covers its indexing.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample

MODES = ("bilinear", "nearest", "bicubic")


def _vjp_fn(mode, padding_mode="zeros", align_corners=False):
  def run(inp, grid, cotangent):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding_mode, align_corners), inp, grid)
    return (out,) + vjp(cotangent)

  return jax.jit(run)


def _empty_cases(ndim):
  """(name, input shape, grid shape) for N = 0 and C = 0."""
  spatial_in = (3,) * ndim
  spatial_out = (2,) * ndim
  return [
      ("N=0", (0, 2) + spatial_in, (0,) + spatial_out + (ndim,)),
      ("C=0", (2, 0) + spatial_in, (2,) + spatial_out + (ndim,)),
  ]


def _empty_output_cases(ndim):
  """(name, input shape, grid shape) with one empty output spatial axis."""
  spatial_in = (3,) * ndim
  cases = []
  for axis in range(ndim):
    spatial_out = [2] * ndim
    spatial_out[axis] = 0
    cases.append((f"out_axis{axis}=0", (2, 2) + spatial_in, (2,) + tuple(spatial_out) + (ndim,)))
  return cases


def _torch_output_shape(input_shape, grid_shape, mode):
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F

  inp = torch.zeros(input_shape, dtype=torch.float64)
  grid = torch.zeros(grid_shape, dtype=torch.float64)
  out = F.grid_sample(inp, grid, mode=mode, padding_mode="zeros", align_corners=False)
  return tuple(out.shape)


def _check_empty(ndim, mode, input_shape, grid_shape):
  inp = jnp.ones(input_shape, jnp.float32)
  grid = jnp.zeros(grid_shape, jnp.float32)
  expected_shape = input_shape[:2] + grid_shape[1:-1]
  out = jax.jit(lambda a, b: grid_sample(a, b, mode, "reflection", True))(inp, grid)
  assert out.shape == expected_shape and out.dtype == jnp.float32
  out, grad_input, grad_grid = _vjp_fn(mode)(inp, grid, jnp.ones(expected_shape, jnp.float32))
  assert out.shape == expected_shape and out.dtype == jnp.float32
  assert grad_input.shape == input_shape and grad_input.dtype == jnp.float32
  assert grad_grid.shape == grid_shape and grad_grid.dtype == jnp.float32
  assert not np.asarray(grad_input).any()
  assert not np.asarray(grad_grid).any()
  if not (ndim == 3 and mode == "bicubic"):  # PyTorch has no tricubic
    try:
      import torch  # noqa: F401
    except ImportError:
      return
    assert _torch_output_shape(input_shape, grid_shape, mode) == expected_shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", (2, 3))
def test_empty_batch_and_channels(ndim, mode):
  for _, input_shape, grid_shape in _empty_cases(ndim):
    _check_empty(ndim, mode, input_shape, grid_shape)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", (2, 3))
def test_empty_output_spatial_axis(ndim, mode):
  for _, input_shape, grid_shape in _empty_output_cases(ndim):
    _check_empty(ndim, mode, input_shape, grid_shape)


# ---------------------------------------------------------------------------------------------------
# Inputs with more than 2**31 elements.

BIG_2D = 46341  # 46341**2 = 2**31 + 4633
BIG_3D = 1291  # 1291**3 = 2**31 + 4201523
CROP = 8


def _pattern(indices):
  """The input value at an integer pixel index (z, y, x) or (y, x): exact in float32."""
  weights = (7, 3, 5)[-len(indices):]
  return sum(w * i for w, i in zip(weights, indices, strict=True)) % 1009


def _iota_input(shape):
  """The pattern over ``shape`` (1, 1, *spatial), built from iota (fused into the gather by XLA)."""
  spatial = shape[2:]
  indices = [jax.lax.broadcasted_iota(jnp.int32, shape, 2 + axis) for axis in range(len(spatial))]
  return _pattern(indices).astype(jnp.float32)


def _crop_input(size, ndim):
  """The pattern on the last CROP pixels of every axis of a size**ndim input."""
  offset = size - CROP
  indices = np.meshgrid(*([np.arange(offset, size)] * ndim), indexing="ij")
  return _pattern(indices).astype(np.float32).reshape((1, 1) + (CROP,) * ndim)


def _far_corner_pixels(size, ndim):
  """Pixel coordinates (one row per point, axis order z, y, x) near the far corner, some outside."""
  rng = np.random.default_rng(ndim)
  inside = size - 1 - rng.uniform(0.1, 3.0, (6, ndim))
  beyond = size - 1 + rng.uniform(0.05, 1.2, (3, ndim))
  pixels = np.concatenate([inside, np.where(rng.random((3, ndim)) < 0.5, beyond, inside[:3])])
  # Keep nearest mode away from rounding ties.
  frac = pixels - np.floor(pixels)
  return np.where(np.abs(frac - 0.5) < 0.05, pixels + 0.1, pixels)


def _normalise(pixels, size):
  """align_corners=True grid values (x first) for pixel coordinates (z, y, x order)."""
  return (2 * pixels / (size - 1) - 1)[:, ::-1]


BIG_CONFIGS = [(2, "bilinear", "zeros"), (2, "nearest", "border"), (2, "bicubic", "reflection"),
               (3, "bilinear", "reflection"), (3, "nearest", "zeros"), (3, "bicubic", "border")]


def _huge_case(ndim):
  """The input shape and size, and grids (x first) for it and for its far-corner crop."""
  size = BIG_2D if ndim == 2 else BIG_3D
  shape = (1, 1) + (size,) * ndim
  assert np.prod(shape, dtype=np.int64) > 2**31
  pixels = _far_corner_pixels(size, ndim)
  # float64 grids keep the coordinates exact enough at 46341 pixels (the input is float32).
  grid_shape = (1, len(pixels)) + (1,) * (ndim - 1) + (ndim,)
  big_grid = _normalise(pixels, size).reshape(grid_shape)
  crop_grid = _normalise(pixels - (size - CROP), CROP).reshape(grid_shape)
  return shape, size, big_grid, crop_grid


def _compile_lean(fn, *args):
  """``fn`` compiled, or a skip when XLA would materialise the huge iota input."""
  compiled = jax.jit(fn).lower(*args).compile()
  temp_bytes = compiled.memory_analysis().temp_size_in_bytes
  if temp_bytes > 2**20:
    pytest.skip(f"XLA did not fuse the iota input into the gathers: running would need {temp_bytes} bytes")
  return compiled


@pytest.mark.parametrize("ndim,mode,padding_mode", BIG_CONFIGS)
def test_far_corner_of_a_huge_input_reads_correctly(ndim, mode, padding_mode):
  shape, size, big_grid, crop_grid = _huge_case(ndim)
  compiled = _compile_lean(lambda grid: grid_sample(_iota_input(shape), grid, mode, padding_mode, True), big_grid)
  expected = grid_sample(_crop_input(size, ndim), crop_grid, mode, padding_mode, True)
  np.testing.assert_allclose(np.asarray(compiled(big_grid)), np.asarray(expected), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("ndim,mode,padding_mode", BIG_CONFIGS)
def test_far_corner_of_a_huge_input_gives_the_grid_gradient(ndim, mode, padding_mode):
  shape, size, big_grid, crop_grid = _huge_case(ndim)

  def sample(grid, inp):
    out, vjp = jax.vjp(lambda g: grid_sample(inp, g, mode, padding_mode, True), grid)
    return out, vjp(jnp.ones(out.shape, out.dtype))[0]

  compiled = _compile_lean(lambda grid: sample(grid, _iota_input(shape)), big_grid)
  out, grad_grid = compiled(big_grid)
  expected_out, expected_grad = jax.jit(sample)(crop_grid, _crop_input(size, ndim))
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected_out), rtol=1e-6, atol=1e-3)
  # The unnormalise scale differs between the big input and the crop.
  np.testing.assert_allclose(np.asarray(grad_grid), np.asarray(expected_grad) * (size - 1) / (CROP - 1),
                             rtol=1e-6, atol=1e-3)
  if mode != "nearest":
    assert np.abs(np.asarray(grad_grid)).max() > 0


def _gathers_and_scatters(hlo_text):
  return [line for line in hlo_text.splitlines() if re.search(r"\b(gather|scatter)\(", line)]


@pytest.mark.parametrize("mode", MODES)
def test_compiled_program_never_flattens_a_huge_input(mode):
  shape = (1, 1, BIG_2D, BIG_2D)
  inp = jax.ShapeDtypeStruct(shape, jnp.float16)
  grid = jax.ShapeDtypeStruct((1, 3, 2, 2), jnp.float32)

  def forward_and_backward(x, g):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, "border", False), x, g)
    return (out,) + vjp(jnp.ones(out.shape, out.dtype))

  lowered = jax.jit(forward_and_backward).lower(inp, grid)
  compiled = lowered.compile()  # compiles, never runs: no memory is allocated
  flat = str(BIG_2D * BIG_2D)
  for text in (lowered.as_text(), compiled.as_text()):
    assert flat not in text, "a flattened view of the input appears in the program"
  ops = _gathers_and_scatters(compiled.as_text())
  assert any("gather(" in op for op in ops) and any("scatter(" in op for op in ops)
  for op in ops:
    # Every gather/scatter indexes the batch and both spatial axes separately.
    index_map = re.search(r"(start_index_map|scatter_dims_to_operand_dims)=\{([0-9,]*)\}", op)
    assert index_map is not None and len(index_map.group(2).split(",")) >= 2, op


@pytest.mark.slow
def test_huge_float16_input_in_memory():
  size = BIG_2D
  host = np.zeros((1, 1, size, size), np.float16)  # 4.3 GB; pages stay unallocated until written
  host[..., size - CROP:, size - CROP:] = _crop_input(size, 2)
  host[..., :2, :2] = -5.0
  inp = jax.device_put(host)  # zero-copy on CPU when possible
  pixels = _far_corner_pixels(size, 2)
  pixels = np.concatenate([pixels, [[0.3, 0.6]]])  # one point at the near corner too
  big_grid = jnp.asarray(_normalise(pixels, size).reshape(1, len(pixels), 1, 2), jnp.float64)
  crop_grid = _normalise(pixels[:-1] - (size - CROP), CROP).reshape((1, len(pixels) - 1, 1, 2))
  near_input = np.zeros((1, 1, 4, 4), np.float16)
  near_input[..., :2, :2] = -5.0
  near_grid = _normalise(pixels[-1:], 4).reshape(1, 1, 1, 2)

  for mode in MODES:

    @jax.jit
    def sample(x, grid, mode=mode):
      out, vjp = jax.vjp(lambda g: grid_sample(x, g, mode, "zeros", True), grid)
      return out, vjp(jnp.ones(out.shape, out.dtype))[0]

    out, grad_grid = sample(inp, big_grid)
    assert out.dtype == jnp.float16 and grad_grid.dtype == jnp.float64
    out, grad_grid = np.asarray(out, np.float32), np.asarray(grad_grid)
    # Far corner: as sampling the crop.
    expected_out, expected_grad = sample(jnp.asarray(_crop_input(size, 2), jnp.float16), crop_grid)
    np.testing.assert_allclose(out[:, :, :-1], np.asarray(expected_out, np.float32), rtol=2e-3, err_msg=mode)
    np.testing.assert_allclose(grad_grid[:, :-1], np.asarray(expected_grad) * (size - 1) / (CROP - 1),
                               rtol=1e-6, atol=1e-3, err_msg=mode)
    # Near corner: as sampling a 4x4 crop of it.
    near_out, near_grad = sample(jnp.asarray(near_input), near_grid)
    np.testing.assert_allclose(out[:, :, -1:], np.asarray(near_out, np.float32), rtol=2e-3, err_msg=mode)
    np.testing.assert_allclose(grad_grid[:, -1:], np.asarray(near_grad) * (size - 1) / 3,
                               rtol=1e-6, atol=1e-3, err_msg=mode)
