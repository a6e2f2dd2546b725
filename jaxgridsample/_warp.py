"""Pixel-displacement fields: the identity grid, flow <-> grid, and ``warp``.

``grid_sample`` reads normalised coordinates in ``[-1, 1]``; registration and
optical-flow code thinks in pixel displacements. This module converts between
the two. A flow is channels-last, ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``,
in pixels, with component 0 the x (W) displacement, 1 the y (H) and 2 the z
(D) one, the same component order as a grid. ``warp(image, flow)`` samples
``output(p) = image(p + flow(p))``.

The identity grid holds the pixel centres of ``affine_grid``'s base grid,
``(2 i + 1) / L - 1`` (or ``2 i / (L - 1) - 1`` with ``align_corners``), but
each value is rounded once from exact integers. ``affine_grid`` copies
PyTorch's ``linspace`` rounding, which can be a few ulps off, so the two grids
can differ in the last bits. Rounding once makes the identity exact whenever
the value is representable (power-of-two sizes, or ``2**k + 1`` with
``align_corners``), and never more than about one ulp of the pixel index off
otherwise.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from ._api import InterpolationMode, PaddingMode, grid_sample
from ._autodiff import INTERPOLATION_FAMILIES
from ._coordinates import PADDING_MODES

_FLOW_AXES = {2: "(N, H, W, 2)", 3: "(N, D, H, W, 3)"}
_IMAGE_AXES = {2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_IMAGE_AXES_LAST = {2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}


def _shape_and_dtype(caller: str, name: str, x) -> tuple[tuple[int, ...], np.dtype]:
  """Static shape and dtype of an array (tracers included), without converting it."""
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return tuple(x.shape), np.dtype(x.dtype)
  raise TypeError(f"{caller}(): expected {name} to be an array, but got {type(x).__name__}")


def _check_floating(caller: str, name: str, dtype: np.dtype) -> None:
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{caller}(): expected {name} to have a floating point dtype "
        f"(float16, bfloat16, float32 or float64), but got {dtype}")


def _check_bool(caller: str, name: str, value) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{caller}(): expected {name} to be a bool, but got {value!r}")


def _check_flow(caller: str, name: str, x) -> tuple[tuple[int, ...], np.dtype]:
  """Checks a flow or grid ``(N, *spatial, ndim)``; returns its shape and dtype."""
  shape, dtype = _shape_and_dtype(caller, name, x)
  _check_floating(caller, name, dtype)
  if len(shape) not in (4, 5) or shape[-1] != len(shape) - 2:
    raise ValueError(
        f"{caller}(): expected {name} of shape {_FLOW_AXES[2]} or {_FLOW_AXES[3]}, "
        f"but got {name} of shape {shape}")
  if 0 in shape[1:-1]:
    raise ValueError(
        f"{caller}(): expected {name} to have non-empty spatial dimensions, but got {name} of shape {shape}")
  return shape, dtype


@functools.lru_cache(maxsize=128)
def _axis_centres(length: int, align_corners: bool, dtype_name: str) -> np.ndarray:
  """Pixel-centre coordinates along one axis, each rounded once.

  The numerator and denominator are exact integers in the working dtype, so
  the IEEE division is the only rounding.

  Returns:
    A read-only array of shape ``(length,)``, float64 if ``dtype_name`` is
    float64 and float32 otherwise (narrower dtypes are cast by the caller).
  """
  work = np.float64 if dtype_name == "float64" else np.float32
  index = np.arange(length)
  if length == 1:
    centres = np.zeros(1, work)
  elif align_corners:
    centres = (2 * index - (length - 1)).astype(work) / work(length - 1)
  else:
    centres = (2 * index + 1 - length).astype(work) / work(length)
  centres.setflags(write=False)
  return centres


@functools.lru_cache(maxsize=64)
def _identity_grid_np(spatial_shape: tuple[int, ...], align_corners: bool, dtype_name: str) -> np.ndarray:
  """NumPy identity grid of shape ``(*spatial_shape, ndim)``, x first."""
  ndim = len(spatial_shape)
  components = []
  for j in range(ndim):
    axis = ndim - 1 - j  # component j (x, y, z) runs along spatial axis W, H, D
    shape = [1] * ndim
    shape[axis] = spatial_shape[axis]
    centres = _axis_centres(spatial_shape[axis], align_corners, dtype_name).reshape(shape)
    components.append(np.broadcast_to(centres, spatial_shape))
  grid = np.stack(components, axis=-1)
  grid.setflags(write=False)
  return grid


def _pixel_extent(spatial_shape: tuple[int, ...], align_corners: bool) -> list[int]:
  """Per component (x, y, z): pixels spanned by the normalised interval ``[-1, 1]``.

  ``S`` without ``align_corners`` and ``S - 1`` with it (0 for a unit axis,
  whose only coordinate every grid value maps to).
  """
  ndim = len(spatial_shape)
  return [spatial_shape[ndim - 1 - j] - (1 if align_corners else 0) for j in range(ndim)]


def identity_grid(
    spatial_shape: Sequence[int],
    align_corners: bool = False,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
  """The grid that samples every pixel at its own centre.

  ``grid_sample(x, identity_grid(x.shape[2:])[None], mode, padding_mode,
  align_corners)`` returns ``x`` for every mode and padding: exactly when
  the pixel centres are representable (every size for ``mode="nearest"``;
  power-of-two sizes without ``align_corners``, sizes ``2**k + 1`` with it),
  and otherwise to about one ulp of the largest pixel index.

  Args:
    spatial_shape: ``(H, W)`` or ``(D, H, W)``, static positive ints.
    align_corners: as in ``grid_sample`` and ``affine_grid``; use the same
      value.
    dtype: floating dtype of the grid.

  Returns:
    The grid, shape ``(H, W, 2)`` or ``(D, H, W, 3)``, with ``[..., 0]`` the
    x (W) coordinate, ``[..., 1]`` the y (H) and ``[..., 2]`` the z (D) one.
    Add a leading batch axis (``grid[None]``) to pass it to ``grid_sample``.

  Raises:
    ValueError: ``spatial_shape`` not of length 2 or 3, or not positive.
    TypeError: non-integer sizes, non-floating ``dtype`` or non-bool
      ``align_corners``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample import identity_grid
    >>> identity_grid((2, 3), align_corners=True, dtype=jnp.float32)
    Array([[[-1., -1.],
            [ 0., -1.],
            [ 1., -1.]],
    <BLANKLINE>
           [[-1.,  1.],
            [ 0.,  1.],
            [ 1.,  1.]]], dtype=float32)

  Note:
    The values are ``affine_grid``'s base coordinates (the grid of the
    identity ``theta``), rounded once from exact integers rather than
    through PyTorch's ``linspace``; the two can differ in the last bits.
  """
  _check_bool("identity_grid", "align_corners", align_corners)
  try:
    if isinstance(spatial_shape, (str, bytes)) or any(isinstance(s, (bool, np.bool_)) for s in spatial_shape):
      raise TypeError
    shape = tuple(operator.index(s) for s in spatial_shape)
  except TypeError:
    raise TypeError(
        f"identity_grid(): expected spatial_shape to be a sequence of ints (H, W) or (D, H, W), "
        f"but got {spatial_shape!r}") from None
  if len(shape) not in (2, 3) or min(shape) <= 0:
    raise ValueError(
        f"identity_grid(): expected spatial_shape (H, W) or (D, H, W) of positive sizes, but got {shape}")
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    raise TypeError(f"identity_grid(): expected a floating point dtype, but got {dtype!r}") from None
  _check_floating("identity_grid", "dtype", dtype)
  return jnp.asarray(_identity_grid_np(shape, bool(align_corners), dtype.name), dtype=dtype)


def flow_to_grid(flow: ArrayLike, align_corners: bool = False) -> jax.Array:
  """Converts a pixel-displacement field to a normalised sampling grid.

  ``grid = identity + flow / (S / 2)`` per component, with ``S`` the size of
  that component's axis (``S - 1`` with ``align_corners``): sampling at
  ``grid`` reads pixel ``p + flow(p)`` at output pixel ``p``.

  Args:
    flow: channels-last displacements in pixels, ``(N, H, W, 2)`` or
      ``(N, D, H, W, 3)``, floating point. ``flow[..., 0]`` moves along x
      (W, positive to the right), ``[..., 1]`` along y (H, positive down),
      ``[..., 2]`` along z (D).
    align_corners: the convention of the ``grid_sample`` call the grid is
      for.

  Returns:
    The grid, of ``flow``'s shape and dtype.

  Raises:
    ValueError: a shape other than ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``.
    TypeError: non-floating ``flow`` or non-bool ``align_corners``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample import flow_to_grid
    >>> flow = jnp.zeros((1, 1, 2, 2), dtype=jnp.float32).at[..., 0].set(1.0)  # 1 px to the right
    >>> flow_to_grid(flow)
    Array([[[[0.5, 0. ],
             [1.5, 0. ]]]], dtype=float32)

  Note:
    With ``align_corners=True`` a unit-size axis has a single coordinate and
    the displacement along it is dropped (the grid is 0 there, and
    ``grid_to_flow`` gives 0 back).
  """
  _check_bool("flow_to_grid", "align_corners", align_corners)
  _check_flow("flow_to_grid", "flow", flow)
  return _flow_to_grid(flow, bool(align_corners))


def grid_to_flow(grid: ArrayLike, align_corners: bool = False) -> jax.Array:
  """Converts a normalised sampling grid to a pixel-displacement field.

  The inverse of :func:`flow_to_grid` (up to rounding): ``flow = (grid -
  identity) * (S / 2)`` per component (``(S - 1) / 2`` with
  ``align_corners``).

  Args:
    grid: normalised coordinates, ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``,
      floating point, x first; the spatial shape is taken as the image's.
    align_corners: the convention the grid was made for.

  Returns:
    Displacements in pixels, of ``grid``'s shape and dtype, in the layout
    :func:`flow_to_grid` takes.

  Raises:
    ValueError: a shape other than ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``.
    TypeError: non-floating ``grid`` or non-bool ``align_corners``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample import grid_to_flow
    >>> grid = jnp.array([[[[0.5, 0.0], [1.5, 0.0]]]], dtype=jnp.float32)  # (1, 1, 2, 2)
    >>> grid_to_flow(grid)
    Array([[[[1., 0.],
             [1., 0.]]]], dtype=float32)
  """
  _check_bool("grid_to_flow", "align_corners", align_corners)
  _check_flow("grid_to_flow", "grid", grid)
  return _grid_to_flow(grid, bool(align_corners))


def _batched_identity(spatial_shape: tuple[int, ...], align_corners: bool, dtype) -> jax.Array:
  """The identity grid with a leading unit batch axis (no implicit rank promotion)."""
  return jnp.asarray(_identity_grid_np(spatial_shape, align_corners, np.dtype(dtype).name)[None], dtype)


@functools.partial(jax.jit, static_argnums=(1,))
def _flow_to_grid(flow, align_corners: bool):
  flow = jnp.asarray(flow)
  spatial = flow.shape[1:-1]
  steps = []
  for j, extent in enumerate(_pixel_extent(spatial, align_corners)):
    component = flow[..., j]
    # 2 * flow is exact, so the division is the step's only rounding.
    steps.append((component + component) / extent if extent else jnp.zeros_like(component))
  return _batched_identity(spatial, align_corners, flow.dtype) + jnp.stack(steps, axis=-1)


@functools.partial(jax.jit, static_argnums=(1,))
def _grid_to_flow(grid, align_corners: bool):
  grid = jnp.asarray(grid)
  spatial = grid.shape[1:-1]
  offset = grid - _batched_identity(spatial, align_corners, grid.dtype)
  # extent / 2 is exact in any float type, so the product rounds once.
  flows = [offset[..., j] * (extent / 2) if extent else jnp.zeros_like(offset[..., j])
           for j, extent in enumerate(_pixel_extent(spatial, align_corners))]
  return jnp.stack(flows, axis=-1)


def _check_choice(name: str, value, choices) -> None:
  if not isinstance(value, str) or value not in choices:
    valid = ", ".join(repr(c) for c in choices)
    raise ValueError(f"warp(): expected {name} to be one of {valid}, but got: {value!r}")


def check_warp_args(image, flow, mode, padding_mode, align_corners, channels_last) -> None:
  """Validates warp's arguments; raises ValueError/TypeError before tracing."""
  _check_choice("mode", mode, tuple(INTERPOLATION_FAMILIES))
  _check_choice("padding_mode", padding_mode, PADDING_MODES)
  _check_bool("warp", "align_corners", align_corners)
  _check_bool("warp", "channels_last", channels_last)
  image_shape, image_dtype = _shape_and_dtype("warp", "image", image)
  _check_floating("warp", "image", image_dtype)
  layout = _IMAGE_AXES_LAST if channels_last else _IMAGE_AXES
  if len(image_shape) not in (4, 5):
    raise ValueError(
        f"warp(): expected a 4-D image {layout[2]} or a 5-D image {layout[3]}, "
        f"but got image of shape {image_shape}")
  ndim = len(image_shape) - 2
  spatial = image_shape[1:-1] if channels_last else image_shape[2:]
  expected = (image_shape[0],) + spatial + (ndim,)
  flow_shape, _ = _shape_and_dtype("warp", "flow", flow)
  if flow_shape != expected:
    raise ValueError(
        f"warp(): expected flow of shape {_FLOW_AXES[ndim]} = {expected} for an image of shape "
        f"{image_shape} {layout[ndim]}, but got flow of shape {flow_shape}")
  _check_flow("warp", "flow", flow)


