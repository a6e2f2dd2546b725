"""``affine_grid``: the sampling grid of a batch of affine transforms, as PyTorch builds it.

Every grid point is ``theta @ (x, y[, z], 1)`` for the base coordinates of its
pixel. The base coordinates are computed at trace time in NumPy (the sizes are
static), with PyTorch's own arithmetic, so they are bit-identical to ATen's;
the products with ``theta`` are rounded one by one and summed in ATen's order,
so the whole grid is too (checked against torch 2.13 CPU).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._api import static_shape_and_dtype

_SIZE_AXES = {4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}
_THETA_SHAPES = {4: "(N, 2, 3)", 5: "(N, 3, 4)"}


@functools.lru_cache(maxsize=64)
def _base_coordinates(length: int, align_corners: bool, dtype_name: str) -> np.ndarray:
  """ATen's base coordinates along one axis of ``length`` points.

  ``linspace(-1, 1, L)``, times ``(L - 1) / L`` when ``align_corners`` is
  False; a single 0 for ``L == 1``. ATen's CPU linspace evaluates
  ``start + step * i`` for the first half and ``end - step * (L - 1 - i)``
  for the second, each as one fused multiply-add (observed on torch 2.13's
  CPU build), then multiplies by ``L - 1`` and divides by ``L`` as two
  separately rounded operations.

  Returns:
    A read-only array of shape ``(length,)`` and dtype ``dtype_name``
    (float32 or float64).
  """
  dtype = np.dtype(dtype_name)
  if length <= 1:
    coords = np.zeros(1, dtype)
  else:
    step = (dtype.type(1) - dtype.type(-1)) / dtype.type(length - 1)
    index = np.arange(length)
    first_half = index < length // 2
    if dtype == np.float32:
      # The float64 products and differences are exact (24-bit step times an
      # index below 2**28), so the cast to float32 is the fma's one rounding.
      wide_step = np.float64(step)
      exact = np.where(first_half, wide_step * index - 1.0, 1.0 - wide_step * (length - 1 - index))
      coords = exact.astype(np.float32)
    else:
      # float64 has no wider type: the exact value is a ratio of integers,
      # and Python's int / int rounds it once, correctly.
      numerator, denominator = step.as_integer_ratio()
      coords = np.array(
          [(i * numerator - denominator) / denominator if i < length // 2
           else (denominator - (length - 1 - i) * numerator) / denominator for i in range(length)],
          np.float64)
    if not align_corners:
      coords = (coords * dtype.type(length - 1)) / dtype.type(length)
  coords.setflags(write=False)
  return coords


@jax.custom_jvp
def _rounded_product(base, t):
  """``base * t``, rounded before any following addition.

  XLA's CPU backend would fuse the multiply and the sum that follows into a
  fused multiply-add, which rounds once; ATen rounds every product. ``abs``
  between the two (the sign is restored afterwards) is something no
  contraction sees through. The custom JVP keeps the derivative ``base`` at
  ``t == 0``, where ``abs`` would give 0.
  """
  magnitude = jnp.abs(base * t)
  return jnp.where(jnp.signbit(base) != jnp.signbit(t), -magnitude, magnitude)


@_rounded_product.defjvp
def _rounded_product_jvp(primals, tangents):
  (base, t), (base_dot, t_dot) = primals, tangents
  return _rounded_product(base, t), base * t_dot + base_dot * t


def _static_size(size) -> tuple[int, ...]:
  """``size`` as a tuple of Python ints; raises TypeError if it is not one."""
  try:
    if isinstance(size, (str, bytes)):
      raise TypeError
    entries = tuple(size)
    if any(isinstance(s, (bool, np.bool_)) for s in entries):
      raise TypeError
    return tuple(operator.index(s) for s in entries)
  except TypeError:
    raise TypeError(
        f"affine_grid(): expected size to be a sequence of static ints such as (N, C, H, W), "
        f"but got {size!r}") from None


def check_affine_grid_args(theta, size, align_corners) -> tuple[int, ...]:
  """Validates affine_grid's arguments before tracing; returns size as ints."""
  if not isinstance(align_corners, (bool, np.bool_)):
    raise TypeError(f"affine_grid(): expected align_corners to be a bool, but got {align_corners!r}")
  theta_shape, theta_dtype = static_shape_and_dtype("affine_grid", "theta", theta)
  if not jnp.issubdtype(theta_dtype, jnp.floating):
    raise TypeError(
        f"affine_grid(): expected theta to have a floating point dtype "
        f"(float16, bfloat16, float32 or float64), but got {theta_dtype}")
  size = _static_size(size)
  if len(size) not in _SIZE_AXES:
    raise ValueError(
        f"affine_grid(): expected size of length 4 {_SIZE_AXES[4]} or 5 {_SIZE_AXES[5]}, "
        f"but got size {size} of length {len(size)}")
  ndim = len(size) - 2
  if len(theta_shape) != 3 or theta_shape[1:] != (ndim, ndim + 1):
    raise ValueError(
        f"affine_grid(): expected theta of shape {_THETA_SHAPES[len(size)]} for a size of length "
        f"{len(size)} {_SIZE_AXES[len(size)]}, but got theta of shape {theta_shape} and size {size}")
  if min(size) <= 0:
    raise ValueError(
        f"affine_grid(): expected positive sizes {_SIZE_AXES[len(size)]}, but got size {size}")
  if theta_shape[0] != size[0]:
    raise ValueError(
        f"affine_grid(): expected theta's batch size to equal size[0] (N), but got theta of "
        f"shape {theta_shape} and size {size}")
  return size


