"""The compiled CPU kernel (implementation="cpu") against the JAX one, and what only it has.

The parity files run both implementations against PyTorch on small grids.
Here the grids are large enough for the kernel's blocks (up to 2048 points),
their SIMD tails and its split over threads, and the checks cover what the
kernel adds: its own vmap and derivative rules, its baseline (non-AVX2)
build, the result's independence of the thread count, and the choice of
implementation.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import cases
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_cpu_kernel

from jaxgridsample import _cpu_kernel, grid_sample
from jaxgridsample._api import choose_implementation

CONFIGS = [(ndim, mode, padding) for ndim, mode, padding in itertools.product((2, 3), cases.MODES, cases.PADDINGS)]


@pytest.fixture(autouse=True)
def _kernel():
  require_cpu_kernel()


def _case(ndim, mode, padding, dtype, num_points, channels=3, batch=2, seed=0):
  rng = np.random.default_rng(cases.stable_seed("cpu-kernel", ndim, mode, padding, np.dtype(dtype).name, seed))
  spatial = (9, 13) if ndim == 2 else (5, 6, 7)
  inp = rng.standard_normal((batch, channels) + spatial).astype(dtype)
  grid = rng.uniform(-1.3, 1.3, (batch, num_points) + (1,) * (ndim - 1) + (ndim,))
  ac = bool(rng.integers(2))
  for k in range(ndim):  # a third of the points on the hard values
    pool = cases.hard_values(spatial[ndim - 1 - k], ac)
    hard = rng.random(grid.shape[:-1]) < 0.3
    grid[..., k] = np.where(hard, rng.choice(pool, size=grid.shape[:-1]), grid[..., k])
  grid[0, 5 % num_points, ..., 0] = np.nan
  grid[-1, 7 % num_points, ..., -1] = np.inf
  cotangent = rng.standard_normal((batch, channels) + grid.shape[1:-1]).astype(dtype)
  return inp, grid.astype(dtype), cotangent, ac


def _forward_and_gradients(inp, grid, cotangent, mode, padding, ac, implementation, channels_last=False):
  def run(i, g, o):
    out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding, ac, channels_last=channels_last,
                                                implementation=implementation), i, g)
    return (out,) + vjp(o)

  return [np.asarray(a) for a in jax.jit(run)(inp, grid, cotangent)]


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("ndim,mode,padding", CONFIGS)
def test_matches_the_xla_implementation_over_many_blocks(ndim, mode, padding, dtype):
  """Two samples of 4099 points: two full blocks and an odd tail per sample, in both layouts."""
  inp, grid, cotangent, ac = _case(ndim, mode, padding, dtype, num_points=4099)
  expected = _forward_and_gradients(inp, grid, cotangent, mode, padding, ac, "xla")
  for channels_last in (False, True):
    args = (np.moveaxis(inp, 1, -1), grid, np.moveaxis(cotangent, 1, -1)) if channels_last else (inp, grid, cotangent)
    ours = _forward_and_gradients(*args, mode, padding, ac, "cpu", channels_last=channels_last)
    if channels_last:
      ours = [np.moveaxis(ours[0], -1, 1), np.moveaxis(ours[1], -1, 1), ours[2]]
    for what, a, b in zip(("out", "grad_input", "grad_grid"), ours, expected):
      cases.assert_close(a, b, dtype, what=f"{what} channels_last={channels_last}")


@pytest.mark.parametrize("padding", cases.PADDINGS)
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_interleaved_forward_gives_the_bits_of_one_channel_at_a_time(padding, channels):
  """Bilinear float32 with 2 to 4 channels reads a pixel-major copy of each sample; one channel reads its plane.

  The two passes make the same sums in the same order, so they must agree to
  the bit: on the hard values, non-finite grid values, and infinite pixels
  (whose zero-weight products are NaN in both, and which an outside tap must
  not reach).
  """
  rng = np.random.default_rng(cases.stable_seed("interleaved", padding, channels))
  # Odd sizes: the copy's and the points' tails. 4 samples: whole samples per unit on an even thread count.
  # Planes beyond 4 MiB and a quarter as many points: on Intel, 2 or 3 channels whose planes fit in L2 read
  # the planes instead, and fewer points than a quarter of the pixels never copy.
  batch, spatial, num_points = 4, (723, 731), 132131
  inp = rng.standard_normal((batch, channels) + spatial).astype(np.float32)
  inp[0, 1, 0, 0], inp[0, 0, -1, -1], inp[1, -1, 5, -1] = np.inf, -np.inf, np.nan  # the last sample stays finite
  inp[0, :, 7, 0] = np.inf  # where a run that starts on the last pixel of row 6 would spill over
  for ac in (False, True):
    grid = rng.uniform(-1.3, 1.3, (batch, num_points, 1, 2))
    for k in range(2):
      hard = rng.random(grid.shape[:-1]) < 0.4
      grid[..., k] = np.where(hard, rng.choice(cases.hard_values(spatial[1 - k], ac), size=grid.shape[:-1]),
                              grid[..., k])
    grid[0, :4, 0] = [[np.nan, 0.0], [np.inf, 0.5], [-np.inf, -np.inf], [0.25, np.nan]]
    grid = grid.astype(np.float32)
    sample = jax.jit(lambda i, g, ac=ac: grid_sample(i, g, "bilinear", padding, ac, implementation="cpu"))
    together = np.asarray(sample(inp, grid))
    alone = np.concatenate([np.asarray(sample(inp[:, c:c + 1], grid)) for c in range(channels)], axis=1)
    np.testing.assert_array_equal(together, alone)
    reference = np.asarray(grid_sample(inp[-1:], grid[-1:], "bilinear", padding, ac, implementation="xla"))
    cases.assert_close(together[-1:], reference, np.float32, what="out")



def _pixel_major_inputs(rng, ndim, batch, channels, upsampling=False):
  """Inputs for the pixel-major tests: odd sizes (the copy's and the points' tails), an infinite and a NaN
  pixel in the first sample, and, per align_corners, a grid with hard and non-finite values; with
  ``upsampling``, about 2.5 times as many points as pixels."""
  spatial, num_points = ((23, 41), 1031) if ndim == 2 else ((5, 7, 9), 331)
  if upsampling:
    num_points = 5 * math.prod(spatial) // 2 + 3
  inp = rng.standard_normal((batch, channels) + spatial).astype(np.float32)
  corner = (0,) * ndim
  inp[(0, 1) + corner], inp[(0, -1) + corner[:-1] + (-1,)] = np.inf, np.nan

  def grid_for(ac):
    grid = rng.uniform(-1.3, 1.3, (batch, num_points) + (1,) * (ndim - 1) + (ndim,))
    for k in range(ndim):
      hard = rng.random(grid.shape[:-1]) < 0.4
      grid[..., k] = np.where(hard, rng.choice(cases.hard_values(spatial[ndim - 1 - k], ac), size=grid.shape[:-1]),
                              grid[..., k])
    grid.reshape(batch, -1, ndim)[0, :3] = [[np.nan] + [0.0] * (ndim - 1), [np.inf] * ndim, [-np.inf] * ndim]
    return grid.astype(np.float32)

  return inp, grid_for


# (mode, ndim, batch, channels): from each family's fewest channels on (on Intel, nearest with 3 channels in L2
# reads its planes instead; the test then checks that pass).
PIXEL_MAJOR_CASES = [
  ("nearest", 2, 1, 3), ("nearest", 2, 3, 9), ("nearest", 3, 1, 8), ("nearest", 3, 3, 17),
  ("bilinear", 2, 1, 5), ("bilinear", 2, 2, 17), ("bilinear", 3, 3, 6),
  ("bicubic", 2, 3, 4), ("bicubic", 3, 1, 9),
]


@pytest.mark.parametrize("padding", cases.PADDINGS)
@pytest.mark.parametrize("mode,ndim,batch,channels", PIXEL_MAJOR_CASES)
def test_pixel_major_forward_gives_the_bits_of_one_channel_at_a_time(padding, mode, ndim, batch, channels):
  """Float32 with a few channels or more reads a pixel-major copy of each sample; one channel reads its plane.

  The two make the same sums in the same order, so they must agree to the
  bit: on the hard values, non-finite grid values, and infinite and NaN
  pixels (which an outside tap must not reach). Batch 1 copies the sample
  with all threads, larger batches a sample per thread; channel counts that
  are not a multiple of 8 leave zero padding in the copy.
  """
  rng = np.random.default_rng(cases.stable_seed("pixel-major", padding, mode, ndim, batch, channels))
  inp, grid_for = _pixel_major_inputs(rng, ndim, batch, channels)
  for ac in (False, True):
    grid = grid_for(ac)
    sample = jax.jit(lambda i, g, ac=ac: grid_sample(i, g, mode, padding, ac, implementation="cpu"))
    together = np.asarray(sample(inp, grid))
    alone = np.concatenate([np.asarray(sample(inp[:, c:c + 1], grid)) for c in range(channels)], axis=1)
    np.testing.assert_array_equal(together, alone)
    finite = inp[-1:] if batch > 1 else np.nan_to_num(inp, nan=0.5, posinf=2.0)
    reference = np.asarray(grid_sample(finite, grid[-1:], mode, padding, ac, implementation="xla"))
    cases.assert_close(np.asarray(sample(finite, grid[-1:])), reference, np.float32, what="out")


@pytest.mark.parametrize("padding", cases.PADDINGS)
@pytest.mark.parametrize("mode,ndim,channels,batch,upsampling", [
    ("nearest", 2, 9, 4, False), ("nearest", 2, 9, 2, False), ("nearest", 3, 6, 2, False),
    ("bilinear", 2, 5, 4, False), ("bilinear", 3, 17, 4, False), ("bicubic", 2, 4, 4, False),
    ("bicubic", 3, 9, 4, False), ("bilinear", 2, 9, 2, True), ("bilinear", 3, 5, 1, True),
    ("bicubic", 2, 4, 2, True)])
def test_pixel_major_backward_gives_the_bits_of_one_channel_at_a_time(padding, mode, ndim, channels, batch,
                                                                        upsampling):
  """With 4 samples or more the float32 backward also works on pixel-major copies; one channel reads its planes.

  So does nearest with as many samples as threads (2 on CI), and bilinear
  and bicubic with any number of samples where the points outnumber the
  pixels twice over (upsampling). grad_input,
  channel by channel, must be the same bits. The grid gradient is the
  channels' terms added in channel order, starting from zero, so it must
  equal, to the bit, the one-channel grid gradients added up in that order.
  """
  upsampled = ("upsampling",) if upsampling else ()  # the other cases keep their seeds
  rng = np.random.default_rng(cases.stable_seed("pixel-major-backward", padding, mode, ndim, channels, batch,
                                                *upsampled))
  inp, grid_for = _pixel_major_inputs(rng, ndim, batch, channels, upsampling)
  for ac in (False, True):
    grid = grid_for(ac)
    cotangent = rng.standard_normal((batch, channels) + grid.shape[1:-1]).astype(np.float32)

    @jax.jit
    def gradients(i, g, o, ac=ac):
      _, vjp = jax.vjp(lambda x, y: grid_sample(x, y, mode, padding, ac, implementation="cpu"), i, g)
      return vjp(o)

    grad_input, grad_grid = (np.asarray(v) for v in gradients(inp, grid, cotangent))
    alone = [[np.asarray(v) for v in gradients(inp[:, c:c + 1], grid, cotangent[:, c:c + 1])] for c in range(channels)]
    np.testing.assert_array_equal(grad_input, np.concatenate([parts[0] for parts in alone], axis=1))
    summed = np.zeros_like(grad_grid)
    for _, part in alone:
      summed = summed + part
    np.testing.assert_array_equal(grad_grid, summed)


@pytest.mark.parametrize("padding", ["border", "reflection"])
@pytest.mark.parametrize("spatial", [(9, 13), (6, 3), (2, 2), (1, 7), (3, 4, 5), (2, 3, 2)], ids=str)
def test_folded_cubic_runs_give_the_bits_of_gathers(spatial, padding):
  """Regrouping the points must move each point's results, to the bit.

  Bicubic float32 under border or reflection padding reads each row of x
  taps of 8 points as runs of 4 pixels, folded back into tap order where
  padding repeats or reverses them (near an edge, and outside); a group with
  a point whose taps do not fit in 4 pixels (so far out that the float
  spacing exceeds a pixel) reads with gathers, and so does a plane of fewer
  than 4 pixels. Shuffling the points puts them in other groups, so a point
  is read one way, then another. The output and the grid gradient are sums
  per point (grad_input's are in point order, so it is compared closely).
  """
  ndim = len(spatial)
  rng = np.random.default_rng(cases.stable_seed("folded-runs", padding, *spatial))
  batch, channels, num_points = 2, 3, 1027
  inp = rng.standard_normal((batch, channels) + spatial).astype(np.float32)
  inp[0, 1].flat[0] = np.inf  # a NaN in every tap sum that reads it, on either path
  for ac in (False, True):
    grid = rng.uniform(-1.3, 1.3, (batch, num_points, ndim))
    for k in range(ndim):
      hard = rng.random(grid.shape[:-1]) < 0.4
      grid[..., k] = np.where(hard, rng.choice(cases.hard_values(spatial[ndim - 1 - k], ac), size=grid.shape[:-1]),
                              grid[..., k])
    far = rng.random(grid.shape[:-1]) < 0.01
    grid[..., 0] = np.where(far, rng.choice([1e6, -3.3e5, 4.1e4], size=far.shape) * rng.uniform(0.5, 1.5, far.shape),
                            grid[..., 0])
    grid[0, :3] = [[np.nan] + [0.0] * (ndim - 1), [np.inf] * ndim, [-np.inf] * ndim]
    grid = grid.astype(np.float32)[:, :, None] if ndim == 2 else grid.astype(np.float32)[:, :, None, None]
    cotangent = rng.standard_normal((batch, channels) + grid.shape[1:-1]).astype(np.float32)

    @jax.jit
    def run(i, g, o, ac=ac):
      out, vjp = jax.vjp(lambda x, y: grid_sample(x, y, "bicubic", padding, ac, implementation="cpu"), i, g)
      return (out,) + vjp(o)

    out, grad_input, grad_grid = (np.asarray(v) for v in run(inp, grid, cotangent))
    order = rng.permutation(num_points)
    shuffled = [np.asarray(v) for v in run(inp, grid[:, order], cotangent[:, :, order])]
    np.testing.assert_array_equal(shuffled[0], out[:, :, order])
    np.testing.assert_array_equal(shuffled[2], grad_grid[:, order])
    np.testing.assert_allclose(shuffled[1], grad_input, rtol=1e-5, atol=1e-4)
    finite = np.isfinite(inp).all(axis=tuple(range(1, inp.ndim)))  # the samples without the inf pixel
    expected = jax.vjp(lambda x, y, ac=ac: grid_sample(x, y, "bicubic", padding, ac, implementation="xla"),
                       inp[finite], grid[finite])
    for what, a, b in zip(("out", "grad_input", "grad_grid"), (out[finite], grad_input[finite], grad_grid[finite]),
                          (expected[0], *expected[1](cotangent[finite]))):
      cases.assert_close(a, b, np.float32, what=what)


def test_vmap_folds_the_mapped_axis_into_the_batch():
  inp, grid, cotangent, ac = _case(2, "bilinear", "border", np.float64, num_points=37)
  stacked_grid = np.stack([grid, grid[::-1], grid * 0.5])

  def f(x, g):
    return grid_sample(x, g, "bilinear", "border", ac, implementation="cpu")

  mapped = jax.jit(jax.vmap(f, in_axes=(None, 0)))(inp, stacked_grid)
  for k in range(3):
    np.testing.assert_array_equal(np.asarray(mapped[k]), np.asarray(f(inp, stacked_grid[k])))
  grads = jax.vmap(jax.grad(lambda x, g: jnp.sum(f(x, g) * cotangent), (0, 1)), in_axes=(None, 0))(inp, stacked_grid)
  for k in range(3):
    single = jax.grad(lambda x, g: jnp.sum(f(x, g) * cotangent), (0, 1))(inp, stacked_grid[k])
    for a, b in zip(grads, single):
      np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("mode", cases.MODES)
def test_second_order_and_forward_over_reverse_use_the_xla_formulas(mode):
  """The compiled backward's own derivatives are the XLA backward's: grad of grad and jacfwd of grad agree."""
  inp, grid, cotangent, ac = _case(2, mode, "zeros", np.float64, num_points=6, batch=1, channels=2)
  weights = np.random.default_rng(1).standard_normal(inp.shape)

  def second(implementation):
    def loss(x, g):
      return jnp.sum(grid_sample(x, g, mode, "zeros", ac, implementation=implementation) * cotangent)

    def first(x, g):
      grad_x, grad_g = jax.grad(loss, (0, 1))(x, g)
      return jnp.sum(grad_x * weights) + jnp.sum(grad_g ** 2)

    finite = np.nan_to_num(grid, nan=0.25, posinf=0.5)
    reverse = jax.grad(first, (0, 1))(inp, finite)
    forward_over_reverse = jax.jacfwd(lambda g: jax.grad(loss, 1)(inp, g))(finite)
    return [np.asarray(a) for a in (*reverse, forward_over_reverse)]

  for a, b in zip(second("cpu"), second("xla")):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_results_are_bit_identical_run_to_run():
  inp, grid, cotangent, ac = _case(3, "bilinear", "reflection", np.float32, num_points=5000, channels=5, batch=3)
  first = _forward_and_gradients(inp, grid, cotangent, "bilinear", "reflection", ac, "cpu")
  jax.clear_caches()
  second = _forward_and_gradients(inp, grid, cotangent, "bilinear", "reflection", ac, "cpu")
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_concurrent_calls_from_several_threads_agree_with_one_call():
  # The kernel's worker threads serve one call at a time; the others run on
  # their callers' threads alone. Every thread must still get the full answer.
  from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

  inp, grid, cotangent, ac = _case(2, "bicubic", "border", np.float32, num_points=6000, channels=4, batch=3)
  expected = _forward_and_gradients(inp, grid, cotangent, "bicubic", "border", ac, "cpu")
  run = jax.jit(lambda i, g, o: jax.vjp(lambda a, b: grid_sample(a, b, "bicubic", "border", ac), i, g)[1](o))
  forward = jax.jit(lambda i, g: grid_sample(i, g, "bicubic", "border", ac))
  with ThreadPoolExecutor(4) as threads:
    results = list(threads.map(lambda _: (forward(inp, grid), *run(inp, grid, cotangent)), range(16)))
  for result in results:
    for got, want in zip(result, expected):
      np.testing.assert_array_equal(np.asarray(got), want)


@contextlib.contextmanager
def _busy_cores():
  """One busy-looping process per core this process may run on, for the block's duration.

  Each loop also ends by itself after 15 minutes, so that none outlives a
  test run that is killed.
  """
  spin = "import time\nend = time.time() + 900\nwhile time.time() < end: pass"
  spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(len(os.sched_getaffinity(0)))]
  try:
    yield
  finally:
    for spinner in spinners:
      spinner.kill()
      spinner.wait()


def test_results_are_the_same_bits_while_other_processes_load_every_core():
  """Under contention a thread may run another thread's units (Workers::Run).

  Busy processes on every core slow the kernel's threads unevenly, so units
  change hands; batches of 3 split a sample's units between two ranges. The
  copies of the interleaved and pixel-major forwards, and every sum, must
  not depend on which thread runs what.
  """
  configs = [(2, "bilinear", "zeros", 4), (2, "bilinear", "reflection", 8), (3, "bilinear", "border", 8),
             (2, "nearest", "zeros", 16), (2, "bicubic", "border", 5)]
  cases_and_expected = []
  for ndim, mode, padding, channels in configs:
    inp, grid, cotangent, ac = _case(ndim, mode, padding, np.float32, num_points=6000, channels=channels, batch=3)
    expected = _forward_and_gradients(inp, grid, cotangent, mode, padding, ac, "cpu")
    reference = _forward_and_gradients(inp, grid, cotangent, mode, padding, ac, "xla")
    for what, a, b in zip(("out", "grad_input", "grad_grid"), expected, reference):
      cases.assert_close(a, b, np.float32, what=f"{what} {ndim}-D {mode} {padding}")
    cases_and_expected.append(((inp, grid, cotangent, mode, padding, ac), expected))
  with _busy_cores():
    for _ in range(3):
      for args, expected in cases_and_expected:
        for got, want in zip(_forward_and_gradients(*args, "cpu"), expected):
          np.testing.assert_array_equal(got, want)


def test_the_default_is_the_kernel_on_cpu_and_the_choice_is_checked():
  assert jax.default_backend() == "cpu"
  assert choose_implementation(None, (4, 4)) == "cpu"
  assert choose_implementation("xla", (4, 4)) == "xla"
  assert choose_implementation(None, (2**16, 2**16)) == "xla"  # beyond the kernel's int32 pixel offsets
  with pytest.raises(ValueError, match=r"expected implementation to be None or one of 'xla', 'cpu', but got: 'gpu'"):
    grid_sample(jnp.ones((1, 1, 2, 2)), jnp.zeros((1, 1, 1, 2)), implementation="gpu")
  with pytest.raises(ValueError, match="at most 1073741823 pixels per channel"):
    choose_implementation("cpu", (2**16, 2**16))


_SUBPROCESS_CHECK = """
import json, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxgridsample import _cpu_kernel, grid_sample
report = {"isa": _cpu_kernel._loaded()[0], "reason": _cpu_kernel.unavailable_reason(), "results": {}}
try:
  grid_sample(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 1, 2)), implementation="cpu")
