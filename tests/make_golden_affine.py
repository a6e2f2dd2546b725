"""Regenerates tests/golden/affine_grid.npz from PyTorch (the oracle).

Run from the repository root with torch==2.13.0 installed:

    python tests/make_golden_affine.py

For 2-D and 3-D, both align_corners values and float32/float64 it stores a few
random thetas (sizes including unit axes), a random cotangent, and torch's
grid and theta gradient. ``test_affine_grid.py`` checks parity against these
values without needing torch.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

try:
  import torch
  import torch.nn.functional as F
except ImportError:
  torch = None

GOLDEN = pathlib.Path(__file__).parent / "golden" / "affine_grid.npz"
SEED = 20260611
# Spatial sizes per rank: odd and even lengths, unit axes, one long axis.
SPATIAL = {
    2: [(5, 7), (1, 6), (4, 1), (1, 1), (6, 8), (2, 17)],
    3: [(3, 4, 5), (1, 3, 2), (2, 1, 6), (6, 5, 1), (1, 1, 1), (3, 5, 7)],
}


def torch_affine_grid(theta: np.ndarray, size, align_corners: bool, cotangent: np.ndarray):
  """Runs torch's affine_grid and its backward on NumPy arrays; returns (grid, grad_theta)."""
  t = torch.tensor(theta, requires_grad=True)
  with warnings.catch_warnings():  # the unit-size warning under align_corners=True
    warnings.simplefilter("ignore", UserWarning)
    grid = F.affine_grid(t, list(size), align_corners=align_corners)
  (grad,) = torch.autograd.grad(grid, t, torch.tensor(cotangent))
  return grid.detach().numpy(), grad.numpy()


def main() -> None:
  if torch is None:
    raise SystemExit("make_golden_affine.py needs torch==2.13.0")
  rng = np.random.default_rng(SEED)
  arrays = {}
  index = 0
  for ndim, spatials in SPATIAL.items():
    for spatial in spatials:
      for align_corners in (False, True):
        for dtype in (np.float32, np.float64):
          batch = int(rng.integers(1, 3))
          size = (batch, int(rng.integers(1, 4)), *spatial)
          theta = rng.uniform(-2, 2, (batch, ndim, ndim + 1)).astype(dtype)
          cotangent = rng.normal(size=(batch, *spatial, ndim)).astype(dtype)
          grid, grad = torch_affine_grid(theta, size, align_corners, cotangent)
          prefix = f"{index:03d}"
          arrays[f"{prefix}/size"] = np.array(size, np.int64)
          arrays[f"{prefix}/align_corners"] = np.array(align_corners)
          arrays[f"{prefix}/theta"] = theta
          arrays[f"{prefix}/cotangent"] = cotangent
          arrays[f"{prefix}/grid"] = grid
          arrays[f"{prefix}/grad_theta"] = grad
          index += 1
  GOLDEN.parent.mkdir(exist_ok=True)
  np.savez_compressed(GOLDEN, torch_version=np.array(torch.__version__), **arrays)
  print(f"wrote {index} cases to {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
