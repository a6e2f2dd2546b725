"""jaxgridsample: PyTorch-exact, differentiable grid_sample and affine_grid for JAX."""

from ._affine import affine_grid as affine_grid
from ._api import grid_sample as grid_sample

__version__ = "0.1.0"

__all__ = ["affine_grid", "grid_sample"]
