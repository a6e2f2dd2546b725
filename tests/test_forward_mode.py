"""Forward mode through the custom_jvp path, and agreement of the two paths.

``autodiff="jvp"`` supports jax.jvp, jacfwd, linearize and hessian; the
default ``autodiff="vjp"`` path is reverse-only. Both must give the same
values and the same first and second derivatives (float64).
"""

from __future__ import annotations

import cases
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgridsample import grid_sample

COMBINATIONS = [(n, m, p, a) for n in (2, 3) for m in cases.MODES for p in cases.PADDINGS for a in (True, False)]


def _small_case(ndim, seed):
  rng = np.random.default_rng(seed)
  inp = jnp.asarray(rng.standard_normal((1, 2) + ((4, 5) if ndim == 2 else (3, 4, 3))))
  grid = jnp.asarray(rng.uniform(-1.3, 1.3, (1,) + ((3, 2) if ndim == 2 else (2, 2, 2)) + (ndim,)))
  return inp, grid


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: f"{c[0]}d-{c[1]}-{c[2]}-ac{c[3]}")
def test_jvp_matches_reverse_mode_jacobian(combination):
  ndim, mode, padding, ac = combination
  inp, grid = _small_case(ndim, 31)
  rng = np.random.default_rng(32)
  t_inp = jnp.asarray(rng.standard_normal(inp.shape))
  t_grid = jnp.asarray(rng.standard_normal(grid.shape))

  def forward(x, g):
    return grid_sample(x, g, mode, padding, ac, autodiff="jvp")

  def reverse(x, g):
    return grid_sample(x, g, mode, padding, ac)

  out, tangent = jax.jvp(forward, (inp, grid), (t_inp, t_grid))
  out_rev, vjp = jax.vjp(reverse, inp, grid)
  np.testing.assert_allclose(np.asarray(out), np.asarray(out_rev), rtol=1e-14, atol=1e-14)
  # <J t, c> == <t, J^T c> for a random cotangent c.
  cot = jnp.asarray(rng.standard_normal(out.shape))
  g_inp, g_grid = vjp(cot)
  lhs = float(jnp.sum(tangent * cot))
  rhs = float(jnp.sum(g_inp * t_inp) + jnp.sum(g_grid * t_grid))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("combination", [c for c in COMBINATIONS if c[1] != "nearest"],
                         ids=lambda c: f"{c[0]}d-{c[1]}-{c[2]}-ac{c[3]}")
def test_hessian_forward_over_reverse_matches_reverse_over_reverse(combination):
  ndim, mode, padding, ac = combination
  inp, grid = _small_case(ndim, 33)

  def loss(autodiff):
    return lambda x, g: jnp.sum(jnp.sin(grid_sample(x, g, mode, padding, ac, autodiff=autodiff)))

  hessian_fwd = jax.hessian(loss("jvp"), argnums=(0, 1))(inp, grid)
  hessian_rev = jax.jacrev(jax.jacrev(loss("vjp"), argnums=(0, 1)), argnums=(0, 1))(inp, grid)
  for a, b in zip(jax.tree.leaves(hessian_fwd), jax.tree.leaves(hessian_rev)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)
  grad_fwd = jax.grad(loss("jvp"), argnums=(0, 1))(inp, grid)
  grad_rev = jax.grad(loss("vjp"), argnums=(0, 1))(inp, grid)
  for a, b in zip(grad_fwd, grad_rev):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_jacfwd_and_linearize(mode):
  inp, grid = _small_case(2, 34)
  f = lambda g: grid_sample(inp, g, mode, "border", autodiff="jvp")  # noqa: E731
  jac_fwd = jax.jacfwd(f)(grid)
  jac_rev = jax.jacrev(lambda g: grid_sample(inp, g, mode, "border"))(grid)
  np.testing.assert_allclose(np.asarray(jac_fwd), np.asarray(jac_rev), rtol=1e-13, atol=1e-13)
  out, f_lin = jax.linearize(f, grid)
  t = jnp.ones_like(grid)
  np.testing.assert_allclose(np.asarray(f_lin(t)), np.asarray(jax.jvp(f, (grid,), (t,))[1]), rtol=1e-14)
  np.testing.assert_allclose(np.asarray(out), np.asarray(f(grid)), rtol=1e-14)


def test_forward_mode_matches_finite_differences():
  from jax.test_util import check_grads

  rng = np.random.default_rng(35)
  inp = jnp.asarray(rng.standard_normal((1, 2, 5, 6)))
  pixel = rng.integers(0, 4, (1, 3, 3, 2)) + rng.uniform(0.1, 0.9, (1, 3, 3, 2))
  grid = jnp.asarray((2 * pixel + 1) / np.array([6.0, 5.0]) - 1)
  check_grads(lambda x, g: grid_sample(x, g, "bicubic", "reflection", autodiff="jvp"), (inp, grid), order=2,
              modes=["fwd", "rev"], atol=1e-6, rtol=1e-6, eps=1e-6)


def test_unknown_autodiff_rule_is_rejected():
  inp, grid = _small_case(2, 36)
  with pytest.raises(ValueError, match=r"expected autodiff to be one of 'vjp', 'jvp', but got: 'forward'"):
    grid_sample(inp, grid, autodiff="forward")
