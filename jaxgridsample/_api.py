"""The public ``grid_sample``: argument checks, layout, and dispatch.

Every check runs on static shapes and dtypes before anything is traced, so a
mistake gives a ``ValueError``/``TypeError`` that names what was expected and
what was received, never an error from deep inside JAX.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _cpu_kernel
from ._autodiff import IMPLEMENTATIONS, INTERPOLATION_FAMILIES, sample, sample_forward_mode
from ._coordinates import PADDING_MODES

InterpolationMode = Literal["bilinear", "nearest", "bicubic"]
PaddingMode = Literal["zeros", "border", "reflection"]
AutodiffRule = Literal["vjp", "jvp"]
Implementation = Literal["xla", "cpu"]

# How grid_sample is differentiated: see grid_sample's ``autodiff`` argument.
_AUTODIFF_RULES = {"vjp": sample, "jvp": sample_forward_mode}

_AXES = {4: "(N, C, H_in, W_in)", 5: "(N, C, D_in, H_in, W_in)"}
_AXES_LAST = {4: "(N, H_in, W_in, C)", 5: "(N, D_in, H_in, W_in, C)"}
_GRID_AXES = {4: "(N, H_out, W_out, 2)", 5: "(N, D_out, H_out, W_out, 3)"}


def static_shape_and_dtype(caller: str, name: str, x):
  """Static shape and dtype of an array-like, without converting tracers (shared with affine_grid)."""
  if isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(x, "shape") and hasattr(x, "dtype"):
    return tuple(x.shape), np.dtype(x.dtype)
  try:
    array = np.asarray(x)
  except Exception as error:  # pragma: no cover - message path only
    raise TypeError(f"{caller}(): {name} must be an array, got {type(x).__name__}") from error
  return array.shape, array.dtype


def _check_choice(name: str, value, choices) -> None:
  if not isinstance(value, str) or value not in choices:
    valid = ", ".join(repr(c) for c in choices)
    raise ValueError(f"grid_sample(): expected {name} to be one of {valid}, but got: {value!r}")


def check_grid_sample_args(input, grid, mode, padding_mode, align_corners, channels_last):
  """Validates grid_sample's arguments; raises ValueError/TypeError before tracing.

  Input and grid must be arrays (anything with ``shape`` and a NumPy-readable
  ``dtype``, such as ``jax.Array``, ``np.ndarray`` or a tracer): Python lists
  and tuples are refused, as ``jax.numpy`` refuses them.
  """
  _check_choice("mode", mode, tuple(INTERPOLATION_FAMILIES))
  _check_choice("padding_mode", padding_mode, PADDING_MODES)
  if not isinstance(align_corners, (bool, np.bool_)):
    raise TypeError(f"grid_sample(): expected align_corners to be a bool, but got {align_corners!r}")
  if not isinstance(channels_last, (bool, np.bool_)):
    raise TypeError(f"grid_sample(): expected channels_last to be a bool, but got {channels_last!r}")
  described = []
  for name, x in (("input", input), ("grid", grid)):
    # Like jax.numpy, take arrays only: a nested list has no dtype to check, and its
    # float type would depend on jax_enable_x64.
    not_an_array = f"grid_sample(): expected {name} to be an array (jax.Array or numpy.ndarray), but got "
    if isinstance(x, (list, tuple)):
      raise TypeError(
          f"{not_an_array}a Python {type(x).__name__}; convert it with jnp.asarray(..., dtype=...)")
    try:
      shape, dtype = static_shape_and_dtype("grid_sample", name, x)
    except TypeError as error:  # e.g. a foreign tensor whose dtype NumPy cannot read
      raise TypeError(f"{not_an_array}{type(x).__module__}.{type(x).__name__}") from error
    if dtype == np.dtype(object):  # None, or an arbitrary object
      raise TypeError(f"{not_an_array}{type(x).__name__}")
    described.append((shape, dtype))
  (input_shape, input_dtype), (grid_shape, grid_dtype) = described
  layout = _AXES_LAST if channels_last else _AXES
  for name, dtype in (("input", input_dtype), ("grid", grid_dtype)):
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"grid_sample(): expected {name} to have a floating point dtype "
          f"(float16, bfloat16, float32 or float64), but got {dtype}")
  if len(input_shape) not in (4, 5):
    raise ValueError(
        f"grid_sample(): expected a 4-D input {layout[4]} or a 5-D input {layout[5]}, "
        f"but got input of shape {input_shape}")
  rank = len(input_shape)
  if len(grid_shape) != rank:
    raise ValueError(
        f"grid_sample(): expected grid of shape {_GRID_AXES[rank]} for a {rank}-D input "
        f"(input and grid with the same number of dimensions), but got input of shape "
        f"{input_shape} and grid of shape {grid_shape}")
  if grid_shape[-1] != rank - 2:
    raise ValueError(
        f"grid_sample(): expected grid of shape {_GRID_AXES[rank]} for a {rank}-D input "
        f"(last dimension {rank - 2}), but got grid of shape {grid_shape}")
  if input_shape[0] != grid_shape[0]:
    raise ValueError(
        f"grid_sample(): expected input and grid to have the same batch size, but got "
        f"input of shape {input_shape} and grid of shape {grid_shape}")
  spatial = input_shape[1:-1] if channels_last else input_shape[2:]
  if any(size == 0 for size in spatial):
    raise ValueError(
        f"grid_sample(): expected input to have non-empty spatial dimensions, but got "
        f"input of shape {input_shape}")


def grid_sample(
    input: ArrayLike,
    grid: ArrayLike,
    mode: InterpolationMode = "bilinear",
    padding_mode: PaddingMode = "zeros",
    align_corners: bool = False,
    *,
    channels_last: bool = False,
    autodiff: AutodiffRule = "vjp",
    implementation: Implementation | None = None,
) -> jax.Array:
  """Samples ``input`` at the normalised locations in ``grid``, as PyTorch does.

  The JAX twin of ``torch.nn.functional.grid_sample``, with the same
  arguments and the same numbers, differentiable with respect to both
  ``input`` and ``grid`` (to any order).

  Shapes (channels first, the default):

  * 4-D: input ``(N, C, H_in, W_in)``, grid ``(N, H_out, W_out, 2)``,
    output ``(N, C, H_out, W_out)``;
  * 5-D: input ``(N, C, D_in, H_in, W_in)``, grid
    ``(N, D_out, H_out, W_out, 3)``, output ``(N, C, D_out, H_out, W_out)``.

  With ``channels_last=True`` the input is ``(N, H_in, W_in, C)`` or
  ``(N, D_in, H_in, W_in, C)`` and the output ``(N, H_out, W_out, C)`` or
  ``(N, D_out, H_out, W_out, C)``: the layout Flax uses, with no transpose.

  ``grid[..., 0]`` is x (along W), ``grid[..., 1]`` is y (along H) and
  ``grid[..., 2]`` is z (along D); -1 and 1 are the image's extremes.

  Args:
    input: the image or volume to sample, float16, bfloat16, float32 or
      float64.
    grid: sampling locations, normalised to ``[-1, 1]``, floating point.
    mode: "bilinear" (trilinear on 5-D input), "nearest" (round half to
      even), or "bicubic" (cubic convolution with A = -0.75; tricubic on 5-D
      input, which PyTorch does not offer).
    padding_mode: what locations outside the input read: "zeros", "border"
      (the nearest edge pixel) or "reflection" (mirrored at the edges).
    align_corners: if True, -1 and 1 are the centres of the corner pixels;
      if False, their outer edges (PyTorch's default since 1.3).
    channels_last: if True, input and output keep channels on the last axis.
    autodiff: "vjp" (default) differentiates with the hand-written backward,
      whose only residuals are ``input`` and ``grid``; reverse mode to any
      order (grad, grad of grad), but no forward mode. "jvp" uses the same
      formulas as a forward-mode rule: ``jax.jvp``, ``jax.jacfwd``,
      ``jax.linearize`` and ``jax.hessian`` work, and reverse mode works by
      transposition at the cost of keeping the output's spatial derivative
      (``ndim`` times the output's size) between forward and backward.
    implementation: "cpu" runs the forward and the first-order backward in
      jaxgridsample's compiled CPU kernel (C++, called through XLA's FFI);
      "xla" runs them as JAX operations, on any backend. None (the default)
      picks "cpu" when JAX's default backend is the CPU and the kernel is
      installed, else "xla". Both give the same results to rounding, and
      higher derivatives are JAX operations either way.

  Returns:
    The sampled values, with ``input``'s dtype.

  Raises:
    ValueError: unknown mode or padding_mode, wrong ranks or shapes;
      implementation="cpu" without the compiled kernel.
    TypeError: non-floating input or grid, non-bool align_corners.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample import grid_sample
    >>> image = jnp.arange(1.0, 11.0, dtype=jnp.float32).reshape(1, 1, 2, 5)
    >>> grid = jnp.array([[[[0.0, 0.2], [-0.5, -1.0]]]], dtype=jnp.float32)  # (1, 1, 2, 2)
    >>> grid_sample(image, grid, align_corners=True)
    Array([[[[6., 2.]]]], dtype=float32)

  Note:
    Differences from PyTorch. ``align_corners`` defaults to False without a
    warning. 5-D input accepts ``mode="bicubic"``. Input and grid may have
    different float dtypes (the arithmetic runs in the wider one, at least
    float32; the output has the input's dtype). NaN and infinite grid values
    are handled by one rule on every path: under zeros padding they read 0;
    under border and reflection padding NaN and -inf read the first pixel and
    +inf the last; their gradient is 0. Forward-mode differentiation works.
  """
  _check_choice("autodiff", autodiff, tuple(_AUTODIFF_RULES))
  check_grid_sample_args(input, grid, mode, padding_mode, align_corners, channels_last)
  spatial_shape = input.shape[1:-1] if channels_last else input.shape[2:]
  implementation = choose_implementation(implementation, spatial_shape)
  return _grid_sample(input, grid, mode, padding_mode, bool(align_corners), bool(channels_last), autodiff,
                      implementation)


def choose_implementation(implementation, spatial_shape) -> str:
  """The implementation to run: ``implementation`` checked, or the default's choice for None."""
  if implementation is None:
    on_cpu = jax.default_backend() == "cpu"
    return "cpu" if on_cpu and _cpu_kernel.usable_for(spatial_shape) else "xla"
  if implementation not in IMPLEMENTATIONS:
    valid = ", ".join(repr(c) for c in IMPLEMENTATIONS)
    raise ValueError(f"grid_sample(): expected implementation to be None or one of {valid}, "
                     f"but got: {implementation!r}")
  if implementation == "cpu":
    reason = _cpu_kernel.unavailable_reason()
    if reason is not None:
      raise ValueError(f"grid_sample(): implementation='cpu' needs the compiled CPU kernel, but {reason}")
    if not _cpu_kernel.usable_for(spatial_shape):
      raise ValueError(f"grid_sample(): implementation='cpu' addresses at most {_cpu_kernel.MAX_PIXELS} pixels "
                       f"per channel, but the input's spatial shape is {tuple(spatial_shape)}; use 'xla'")
  return implementation


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _grid_sample(input, grid, mode, padding_mode, align_corners, channels_last, autodiff, implementation):
  # Compiled as one program even when called eagerly: op-by-op dispatch of
  # the many small coordinate ops would be slower than compiling once.
  return _AUTODIFF_RULES[autodiff](input, grid, mode, padding_mode, align_corners, channels_last, implementation)
