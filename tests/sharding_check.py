"""Batch-sharded grid_sample over 8 forced CPU devices (run by test_sharding.py).

Run as a script in its own process, because the device count is fixed when
JAX starts. Prints one JSON line with what the test asserts.
"""

from __future__ import annotations

import itertools
import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxgridsample import _cpu_kernel, grid_sample  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def main() -> None:
  jax.config.update("jax_enable_x64", True)
  mesh = Mesh(np.array(jax.devices()), ("batch",))
  batch = NamedSharding(mesh, P("batch"))
  rng = np.random.default_rng(0)
  report = {"devices": len(jax.devices()), "cases": [], "cpu_kernel": _cpu_kernel.unavailable_reason() is None}
  implementations = ("xla", "cpu") if report["cpu_kernel"] else ("xla",)
  for implementation, (ndim, mode, padding) in itertools.product(implementations, [
      (2, "bilinear", "zeros"), (2, "bicubic", "reflection"), (2, "nearest", "border"), (3, "bilinear", "border"),
      (3, "bicubic", "zeros")]):
    inp = rng.standard_normal((8, 3) + (6,) * ndim)
    grid = rng.uniform(-1.2, 1.2, (8,) + (5,) * ndim + (ndim,))
    cot = rng.standard_normal((8, 3) + (5,) * ndim)

    def loss(x, g):
      return jnp.sum(grid_sample(x, g, mode, padding, implementation=implementation) * cot)

    def step(x, g):
      return grid_sample(x, g, mode, padding, implementation=implementation), jax.grad(loss, (0, 1))(x, g)

    single = jax.jit(step)(jnp.asarray(inp), jnp.asarray(grid))
    sharded_fn = jax.jit(step, in_shardings=(batch, batch))
    x, g = jax.device_put(inp, batch), jax.device_put(grid, batch)
    sharded = sharded_fn(x, g)
    hlo = sharded_fn.lower(x, g).compile().as_text()
    leaves_single, leaves_sharded = jax.tree.leaves(single), jax.tree.leaves(sharded)
    report["cases"].append({
        "case": f"{implementation}-{ndim}d-{mode}-{padding}",
        "max_difference": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                              for a, b in zip(leaves_single, leaves_sharded)),
        "batch_sharded": all(leaf.sharding.is_equivalent_to(batch, leaf.ndim) for leaf in leaves_sharded),
        "collectives": [c for c in COLLECTIVES if c in hlo],
    })
  print(json.dumps(report))


if __name__ == "__main__":
  main()
