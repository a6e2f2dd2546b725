"""Argument validation, and the channels-last layout.

Every bad call raises ValueError or TypeError before anything is traced, with
a message that names the argument, what was expected and what was received,
and nothing from JAX's internals; the same holds under ``jax.jit``. The cases
include PyTorch's own ``test_grid_sample_error_checking`` (SPEC section 8.1),
with our wording.

``channels_last=True`` must be the channels-first computation with the
channel axis moved: forward, grad_input and grad_grid, 2-D and 3-D, every
mode.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")

INPUT_4D = np.ones((1, 1, 2, 2), np.float32)
GRID_4D = np.zeros((1, 1, 1, 2), np.float32)
INPUT_5D = np.ones((1, 1, 2, 2, 2), np.float32)
GRID_5D = np.zeros((1, 1, 1, 1, 3), np.float32)

# Words that would betray an error from inside JAX rather than from our checks.
INTERNALS = ("jax._src", "jaxlib", "Traced", "ShapedArray", "XLA", "lax.", "Traceback", "<locals>")


def _f32(*shape):
  return np.zeros(shape, np.float32)


class _DuckArray:
  """An object with a shape and a dtype NumPy cannot read (as a foreign tensor has)."""

  shape = (1, 1, 2, 2)
  dtype = "not-a-dtype"


# (id, kwargs for grid_sample, exception type, regex the message must match)
BAD_CALLS = [
    # Mode and padding: the message lists the valid choices.
    ("mode", dict(mode="garbage"), ValueError,
     r"expected mode to be one of 'bilinear', 'nearest', 'bicubic', but got: 'garbage'"),
    ("mode-case", dict(mode="Bilinear"), ValueError, r"expected mode to be one of .*'Bilinear'"),
    ("mode-none", dict(mode=None), ValueError, r"expected mode to be one of .*None"),
    ("mode-list", dict(mode=["bilinear"]), ValueError, r"expected mode to be one of"),
    ("padding", dict(padding_mode="garbage"), ValueError,
     r"expected padding_mode to be one of 'zeros', 'border', 'reflection', but got: 'garbage'"),
    ("padding-constant", dict(padding_mode="constant"), ValueError, r"padding_mode .*'constant'"),
    # align_corners and channels_last must be bools.
    ("align-corners-int", dict(align_corners=1), TypeError,
     r"expected align_corners to be a bool, but got 1"),
    ("align-corners-none", dict(align_corners=None), TypeError, r"align_corners to be a bool, but got None"),
    ("align-corners-str", dict(align_corners="True"), TypeError,
     r"align_corners to be a bool, but got 'True'"),
    ("channels-last-str", dict(channels_last="yes"), TypeError, r"channels_last to be a bool, but got 'yes'"),
    ("channels-last-int", dict(channels_last=0), TypeError, r"channels_last to be a bool, but got 0"),
    # Ranks.
    ("input-rank-3", dict(input=_f32(1, 2, 2)), ValueError,
     r"expected a 4-D input \(N, C, H_in, W_in\) or a 5-D input \(N, C, D_in, H_in, W_in\), "
     r"but got input of shape \(1, 2, 2\)"),
    ("input-rank-6", dict(input=_f32(1, 1, 2, 2, 2, 2), grid=_f32(1, 1, 1, 1, 1, 4)), ValueError,
     r"expected a 4-D input .* but got input of shape \(1, 1, 2, 2, 2, 2\)"),
    ("input-rank-0", dict(input=np.float32(1.0)), ValueError, r"but got input of shape \(\)"),
    ("grid-rank-5-for-4d", dict(grid=_f32(1, 1, 1, 1, 2)), ValueError,
     r"expected grid of shape \(N, H_out, W_out, 2\) for a 4-D input \(input and grid with the same number "
     r"of dimensions\), but got input of shape \(1, 1, 2, 2\) and grid of shape \(1, 1, 1, 1, 2\)"),
    ("grid-rank-4-for-5d", dict(input=INPUT_5D, grid=GRID_4D), ValueError,
     r"expected grid of shape \(N, D_out, H_out, W_out, 3\) for a 5-D input .*grid of shape \(1, 1, 1, 2\)"),
    # Last grid axis.
    ("grid-last-3-for-4d", dict(grid=_f32(1, 1, 1, 3)), ValueError,
     r"expected grid of shape \(N, H_out, W_out, 2\) for a 4-D input \(last dimension 2\), "
     r"but got grid of shape \(1, 1, 1, 3\)"),
    ("grid-last-1-for-4d", dict(grid=_f32(1, 1, 1, 1)), ValueError, r"\(last dimension 2\)"),
    ("grid-last-2-for-5d", dict(input=INPUT_5D, grid=_f32(1, 1, 1, 1, 2)), ValueError,
     r"expected grid of shape \(N, D_out, H_out, W_out, 3\) for a 5-D input \(last dimension 3\), "
     r"but got grid of shape \(1, 1, 1, 1, 2\)"),
    # Batch.
    ("batch", dict(grid=_f32(2, 1, 1, 2)), ValueError,
     r"expected input and grid to have the same batch size, but got input of shape \(1, 1, 2, 2\) "
     r"and grid of shape \(2, 1, 1, 2\)"),
    ("batch-5d", dict(input=_f32(3, 1, 2, 2, 2), grid=GRID_5D), ValueError, r"the same batch size"),
    # Empty input spatial axes (N = 0 and C = 0 are legal).
    ("empty-h", dict(input=_f32(1, 1, 0, 2)), ValueError,
     r"expected input to have non-empty spatial dimensions, but got input of shape \(1, 1, 0, 2\)"),
    ("empty-w", dict(input=_f32(1, 1, 2, 0)), ValueError, r"non-empty spatial dimensions"),
    ("empty-d", dict(input=_f32(1, 1, 0, 2, 2), grid=GRID_5D), ValueError, r"non-empty spatial dimensions"),
    # Dtypes.
    ("input-int", dict(input=np.ones((1, 1, 2, 2), np.int32)), TypeError,
     r"expected input to have a floating point dtype \(float16, bfloat16, float32 or float64\), "
     r"but got int32"),
    ("input-int64", dict(input=np.ones((1, 1, 2, 2), np.int64)), TypeError, r"input .* but got int64"),
    ("input-uint8", dict(input=np.ones((1, 1, 2, 2), np.uint8)), TypeError, r"input .* but got uint8"),
    ("input-bool", dict(input=np.ones((1, 1, 2, 2), bool)), TypeError, r"input .* but got bool"),
    ("grid-int", dict(grid=np.zeros((1, 1, 1, 2), np.int32)), TypeError,
     r"expected grid to have a floating point dtype .* but got int32"),
    ("grid-bool", dict(grid=np.zeros((1, 1, 1, 2), bool)), TypeError, r"expected grid .* but got bool"),
    ("input-complex", dict(input=np.ones((1, 1, 2, 2), np.complex64)), TypeError,
     r"expected input to have a floating point dtype .* but got complex64"),
    ("grid-complex", dict(grid=np.zeros((1, 1, 1, 2), np.complex128)), TypeError,
     r"expected grid .* but got complex128"),
    ("input-str", dict(input=np.array("abc")), TypeError, r"expected input to have a floating point dtype"),
    # Not arrays at all.
    ("input-list", dict(input=INPUT_4D.tolist()), TypeError,
     r"expected input to be an array \(jax.Array or numpy.ndarray\), but got a Python list; "
     r"convert it with jnp.asarray"),
    ("grid-list", dict(grid=GRID_4D.tolist()), TypeError, r"expected grid to be an array .* Python list"),
    ("grid-tuple", dict(grid=((((0.0, 0.0),),),)), TypeError,
     r"expected grid to be an array .* Python tuple"),
    ("input-ragged-list", dict(input=[[1.0], [1.0, 2.0]]), TypeError, r"expected input to be an array"),
    ("input-none", dict(input=None), TypeError, r"expected input to be an array .* but got NoneType"),
    ("input-foreign", dict(input=_DuckArray()), TypeError, r"expected input to be an array .*_DuckArray"),
    # channels_last changes the layouts the messages describe.
    ("cl-input-rank-3", dict(input=_f32(1, 2, 2), channels_last=True), ValueError,
     r"expected a 4-D input \(N, H_in, W_in, C\) or a 5-D input \(N, D_in, H_in, W_in, C\), "
     r"but got input of shape \(1, 2, 2\)"),
    ("cl-empty-h", dict(input=_f32(1, 0, 2, 1), channels_last=True), ValueError,
     r"non-empty spatial dimensions, but got input of shape \(1, 0, 2, 1\)"),
    ("cl-empty-d", dict(input=_f32(1, 2, 0, 2, 1), grid=GRID_5D, channels_last=True), ValueError,
     r"non-empty spatial dimensions"),
    ("cl-grid-last", dict(input=_f32(1, 2, 2, 1), grid=_f32(1, 1, 1, 3), channels_last=True), ValueError,
     r"\(last dimension 2\), but got grid of shape \(1, 1, 1, 3\)"),
    ("cl-batch", dict(input=_f32(1, 2, 2, 1), grid=_f32(2, 1, 1, 2), channels_last=True), ValueError,
     r"the same batch size"),
    # PyTorch's test_grid_sample_error_checking cases (SPEC 8.1).
    ("torch-3d-input", dict(input=INPUT_4D[0]), ValueError, r"expected a 4-D input"),
    ("torch-5d-grid-last-3", dict(grid=_f32(1, 1, 1, 1, 3)), ValueError, r"the same number of dimensions"),
    ("torch-grid-last-3", dict(grid=_f32(1, 1, 1, 3)), ValueError, r"\(last dimension 2\)"),
    ("torch-batch", dict(grid=_f32(2, 1, 1, 2)), ValueError, r"the same batch size"),
    ("torch-empty", dict(input=_f32(1, 1, 0, 2)), ValueError, r"non-empty spatial dimensions"),
]


def _call(kwargs, jit=False):
  kwargs = dict(kwargs)
  inp = kwargs.pop("input", INPUT_4D)
  grid = kwargs.pop("grid", GRID_4D)
  if not jit:
    return grid_sample(inp, grid, **kwargs)
  return jax.jit(lambda a, b: grid_sample(a, b, **kwargs))(inp, grid)


@pytest.mark.parametrize("kwargs,error,pattern", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_clear_errors(kwargs, error, pattern):
  with pytest.raises(error, match=pattern) as info:
    _call(kwargs)
  message = str(info.value)
  assert message.startswith("grid_sample(): ")
  for word in INTERNALS:
    assert word not in message


JITTABLE = [c for c in BAD_CALLS if all(isinstance(v, (np.ndarray, np.generic)) for k, v in c[1].items()
                                        if k in ("input", "grid")) and c[1].get("input", INPUT_4D).ndim > 0]


@pytest.mark.parametrize("kwargs,error,pattern", [c[1:] for c in JITTABLE], ids=[c[0] for c in JITTABLE])
def test_bad_arguments_under_jit_raise_the_same_errors(kwargs, error, pattern):
  if any(np.asarray(kwargs.get(k, INPUT_4D)).dtype.kind in "USO" for k in ("input", "grid")):
    pytest.skip("strings are not JAX types")
  with pytest.raises(error, match=pattern) as info:
    _call(kwargs, jit=True)
  for word in INTERNALS:
    assert word not in str(info.value)


def test_valid_calls_from_pytorch_error_checking_pass():
  # SPEC 8.1: a (1, 1, 2, 2) input with a (1, 1, 1, 2) grid works; so do N = 0, C = 0 and 5-D bicubic.
  assert grid_sample(INPUT_4D, GRID_4D, align_corners=False).shape == (1, 1, 1, 1)
  assert grid_sample(np.ones((1, 0, 2, 2), np.float32), GRID_4D).shape == (1, 0, 1, 1)
  assert grid_sample(INPUT_5D, GRID_5D, mode="bicubic").shape == (1, 1, 1, 1, 1)
  out = grid_sample(INPUT_4D, GRID_4D, align_corners=np.bool_(True), channels_last=np.bool_(False))
  assert out.shape == (1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------------
# channels_last=True is the channels-first computation with the channel axis moved.


# 2-D bilinear reads taps by flat index from 4 channels on; bilinear windows of 3
# channels and nearest rows of 6 scatter-add with a zero channel added.
@pytest.mark.parametrize("channels", (3, 5, 6))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ndim", (2, 3))
def test_channels_last_matches_channels_first(ndim, mode, channels):
  padding_mode = PADDINGS[(ndim + MODES.index(mode)) % 3]
  align_corners = MODES.index(mode) % 2 == 0
  rng = np.random.default_rng(ndim * 10 + MODES.index(mode) + 100 * (channels - 3))
  spatial_in = (3, 4, 5)[-ndim:]
  inp = rng.standard_normal((2, channels) + spatial_in).astype(np.float64)
  grid = rng.uniform(-1.3, 1.3, (2,) + (2, 3, 2)[-ndim:] + (ndim,)).astype(np.float64)
  cotangent = rng.standard_normal((2, channels) + grid.shape[1:-1]).astype(np.float64)
  last = (0,) + tuple(range(2, ndim + 2)) + (1,)  # channels-first to channels-last

  @jax.jit
  def both(inp, grid, cotangent):
    results = []
    for channels_last in (False, True):
      x = jnp.transpose(inp, last) if channels_last else inp
      ct = jnp.transpose(cotangent, last) if channels_last else cotangent
      out, vjp = jax.vjp(lambda a, b, cl=channels_last: grid_sample(a, b, mode, padding_mode, align_corners,
                                                                   channels_last=cl), x, grid)
      results.append((out,) + vjp(ct))
    return results

  (out, grad_input, grad_grid), (out_cl, grad_input_cl, grad_grid_cl) = both(inp, grid, cotangent)
  assert out_cl.shape == (2,) + grid.shape[1:-1] + (channels,)
  assert grad_input_cl.shape == tuple(inp.shape[i] for i in last)
  np.testing.assert_allclose(np.asarray(out_cl), np.transpose(np.asarray(out), last), rtol=1e-13, atol=1e-13)
  np.testing.assert_allclose(np.asarray(grad_input_cl), np.transpose(np.asarray(grad_input), last),
                             rtol=1e-13, atol=1e-13)
  np.testing.assert_allclose(np.asarray(grad_grid_cl), np.asarray(grad_grid), rtol=1e-13, atol=1e-13)
  assert np.abs(np.asarray(out)).max() > 0
  if mode != "nearest":
    assert np.abs(np.asarray(grad_grid)).max() > 0


def test_error_messages_name_the_argument():
  # The two array arguments are told apart in every dtype message.
  cases = (("input", dict(input=INPUT_4D.astype(np.int8))), ("grid", dict(grid=GRID_4D.astype(np.int8))))
  for name, kwargs in cases:
    with pytest.raises(TypeError, match=re.escape(f"expected {name} to have a floating point dtype")):
      _call(kwargs)
