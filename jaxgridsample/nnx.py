"""Flax NNX layers: a spatial transformer and a flow warp (optional; needs flax).

``import jaxgridsample`` does not import flax; ``import jaxgridsample.nnx``
does. Both layers are channels-last, ``(N, H, W, C)``, as Flax is.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

try:
  from flax import nnx
except ImportError as error:  # pragma: no cover - exercised only without flax
  raise ImportError("jaxgridsample.nnx needs Flax: pip install flax") from error

from ._affine import affine_grid
from ._api import InterpolationMode, PaddingMode, check_grid_sample_args, grid_sample
from ._warp import check_warp_args, warp

__all__ = ["SpatialTransformer", "Warp"]

# theta = [[1, 0, 0], [0, 1, 0]], flattened row by row.
_IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _adaptive_average_matrix(length: int, pooled: int) -> np.ndarray:
  """(pooled, length) matrix averaging ``length`` samples into ``pooled`` bins.

  Bin ``i`` covers ``[floor(i L / P), ceil((i + 1) L / P))``, as adaptive
  average pooling does; bins overlap (or repeat samples) when ``L`` is not
  a multiple of ``P``.
  """
  matrix = np.zeros((pooled, length), np.float32)
  for i in range(pooled):
    start, stop = (i * length) // pooled, -((-(i + 1) * length) // pooled)
    matrix[i, start:stop] = 1.0 / (stop - start)
  return matrix


class SpatialTransformer(nnx.Module):
  """A spatial transformer (Jaderberg et al., 2015) for 2-D, channels-last images.

  A small localisation network (convolutions, each followed by ReLU and 2x2
  max pooling, then adaptive average pooling to ``pooled_shape`` and dense
  layers) predicts the six parameters of an affine map ``theta`` (N, 2, 3)
  per image; the image is then resampled at ``affine_grid(theta)`` with
  ``grid_sample``. The last dense layer starts with zero weights and the
  identity as its bias, so the layer starts as the identity transform and
  learns to depart from it.

  Attributes:
    localization: the convolutional layers.
    hidden: the dense layers before the last one.
    head: the last dense layer, producing ``theta`` flattened row by row.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxgridsample.nnx import SpatialTransformer
    >>> stn = SpatialTransformer(1, output_shape=(4, 4), rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 8, 8, 1), dtype=jnp.float32)
    >>> stn.theta(x)[0]
    Array([[1., 0., 0.],
           [0., 1., 0.]], dtype=float32)
    >>> stn(x).shape
    (2, 4, 4, 1)
  """

  def __init__(
      self,
      in_features: int,
      *,
      features: Sequence[int] = (8, 16),
      hidden: Sequence[int] = (32,),
      kernel_size: int = 3,
      pooled_shape: tuple[int, int] = (4, 4),
      output_shape: tuple[int, int] | None = None,
      mode: InterpolationMode = "bilinear",
      padding_mode: PaddingMode = "zeros",
      align_corners: bool = False,
      dtype: DTypeLike | None = None,
      param_dtype: DTypeLike = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the localisation network.

    Args:
      in_features: channels of the input images (C).
      features: output channels of each convolution of the localisation
        network.
      hidden: widths of the dense layers between the pooled features and
        the six affine parameters.
      kernel_size: side of the square convolution kernels.
      pooled_shape: ``(h, w)`` grid the convolutional features are
        average-pooled to before the dense layers, which makes the layer
        work for any input size.
      output_shape: ``(H_out, W_out)`` of the resampled image; the input's
        spatial size if None.
      mode, padding_mode, align_corners: passed to ``grid_sample`` (and
        ``align_corners`` to ``affine_grid``).
      dtype: computation dtype of the localisation network (None: inferred).
      param_dtype: dtype of its parameters.
      rngs: random number streams for the initialisers.
    """
    # Validate the sampling options now rather than at the first call.
    image = jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32)
    check_grid_sample_args(image, jax.ShapeDtypeStruct((1, 1, 1, 2), jnp.float32), mode, padding_mode,
                           align_corners, True)
    self.mode = mode
    self.padding_mode = padding_mode
    self.align_corners = bool(align_corners)
    self.output_shape = None if output_shape is None else tuple(int(s) for s in output_shape)
    self.pooled_shape = tuple(int(s) for s in pooled_shape)
    layers = []
    channels = in_features
    for width in features:
      layers.append(nnx.Conv(channels, width, (kernel_size, kernel_size), padding="SAME", dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs))
      channels = width
    self.localization = nnx.List(layers)
    dense = []
    width_in = channels * self.pooled_shape[0] * self.pooled_shape[1]
    for width in hidden:
      dense.append(nnx.Linear(width_in, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs))
      width_in = width
    self.hidden = nnx.List(dense)
    self.head = nnx.Linear(
        width_in, 6, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.initializers.zeros_init(),
        bias_init=lambda key, shape, dtype: jnp.asarray(_IDENTITY_THETA, dtype).reshape(shape))

  def theta(self, x: ArrayLike) -> jax.Array:
    """Predicts the affine maps of a batch of images.

    Args:
      x: images ``(N, H, W, C)``.

    Returns:
      ``theta`` of shape ``(N, 2, 3)``, mapping output to input coordinates
      (normalised to ``[-1, 1]``, x first), as ``affine_grid`` takes it.
    """
    h = jnp.asarray(x)
    for conv in self.localization:
      h = nnx.max_pool(nnx.relu(conv(h)), window_shape=(2, 2), strides=(2, 2), padding="SAME")
    rows = jnp.asarray(_adaptive_average_matrix(h.shape[1], self.pooled_shape[0]), h.dtype)
    cols = jnp.asarray(_adaptive_average_matrix(h.shape[2], self.pooled_shape[1]), h.dtype)
    h = jnp.einsum("ih,nhwc,jw->nijc", rows, h, cols).reshape(h.shape[0], -1)
    for layer in self.hidden:
      h = nnx.relu(layer(h))
    return self.head(h).reshape(-1, 2, 3)

  def __call__(self, x: ArrayLike) -> jax.Array:
    """Resamples each image by its predicted affine map.

    Args:
      x: images ``(N, H, W, C)``, floating point.

    Returns:
      The transformed images ``(N, H_out, W_out, C)`` with ``x``'s dtype;
      ``(H_out, W_out)`` is ``output_shape`` or the input's ``(H, W)``.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
      raise ValueError(f"SpatialTransformer: expected images of shape (N, H, W, C), but got shape {x.shape}")
    theta = self.theta(x).astype(jnp.promote_types(x.dtype, jnp.float32))
    height, width = self.output_shape or x.shape[1:3]
    grid = affine_grid(theta, (x.shape[0], x.shape[-1], height, width), self.align_corners)
    return grid_sample(x, grid, self.mode, self.padding_mode, self.align_corners, channels_last=True)


class Warp(nnx.Module):
  """Warps images by pixel-displacement fields (:func:`jaxgridsample.warp`) as an NNX layer.

  No parameters: ``Warp()(image, flow)`` is ``warp(image, flow, ...)`` with
  the options fixed at construction, channels-last by default (Flax's
  layout). Useful after a network that predicts a flow (registration,
  optical flow).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxgridsample.nnx import Warp
    >>> image = jnp.arange(6.0, dtype=jnp.float32).reshape(1, 2, 3, 1)
    >>> flow = jnp.zeros((1, 2, 3, 2), dtype=jnp.float32).at[..., 1].set(1.0)  # read 1 px below
    >>> Warp()(image, flow)[..., 0]
    Array([[[3., 4., 5.],
            [3., 4., 5.]]], dtype=float32)
  """

  def __init__(
      self,
      mode: InterpolationMode = "bilinear",
      padding_mode: PaddingMode = "border",
      align_corners: bool = False,
      *,
      channels_last: bool = True,
  ):
    """Stores the sampling options.

    Args:
      mode, padding_mode, align_corners: as in ``warp``.
      channels_last: image layout; True for ``(N, H, W, C)`` (default) or
        ``(N, D, H, W, C)``, False for channels first.
    """
    image = jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32)
    check_warp_args(image, jax.ShapeDtypeStruct((1, 1, 1, 2), jnp.float32), mode, padding_mode, align_corners,
                    channels_last)
    self.mode = mode
    self.padding_mode = padding_mode
    self.align_corners = bool(align_corners)
    self.channels_last = bool(channels_last)

  def __call__(self, image: ArrayLike, flow: ArrayLike) -> jax.Array:
    """Samples ``output(p) = image(p + flow(p))``.

    Args:
      image: ``(N, H, W, C)`` or ``(N, D, H, W, C)`` (channels first if the
        layer was built with ``channels_last=False``).
      flow: displacements in pixels, ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``,
        x component first.

    Returns:
      The warped image, of ``image``'s shape and dtype.
    """
    return warp(image, flow, self.mode, self.padding_mode, self.align_corners,
                channels_last=self.channels_last)