def affine_grid(theta: ArrayLike, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Generates the sampling grid of a batch of affine transforms, as PyTorch does.

  The JAX twin of ``torch.nn.functional.affine_grid``, with the same numbers.
  Its output is the ``grid`` argument of ``grid_sample``; together they warp
  images (for example in a spatial transformer network).

  Shapes:

  * 2-D: theta ``(N, 2, 3)``, size ``(N, C, H, W)``, grid ``(N, H, W, 2)``;
  * 3-D: theta ``(N, 3, 4)``, size ``(N, C, D, H, W)``, grid
    ``(N, D, H, W, 3)``.

  ``grid[n, h, w] = theta[n] @ (x_w, y_h, 1)`` (and likewise with ``z_d`` in
  3-D), where the base coordinates along an axis of length ``L`` are
  ``linspace(-1, 1, L)`` with ``align_corners=True`` (the corner pixels'
  centres), the pixel centres ``(2 i + 1) / L - 1`` with
  ``align_corners=False``, and a single 0 if ``L == 1``. ``grid[..., 0]`` is
  x (along W), ``grid[..., 1]`` is y (along H), ``grid[..., 2]`` is z (along
  D). The grid is linear in ``theta`` and differentiable by any JAX
  transformation.

  Args:
    theta: the affine matrices, mapping output coordinates to input
      coordinates, float16, bfloat16, float32 or float64.
    size: the target output size ``(N, C, H, W)`` or ``(N, C, D, H, W)``,
      static Python ints; C is not used but must be positive.
    align_corners: if True, -1 and 1 are the centres of the corner pixels;
      if False, their outer edges. Use the same value in ``grid_sample``.

  Returns:
    The grid, ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``, with ``theta``'s dtype
    (float16 and bfloat16 are computed in float32).

  Raises:
    ValueError: size not of length 4 or 5, theta's shape not ``(N, 2, 3)``
      or ``(N, 3, 4)`` to match it, an entry of size (N and C included) not
      positive, or theta's batch not ``size[0]``.
    TypeError: non-floating theta, size not a sequence of ints, or a
      non-bool align_corners.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample import affine_grid
    >>> theta = jnp.array([[[0.5, 0.0, 0.25], [0.0, 2.0, 0.0]]], dtype=jnp.float32)
    >>> affine_grid(theta, (1, 3, 2, 2), align_corners=False)
    Array([[[[ 0. , -1. ],
             [ 0.5, -1. ]],
    <BLANKLINE>
            [[ 0. ,  1. ],
             [ 0.5,  1. ]]]], dtype=float32)

  Note:
    Differences from PyTorch. ``align_corners`` defaults to False without a
    warning. A unit-size axis with ``align_corners=True`` gives the
    coordinate 0 without PyTorch's warning; every entry of size, N and C
    included, must be positive (PyTorch lets a zero through when that
    warning fires). A non-floating theta raises ``TypeError`` and a size of
    the wrong length ``ValueError`` (PyTorch: ``ValueError`` and
    ``NotImplementedError``). float16 and bfloat16 are computed in float32
    and rounded once.
  """
  size = check_affine_grid_args(theta, size, align_corners)
  return _affine_grid(jnp.asarray(theta), size, bool(align_corners))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _affine_grid(theta: jax.Array, size: tuple[int, ...], align_corners: bool) -> jax.Array:
  out_dtype = theta.dtype
  theta = theta.astype(jnp.promote_types(out_dtype, jnp.float32))
  batch, spatial = size[0], size[2:]
  ndim = len(spatial)
  rank = ndim + 2  # output (N, *spatial, ndim): every operand is brought to this rank
  grid = None
  # Coordinate j (x, y, z) runs along spatial axis ndim - 1 - j (W, H, D); ATen
  # sums the products in that order and adds the translation column last.
  for j in range(ndim):
    axis = ndim - j
    length = spatial[axis - 1]
    shape = [1] * rank
    shape[axis] = length
    base = _base_coordinates(length, align_corners, theta.dtype.name).reshape(shape)
    column = theta[:, :, j].reshape((batch,) + (1,) * ndim + (ndim,))
    term = _rounded_product(base, column)
    grid = term if grid is None else grid + term
  grid = grid + theta[:, :, ndim].reshape((batch,) + (1,) * ndim + (ndim,))
  return grid.astype(out_dtype)