except ValueError as error:
  report["cpu_error"] = str(error)
rng = np.random.default_rng(0)
for ndim, mode, padding in json.loads(sys.argv[1]):
  spatial = (9, 13) if ndim == 2 else (5, 6, 7)
  inp = rng.standard_normal((2, 3) + spatial)
  grid = rng.uniform(-1.3, 1.3, (2, 2500) + (1,) * (ndim - 1) + (ndim,))
  cot = rng.standard_normal((2, 3, 2500) + (1,) * (ndim - 1))
  out, vjp = jax.vjp(lambda a, b: grid_sample(a, b, mode, padding), inp, grid)
  report["results"][f"{ndim}-{mode}-{padding}"] = [np.asarray(a).tolist() for a in (out, *vjp(cot))]
print(json.dumps(report))
"""


def _run_elsewhere(environment, configs, prefix=()):
  env = dict(os.environ, **environment)
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([*prefix, sys.executable, "-c", _SUBPROCESS_CHECK, json.dumps(configs)],
                          capture_output=True, text=True, timeout=600, env=env, check=False,
                          cwd=pathlib.Path(__file__).parent)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_baseline_build_and_one_thread_give_the_same_numbers():
  """The generic (non-AVX2) build, and the kernel pinned to one core, against the default process.

  The work split depends on the thread count, but no sum does: each
  channel's grad_input and each point's grid gradient is accumulated by one
  thread in a fixed order.
  """
  configs = [[2, "bilinear", "zeros"], [2, "bicubic", "reflection"], [3, "bilinear", "border"],
             [3, "nearest", "zeros"], [3, "bicubic", "zeros"]]
  default = _run_elsewhere({}, configs)
  if default["isa"] == "avx2":
    generic = _run_elsewhere({_cpu_kernel.ENVIRONMENT_VARIABLE: "generic"}, configs)
    assert generic["isa"] == "generic"
    for key, arrays in default["results"].items():
      for a, b in zip(arrays, generic["results"][key]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-13, atol=1e-13, err_msg=key)
  if shutil.which("taskset") and len(os.sched_getaffinity(0)) > 1:
    one_core = _run_elsewhere({}, configs, prefix=("taskset", "-c", "0"))
    for key, arrays in default["results"].items():
      for a, b in zip(arrays, one_core["results"][key]):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=key)


_REPEATED_CALLS = """
import sys
import jax, numpy as np
from jaxgridsample import grid_sample
rng = np.random.default_rng(1)
inp = rng.standard_normal((4, 3, 96, 96)).astype(np.float32)
grid = rng.uniform(-1.2, 1.2, (4, 96, 96, 2)).astype(np.float32)
cot = rng.standard_normal((4, 3, 96, 96)).astype(np.float32)
run = jax.jit(lambda i, g, o: (grid_sample(i, g), *jax.vjp(lambda a, b: grid_sample(a, b), i, g)[1](o)))
first = [np.asarray(a) for a in run(inp, grid, cot)]
for _ in range(40):
  for a, b in zip(first, run(inp, grid, cot)):
    np.testing.assert_array_equal(np.asarray(b), a)
