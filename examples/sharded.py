"""Batch-sharded warping over several (forced) CPU devices, with no communication.

XLA is asked for 8 CPU devices (``--xla_force_host_platform_device_count``),
a 1-D ``Mesh`` names them ``"batch"`` and ``NamedSharding(mesh, P("batch"))``
splits images, affine matrices and displacement fields along the batch.
Every sample only reads its own image, so ``jit`` partitions ``grid_sample``,
``warp`` and their gradients into 8 independent programs. The script shows
that:

* the outputs and gradients stay sharded (their ``.sharding`` is printed);
* they equal the single-device results;
* the compiled HLO contains no all-gather, all-reduce, collective-permute,
  all-to-all or reduce-scatter (the verdict is printed).

A figure shows each device's output.

Run:
  python examples/sharded.py            # 8 photos of 256x256
  python examples/sharded.py --quick    # 8 photos of 64x64
"""

from __future__ import annotations

import os

# Must be set before JAX initialises its backends.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import skimage.transform  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxgridsample import (  # noqa: E402
  affine_grid,
  grid_sample,
  warp,  # noqa: E402
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = pathlib.Path(__file__).resolve().parent / "figures"
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def make_batch(size: int, batch: int, seed: int):
  """Photos (batch, 3, size, size), affine maps (batch, 2, 3) and smooth flows (batch, size, size, 2)."""
  photo = skimage.transform.resize(skimage.data.astronaut(), (size, size), anti_aliasing=True)
  images = np.broadcast_to(np.moveaxis(photo, -1, 0), (batch, 3, size, size)).astype(np.float32)
  angles = np.linspace(-40, 40, batch) * np.pi / 180
  zoom = np.linspace(0.8, 1.3, batch)
  theta = np.stack([[zoom * np.cos(angles), -zoom * np.sin(angles), 0.1 * np.sin(3 * angles)],
                    [zoom * np.sin(angles), zoom * np.cos(angles), np.zeros(batch)]]).transpose(2, 0, 1)
  # A wavy displacement field per sample (pixels), its phase varying along the batch.
  rng = np.random.default_rng(seed)
  ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1))
  amplitude = 0.03 * size
  flow = np.stack([amplitude * np.sin(2 * np.pi * ys / size * 3 + phase),
                   amplitude * np.cos(2 * np.pi * xs / size * 2 + phase)], axis=-1)
  return images, theta.astype(np.float32), flow.astype(np.float32)


def collectives_in(compiled) -> list[str]:
  hlo = compiled.as_text()
  return [name for name in COLLECTIVES if name in hlo]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="64x64 photos")
  parser.add_argument("--size", type=int, default=None, help="image side (default 256, quick 64)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", type=pathlib.Path, default=FIGURES / "sharded.png")
  args = parser.parse_args()
  size = args.size or (64 if args.quick else 256)
  start = time.perf_counter()

  devices = jax.devices()
  print(f"{len(devices)} devices: {', '.join(str(d) for d in devices)}")
  mesh = Mesh(np.array(devices), ("batch",))
  batch_sharded = NamedSharding(mesh, P("batch"))
  batch = len(devices)
  images, theta, flow = make_batch(size, batch, args.seed)
  cotangent = np.random.default_rng(args.seed).standard_normal((batch, 3, size, size)).astype(np.float32)

  def rotate(images, theta):
    grid = affine_grid(theta, images.shape)
    return grid_sample(images, grid, "bilinear", "zeros")

  def rotate_grads(images, theta):
    # grad (not value_and_grad): the scalar loss itself would need an all-reduce.
    return jax.grad(lambda x, t: jnp.sum(rotate(x, t) * cotangent), (0, 1))(images, theta)

  def deform(images, flow):
    return warp(images, flow, "bicubic", "reflection")

  def deform_grads(images, flow):
    return jax.grad(lambda x, f: jnp.sum(deform(x, f) * cotangent), (0, 1))(images, flow)

  x, t, f = (jax.device_put(a, batch_sharded) for a in (images, theta, flow))
  all_clear = True
  results = {}
  for name, fn, second in (("grid_sample(affine_grid)", rotate, (theta, t)),
                           ("grad of grid_sample(affine_grid)", rotate_grads, (theta, t)),
                           ("warp", deform, (flow, f)),
                           ("grad of warp", deform_grads, (flow, f))):
    sharded_fn = jax.jit(fn, in_shardings=(batch_sharded, batch_sharded))
    sharded = sharded_fn(x, second[1])
    single = jax.jit(fn)(images, second[0])  # the inputs on one device
    found = collectives_in(sharded_fn.lower(x, second[1]).compile())
    all_clear &= not found
    # Relative to each output's scale: the per-device programs may sum in another order.
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
                     for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True))
    print(f"\n{name}:")
    for leaf in jax.tree.leaves(sharded):
      kept = leaf.sharding.is_equivalent_to(batch_sharded, leaf.ndim)
      print(f"  output {leaf.shape} {leaf.dtype}: {leaf.sharding} "
            f"({'batch-sharded' if kept else 'NOT batch-sharded'}, "
            f"{len(leaf.addressable_shards)} shards of {leaf.addressable_shards[0].data.shape})")
      all_clear &= kept
    print(f"  max |sharded - single device| / max |single device| = {difference:.1e}")
    print(f"  collectives in the compiled HLO: {', '.join(found) if found else 'none'}")
    results[name] = sharded

  print("\nVerdict: " + ("every output stays batch-sharded and the compiled programs contain no collective "
                         "(all-gather, all-reduce, collective-permute, all-to-all, reduce-scatter)"
                         if all_clear else "communication or resharding found (see above)"))

  rotated = results["grid_sample(affine_grid)"]
  warped = results["warp"]
  fig, axes = plt.subplots(2, batch, figsize=(1.6 * batch, 4.4))
  for row, (array, title) in enumerate(((rotated, "affine"), (warped, "warp"))):
    for shard in array.addressable_shards:  # each device's own slice of the batch
      index = shard.index[0].start
      ax = axes[row, index]
      ax.imshow(np.clip(np.moveaxis(np.asarray(shard.data[0]), 0, -1), 0, 1))
      ax.set_title(f"{title} on {shard.device.platform}:{shard.device.id}", fontsize=7)
      ax.set_axis_off()
  fig.suptitle("Batch-sharded grid_sample and warp: each panel computed on its own device", fontsize=10)
  fig.tight_layout()
  args.output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.output, dpi=90)
  print(f"Done in {time.perf_counter() - start:.0f} s")
  print(f"Figure saved to {args.output}")


if __name__ == "__main__":
  main()