def warp(
    image: ArrayLike,
    flow: ArrayLike,
    mode: InterpolationMode = "bilinear",
    padding_mode: PaddingMode = "border",
    align_corners: bool = False,
    *,
    channels_last: bool = False,
) -> jax.Array:
  """Warps an image by a pixel-displacement field: ``output(p) = image(p + flow(p))``.

  ``grid_sample`` at ``flow_to_grid(flow)``: backward warping, as in
  registration and optical flow. Differentiable with respect to both
  ``image`` and ``flow``.

  Shapes (channels first, the default):

  * 2-D: image ``(N, C, H, W)``, flow ``(N, H, W, 2)``, output
    ``(N, C, H, W)``;
  * 3-D: image ``(N, C, D, H, W)``, flow ``(N, D, H, W, 3)``, output
    ``(N, C, D, H, W)``.

  With ``channels_last=True`` image and output are ``(N, H, W, C)`` or
  ``(N, D, H, W, C)``. The flow is channels-last in either case.

  Args:
    image: the image or volume to warp, floating point.
    flow: displacements in pixels, same batch and spatial size as
      ``image``, floating point; ``flow[..., 0]`` is the x (W) displacement,
      ``[..., 1]`` the y (H) and ``[..., 2]`` the z (D) one.
    mode: "bilinear", "nearest" or "bicubic", as in ``grid_sample``.
    padding_mode: what displaced positions outside the image read: "border"
      (default: the nearest edge pixel), "zeros" or "reflection".
    align_corners: as in ``grid_sample``. Displacements are in pixels
      either way; it only moves reflection padding's mirror from the outer
      pixel edges (False) to the corner pixel centres (True), and decides
      the rounding.
    channels_last: if True, image and output keep channels on the last
      axis.

  Returns:
    The warped image, of ``image``'s shape and dtype.

  Raises:
    ValueError: unknown mode or padding_mode, wrong shapes, or a flow whose
      batch or spatial size differs from the image's.
    TypeError: non-floating image or flow, non-bool flags.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample import warp
    >>> image = jnp.arange(6.0, dtype=jnp.float32).reshape(1, 1, 2, 3)
    >>> flow = jnp.zeros((1, 2, 3, 2), dtype=jnp.float32).at[..., 0].set(1.0)  # read 1 px to the right
    >>> warp(image, flow)
    Array([[[[1., 2., 2.],
             [4., 5., 5.]]]], dtype=float32)
  """
  check_warp_args(image, flow, mode, padding_mode, align_corners, channels_last)
  grid = _flow_to_grid(flow, bool(align_corners))
  return grid_sample(image, grid, mode, padding_mode, bool(align_corners), channels_last=bool(channels_last))