np.savez(sys.argv[1], inp=inp, grid=grid, cot=cot, out=first[0], grad_inp=first[1], grad_grid=first[2])
"""


def test_calls_on_busy_cores_neither_hang_nor_change_results(tmp_path):
  """With every core also running a busy loop, a kernel worker is often preempted in its units.

  The caller then pulls it onto its own core and sleeps until it is done
  (Workers::WaitForWorkers); this must always come back, with the same
  numbers as on idle cores.
  """
  with _busy_cores():
    result = subprocess.run([sys.executable, "-c", _REPEATED_CALLS, str(tmp_path / "busy.npz")],
                            capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  busy = np.load(tmp_path / "busy.npz")
  out, vjp = jax.vjp(lambda a, b: grid_sample(a, b), busy["inp"], busy["grid"])
  for name, want in zip(("out", "grad_inp", "grad_grid"), (out, *vjp(busy["cot"]))):
    np.testing.assert_array_equal(busy[name], np.asarray(want), err_msg=name)


def test_switched_off_kernel_falls_back_and_says_why():
  report = _run_elsewhere({_cpu_kernel.ENVIRONMENT_VARIABLE: "off"}, [[2, "bilinear", "zeros"]])
  assert report["isa"] is None and report["reason"] == f"{_cpu_kernel.ENVIRONMENT_VARIABLE}=off"
  assert "implementation='cpu' needs the compiled CPU kernel" in report["cpu_error"]
  assert report["results"]  # the default ran, on the XLA implementation
