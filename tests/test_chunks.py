"""The XLA backward walks each sample's points in chunks; its results must not depend on the chunking.

The default chunk budget (about 1 MiB of temporaries) puts the small grids of the other tests in one
chunk. Here the budget is shrunk so that the points split into nine chunks plus a remainder, which
exercises the loop that prepares each chunk's taps (and, for bicubic and tricubic, its transposed
incoming gradient) one iteration ahead, against the one-chunk result and against the NumPy reference.
A far-outside point and a NaN incoming gradient sit in the first chunk.
"""

from __future__ import annotations

import itertools
import re

import cases
import jax
import numpy as np
import pytest
from numpy_reference import grad_input_ref

from jaxgridsample import _autodiff, _kernel, grid_sample

NUM_POINTS = 64 * 9 + 17  # nine full chunks of the smallest size (64 points) and a remainder
CONFIGS = list(itertools.product((2, 3), ("bilinear", "nearest", "bicubic"), ("zeros", "border", "reflection")))


def _case(ndim, mode, padding):
  rng = np.random.default_rng(cases.stable_seed(ndim, mode, padding))
  spatial = (5, 6) if ndim == 2 else (3, 4, 5)
  inp = rng.standard_normal((2, 3) + spatial)
  grid = rng.uniform(-1.2, 1.2, (2, NUM_POINTS) + (1,) * (ndim - 1) + (ndim,))
  grid[0, 0] = 7.0  # far outside, in the first chunk
  cotangent = rng.standard_normal((2, 3, NUM_POINTS) + (1,) * (ndim - 1))
  cotangent[0, 1, 1] = np.nan  # a non-finite incoming gradient in the first chunk
  return inp, grid, cotangent


def _gradients(inp, grid, cotangent, mode, padding):
  _, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding, False, implementation="xla"), inp, grid)
  return [np.asarray(g) for g in vjp(cotangent)]


@pytest.mark.parametrize("ndim,mode,padding", CONFIGS)
def test_many_chunks_match_one_chunk(ndim, mode, padding, monkeypatch):
  _assert_chunking_invariant(ndim, mode, padding, monkeypatch)


@pytest.mark.parametrize("ndim,padding", list(itertools.product((2, 3), ("zeros", "border", "reflection"))))
def test_many_chunks_with_incoming_gradient_transposed_before_loop(ndim, padding, monkeypatch):
  # From _autodiff.ROWS_BEFORE_LOOP_CHANNELS channels, the linear backward
  # slices each chunk's channel rows out of one transposed copy of the
  # incoming gradient; a threshold of one channel takes that path here.
  jax.clear_caches()
  monkeypatch.setattr(_autodiff, "ROWS_BEFORE_LOOP_CHANNELS", 1)
  _assert_chunking_invariant(ndim, "bilinear", padding, monkeypatch)


def _assert_chunking_invariant(ndim, mode, padding, monkeypatch):
  with jax.enable_x64(True):
    inp, grid, cotangent = _case(ndim, mode, padding)
    one_chunk = _gradients(inp, grid, cotangent, mode, padding)
    # The chunk size is read while tracing: drop the traces cached for these shapes before and after.
    jax.clear_caches()
    monkeypatch.setattr(_autodiff, "BACKWARD_CHUNK_BYTES", 1)  # the smallest chunk: 64 points
    try:
      many_chunks = _gradients(inp, grid, cotangent, mode, padding)
    finally:
      jax.clear_caches()
  for single, chunked in zip(one_chunk, many_chunks):
    np.testing.assert_allclose(chunked, single, rtol=1e-12, atol=1e-12)
  grad_input, grad_grid = many_chunks
  with np.errstate(invalid="ignore"):  # the NaN cotangent times zero-weight taps
    expected = grad_input_ref(inp.shape, grid, cotangent, mode, padding, False)
  np.testing.assert_allclose(grad_input, expected, rtol=0, atol=1e-10 * np.nansum(np.abs(cotangent)))
  # Only the point with the NaN cotangent has a non-finite grid gradient (the far point's is 0).
  flat = grad_grid.reshape(2, NUM_POINTS, ndim)
  assert np.isnan(flat[0, 1]).any() or mode == "nearest"
  finite = np.ones((2, NUM_POINTS), bool)
  finite[0, 1] = False
  assert np.isfinite(flat[finite]).all()
  assert (flat[0, 0] == 0).all() or padding != "zeros"


@pytest.mark.parametrize("ndim,mode", [(2, "bilinear"), (2, "nearest"), (3, "nearest")])
def test_per_axis_indices_match_flat_indices(ndim, mode, monkeypatch):
  # The forward reads 2-D bilinear (4+ channels) and nearest taps by flat
  # pixel index, except in inputs of 2**31 pixels or more, which keep
  # per-axis indices. A limit of one pixel takes that path here.
  padding = "reflection"
  with jax.enable_x64(True):
    inp, grid, cotangent = _case(ndim, mode, padding)
    cotangent[0, 1, 1] = 0.5  # the NaN of _case would make the comparison vacuous at that point
    inp = np.concatenate([inp, inp[:, :2] * 0.5], axis=1)  # 5 channels
    cotangent = np.concatenate([cotangent, cotangent[:, :2]], axis=1)

    def forward_and_gradients():
      out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding, False, implementation="xla"), inp, grid)
      return [np.asarray(a) for a in (out, *vjp(cotangent))]

    def gather_index_maps():
      sample = jax.jit(lambda a, b: grid_sample(a, b, mode, padding, False, implementation="xla"))
      program = sample.lower(inp, grid).as_text()
      return set(re.findall(r"start_index_map = \[([0-9, ]*)\]", program))

    flat, flat_maps = forward_and_gradients(), gather_index_maps()
    jax.clear_caches()
    monkeypatch.setattr(_kernel, "FLAT_INDEX_LIMIT", 1)
    try:
      per_axis, per_axis_maps = forward_and_gradients(), gather_index_maps()
    finally:
      jax.clear_caches()
  # One index component (the batch is a batching dimension), then one per spatial axis.
  assert flat_maps == {"2"} and per_axis_maps == {", ".join(str(d) for d in range(2, ndim + 2))}
  for a, b in zip(flat, per_axis):
    np.testing.assert_array_equal(a, b)
