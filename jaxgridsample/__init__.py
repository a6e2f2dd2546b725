"""jaxgridsample: PyTorch-exact, differentiable grid_sample and affine_grid for JAX.

Flax NNX layers (SpatialTransformer, Warp) live in the optional submodule
``jaxgridsample.nnx``, which needs flax.
"""

from ._affine import affine_grid as affine_grid
from ._api import grid_sample as grid_sample
from ._warp import flow_to_grid as flow_to_grid
from ._warp import grid_to_flow as grid_to_flow
from ._warp import identity_grid as identity_grid
from ._warp import warp as warp

__version__ = "0.1.0"

__all__ = ["affine_grid", "flow_to_grid", "grid_sample", "grid_to_flow", "identity_grid", "warp"]
