"""The JAX side of the parity tests: forward, VJP and double backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgridsample import grid_sample


def jax_grid_sample(inp, grid, grad_out, mode, padding_mode, align_corners, ddot=None, jit=True,
                    implementation=None):
  """Mirror of ``torch_oracle.torch_grid_sample`` for jaxgridsample (``implementation`` as grid_sample's)."""

  def first_order(i, g, o):
    out, vjp = jax.vjp(
        lambda a, b: grid_sample(a, b, mode, padding_mode, align_corners, implementation=implementation), i, g)
    return (out,) + vjp(o)

  fn = jax.jit(first_order) if jit else first_order
  out, gi, gg = fn(jnp.asarray(inp), jnp.asarray(grid), jnp.asarray(grad_out))
  result = {"out": np.asarray(out), "grad_input": np.asarray(gi), "grad_grid": np.asarray(gg)}
  if ddot is not None:
    u, w = (jnp.asarray(x) for x in ddot)

    def total(i, g, o):
      _, gi, gg = first_order(i, g, o)
      return jnp.sum(gi * u) + jnp.sum(gg * w)

    second = jax.grad(total, argnums=(0, 1, 2))
    second = jax.jit(second) if jit else second
    dd = second(jnp.asarray(inp), jnp.asarray(grid), jnp.asarray(grad_out))
    result.update(dd_input=np.asarray(dd[0]), dd_grid=np.asarray(dd[1]), dd_grad_out=np.asarray(dd[2]))
  return result
