"""Test cases shared by the golden-value generator and the live torch tests.

A case is a random input, a grid mixing uniform values with the hard points
(exactly -1, 0, 1, pixel centres and cell edges, reflection planes, far
outside up to 1e6), a random output cotangent, and random weights (u, w) for
the second-order check, for one (rank, mode, padding_mode, align_corners,
dtype) combination.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
DTYPES = (np.float32, np.float64)


def stable_seed(*parts) -> int:
  """A seed from the parts' text that is the same in every run.

  (``hash`` of a string differs between processes, so a failing case drawn
  from it could not be drawn again.)
  """
  return zlib.crc32(repr(parts).encode())


def torch_supports(ndim: int, mode: str) -> bool:
  """Released PyTorch rejects bicubic on 5-D input (our tricubic goes further)."""
  return not (ndim == 3 and mode == "bicubic")


def combinations(ndims=(2, 3)):
  """Every (ndim, mode, padding_mode, align_corners) PyTorch supports."""
  for ndim, mode, padding, ac in itertools.product(ndims, MODES, PADDINGS, (True, False)):
    if torch_supports(ndim, mode):
      yield ndim, mode, padding, ac


def hard_values(size: int, align_corners: bool) -> np.ndarray:
  """Grid values where the derivative or the padding changes, for one axis."""
  i = np.arange(-1, size + 1, dtype=np.float64)
  if align_corners:
    centres = 2 * i / max(size - 1, 1) - 1
    edges = (2 * i + 1) / max(size - 1, 1) - 1
  else:
    centres = (2 * i + 1) / size - 1
    edges = 2 * i / size - 1
  planes = np.array([-1.0, 1.0, -3.0, 3.0, 5.0, -5.0])
  far = np.array([1e6, -1e6, 1e3, -37.5, 0.0])
  return np.concatenate([centres, edges, planes, far])


def make_case(rng, ndim, mode, padding, align_corners, dtype, hard_fraction=0.5):
  """Random shapes (with size-1 axes now and then) and arrays for one combination."""
  batch = int(rng.integers(1, 3))
  channels = int(rng.integers(1, 4))
  in_shape = tuple(int(s) for s in rng.choice([1, 2, 3, 4, 5, 7], size=ndim))
  out_shape = tuple(int(s) for s in rng.choice([1, 2, 3, 5], size=ndim))
  inp = rng.standard_normal((batch, channels) + in_shape).astype(dtype)
  grid = rng.uniform(-1.3, 1.3, (batch,) + out_shape + (ndim,))
  # grid component k indexes spatial axis ndim - 1 - k (x is the last axis).
  for k in range(ndim):
    pool = hard_values(in_shape[ndim - 1 - k], align_corners)
    mask = rng.random(grid.shape[:-1]) < hard_fraction
    grid[..., k] = np.where(mask, rng.choice(pool, size=grid.shape[:-1]), grid[..., k])
  grid = grid.astype(dtype)
  grad_out = rng.standard_normal((batch, channels) + out_shape).astype(dtype)
  u = rng.standard_normal(inp.shape).astype(dtype)
  w = rng.standard_normal(grid.shape).astype(dtype)
  return dict(inp=inp, grid=grid, grad_out=grad_out, u=u, w=w)


def make_far_reflection_case(rng, ndim, dtype):
  """x far outside a 731-pixel row (reflection padding's hard case), random y (and z).

  There the fold's product, flips x span, is inexact in float32, so one
  rounding more or less than PyTorch's moves the remainder across a
  reflection plane; the small shapes of make_case keep that product exact.
  """
  spatial = (2, 731) if ndim == 2 else (2, 2, 731)
  inp = rng.standard_normal((1, 1) + spatial).astype(dtype)
  grid = rng.uniform(-1, 1, (1,) + (1,) * (ndim - 1) + (96, ndim))
  far = np.array([1e6, -1e6, 3.3e5, -2.7e5, 4.1e4, -6.5e4])
  grid[..., 0] = rng.choice(far, size=grid.shape[:-1]) * rng.uniform(0.5, 1.5, grid.shape[:-1])
  grid = grid.astype(dtype)
  grad_out = rng.standard_normal(inp.shape[:2] + grid.shape[1:-1]).astype(dtype)
  return dict(inp=inp, grid=grid, grad_out=grad_out)


def tolerance(dtype) -> float:
  """Relative tolerance (to the largest reference magnitude, at least 1)."""
  return 2e-5 if np.dtype(dtype) == np.float32 else 1e-10


def assert_close(actual, expected, dtype, what=""):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
  if expected.size == 0:
    return
  scale = max(1.0, float(np.max(np.abs(expected))))
  error = float(np.max(np.abs(actual - expected))) / scale
  assert error <= tolerance(dtype), f"{what}: relative error {error:.3g} > {tolerance(dtype):.1g}"


def load_golden(path):
  """Reads a golden .npz whose keys are ``"<case>/<field>"``: one dict of arrays per case, in order."""
  with np.load(path) as data:
    grouped = {}
    for key in data.files:
      if "/" in key:
        prefix, name = key.split("/")
        grouped.setdefault(prefix, {})[name] = data[key]
  return [grouped[k] for k in sorted(grouped)]
