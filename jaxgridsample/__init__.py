"""jaxgridsample: PyTorch-exact, differentiable grid_sample and affine_grid for JAX."""

from ._api import grid_sample as grid_sample

__version__ = "0.1.0"

__all__ = ["grid_sample"]
