"""A sweep of shapes that bench.py does not time, against PyTorch's CPU kernel.

bench.py times the issue's six workloads and eight extras; choices tuned on
those can still lose elsewhere. This script times sixteen other common
shapes (spatial transformers, optical flow, registration volumes, upsampling,
NeRF lookups, small nearest maps) the way a quick comparison script would:
every competitor runs a block of ``--calls`` calls in a row, timed as a
whole, and the order of the four competitors (our forward and
forward+backward, torch's) is shuffled afresh in each repetition, with no
pause. The loss of forward+backward is ``.sum()`` on both sides. Prints a
Markdown table of medians (ms per call) and ratios; ratios below 1 mean
faster than PyTorch.

    python benchmarks/sweep.py [--repeats 15] [--calls 5] [--workloads a,b]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import jax
import numpy as np
import torch
from bench import cpu_model  # this directory's bench.py

import jaxgridsample as jgs

# name, input shape, output spatial shape, mode, padding_mode, align_corners
SHAPES = (
    ("stn_mnist", (32, 1, 28, 28), (28, 28), "bilinear", "zeros", False),
    ("small_ac", (16, 3, 64, 64), (64, 64), "bilinear", "zeros", True),
    ("image_512", (1, 3, 512, 512), (512, 512), "bilinear", "border", False),
    ("features_64c", (4, 64, 64, 64), (64, 64), "bilinear", "zeros", False),
    ("deform_256c", (2, 256, 32, 32), (32, 32), "bilinear", "zeros", False),
    ("image_224_reflect", (8, 3, 224, 224), (224, 224), "bilinear", "reflection", False),
    ("nearest_border", (4, 16, 128, 128), (128, 128), "nearest", "border", False),
    ("bicubic_image", (2, 4, 256, 256), (256, 256), "bicubic", "zeros", False),
    ("trilinear_small", (1, 8, 32, 32, 32), (32, 32, 32), "bilinear", "zeros", False),
    ("registration_1ch", (2, 1, 64, 64, 64), (64, 64, 64), "bilinear", "border", True),
    ("nerf_points", (1, 32, 128, 128), (1, 65536), "bilinear", "border", True),
    ("upsample_2x", (2, 32, 64, 64), (128, 128), "bilinear", "zeros", False),
    ("nearest_ac", (4, 8, 96, 96), (96, 96), "nearest", "zeros", True),
    ("nearest_3d", (2, 16, 24, 24, 24), (24, 24, 24), "nearest", "zeros", False),
    ("flow_2ch", (8, 2, 128, 128), (128, 128), "bilinear", "border", True),
    ("bicubic_reflect", (4, 3, 96, 96), (96, 96), "bicubic", "reflection", True),
)


def competitors(input_shape, out_spatial, mode, padding_mode, align_corners, seed):
  """The four callables (each blocks until its result is ready) on one random case."""
  rng = np.random.default_rng(seed)
  ndim = len(input_shape) - 2
  x = rng.standard_normal(input_shape).astype(np.float32)
  grid = rng.uniform(-1.05, 1.05, (input_shape[0],) + tuple(out_spatial) + (ndim,)).astype(np.float32)
  kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
  xj, gj = jax.numpy.asarray(x), jax.numpy.asarray(grid)
  forward = jax.jit(lambda a, b: jgs.grid_sample(a, b, **kwargs))
  value_and_grad = jax.jit(jax.value_and_grad(lambda a, b: jgs.grid_sample(a, b, **kwargs).sum(), argnums=(0, 1)))
  xt, gt = torch.tensor(x), torch.tensor(grid)
  xr, gr = xt.clone().requires_grad_(), gt.clone().requires_grad_()
  sample = torch.nn.functional.grid_sample

  def torch_forward():
    with torch.no_grad():
      sample(xt, gt, **kwargs)

  def torch_forward_backward():
    xr.grad = gr.grad = None
    sample(xr, gr, **kwargs).sum().backward()

  return {
      "jgs_fwd": lambda: forward(xj, gj).block_until_ready(),
      "jgs_fb": lambda: jax.block_until_ready(value_and_grad(xj, gj)),
      "torch_fwd": torch_forward,
      "torch_fb": torch_forward_backward,
  }


def time_blocks(fns: dict, repeats: int, calls: int, seed: int) -> dict[str, float]:
  """Median seconds per call over ``repeats`` shuffled rounds of ``calls``-call blocks."""
  for fn in fns.values():
    for _ in range(3):
      fn()
  order = random.Random(seed)
  samples = {name: [] for name in fns}
  for _ in range(repeats):
    names = list(fns)
    order.shuffle(names)
    for name in names:
      start = time.perf_counter()
      for _ in range(calls):
        fns[name]()
      samples[name].append((time.perf_counter() - start) / calls)
  return {name: statistics.median(values) for name, values in samples.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--calls", type=int, default=5, help="calls per timed block")
  parser.add_argument("--workloads", default=None, help="comma-separated subset of: " +
                      ",".join(s[0] for s in SHAPES))
  args = parser.parse_args(argv)
  selected = SHAPES
  if args.workloads:
    wanted = set(args.workloads.split(","))
    unknown = sorted(wanted - {s[0] for s in SHAPES})
    if unknown:
      parser.error(f"unknown workload(s) {', '.join(unknown)}")
    selected = [s for s in SHAPES if s[0] in wanted]
  torch.set_num_threads(os.cpu_count() or 1)  # as many threads as JAX's CPU client uses
  print(f"{time.strftime('%Y-%m-%d %H:%M')}; {cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); float32; {args.repeats} shuffled rounds "
        f"of {args.calls}-call blocks; ms per call (ratio to torch)\n")
  print("| shape | input → output | mode, padding | jgs fwd | torch fwd | ratio | jgs fwd+bwd | torch fwd+bwd "
        "| ratio |")
  print("|---|---|---|---|---|---|---|---|---|")
  worst = []
  for i, (name, input_shape, out_spatial, mode, padding, ac) in enumerate(selected):
    t = time_blocks(competitors(input_shape, out_spatial, mode, padding, ac, seed=i), args.repeats, args.calls,
                    seed=i)
    fwd, fb = t["jgs_fwd"] / t["torch_fwd"], t["jgs_fb"] / t["torch_fb"]
    worst.append((max(fwd, fb), name))
    shapes = f"{'×'.join(map(str, input_shape))} → {'×'.join(map(str, out_spatial))}"
    print(f"| {name} | {shapes} | {mode}, {padding}{', ac' if ac else ''} | {t['jgs_fwd'] * 1e3:.3f} | "
          f"{t['torch_fwd'] * 1e3:.3f} | **{fwd:.2f}** | {t['jgs_fb'] * 1e3:.3f} | {t['torch_fb'] * 1e3:.3f} | "
          f"**{fb:.2f}** |", flush=True)
  ratio, name = max(worst)
  print(f"\nworst ratio {ratio:.2f} ({name})")


if __name__ == "__main__":
  main()
