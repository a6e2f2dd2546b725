"""Regenerates tests/golden/grid_sample.npz from PyTorch (the oracle).

Run from the repository root with torch==2.13.0 installed:

    python tests/make_golden.py

For every combination PyTorch supports (rank, mode, padding, align_corners)
and dtype, it stores two random cases with hard points (see cases.py) and
torch's forward, grad_input, grad_grid and double backward. The suite then
checks parity against these values without needing torch.
"""

from __future__ import annotations

import pathlib

import cases
import numpy as np
from torch_oracle import torch, torch_grid_sample

GOLDEN = pathlib.Path(__file__).parent / "golden" / "grid_sample.npz"
SEED = 20261124
CASES_PER_COMBINATION = 2


def main() -> None:
  if torch is None:
    raise SystemExit("make_golden.py needs torch==2.13.0")
  rng = np.random.default_rng(SEED)
  arrays = {}
  index = 0
  for ndim, mode, padding, ac in cases.combinations():
    for dtype in cases.DTYPES:
      for _ in range(CASES_PER_COMBINATION):
        case = cases.make_case(rng, ndim, mode, padding, ac, dtype)
        ref = torch_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac,
                                ddot=(case["u"], case["w"]))
        prefix = f"{index:04d}"
        arrays[f"{prefix}/meta"] = np.array([str(ndim), mode, padding, str(ac)])
        for name, value in {**case, **ref}.items():
          arrays[f"{prefix}/{name}"] = value
        index += 1
  GOLDEN.parent.mkdir(exist_ok=True)
  np.savez_compressed(GOLDEN, torch_version=np.array(torch.__version__), **arrays)
  print(f"wrote {index} cases to {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
