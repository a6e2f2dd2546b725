"""Regenerates tests/golden/grid_sample.npz and far_reflection.npz from PyTorch (the oracle).

Run from the repository root with torch==2.13.0 installed:

    python tests/make_golden.py [--far-reflection-only]

For every combination PyTorch supports (rank, mode, padding, align_corners)
and dtype, grid_sample.npz stores two random cases with hard points (see
cases.py) and torch's forward, grad_input, grad_grid and double backward.
far_reflection.npz stores, for every reflection combination and dtype, one
case far outside a wide image (cases.make_far_reflection_case) and torch's
forward, grad_input and grad_grid. The suite then checks parity against these
values without needing torch.
"""

from __future__ import annotations

import itertools
import pathlib
import sys

import cases
import numpy as np
from torch_oracle import torch, torch_grid_sample

GOLDEN = pathlib.Path(__file__).parent / "golden" / "grid_sample.npz"
FAR_REFLECTION = GOLDEN.with_name("far_reflection.npz")
SEED = 20261124
FAR_REFLECTION_SEED = 20261205
CASES_PER_COMBINATION = 2


def write_cases(path: pathlib.Path, entries) -> None:
  """Saves (meta, arrays) pairs as keys "<index>/<field>", the layout cases.load_golden reads."""
  arrays = {}
  for index, (meta, fields) in enumerate(entries):
    arrays[f"{index:04d}/meta"] = np.array([str(m) for m in meta])
    for name, value in fields.items():
      arrays[f"{index:04d}/{name}"] = value
  path.parent.mkdir(exist_ok=True)
  np.savez_compressed(path, torch_version=np.array(torch.__version__), **arrays)
  print(f"wrote {len(entries)} cases to {path} ({path.stat().st_size / 1024:.0f} KiB)")


def write_far_reflection() -> None:
  rng = np.random.default_rng(FAR_REFLECTION_SEED)
  entries = []
  reflection = [c for c in cases.combinations() if c[2] == "reflection"]
  for (ndim, mode, padding, ac), dtype in itertools.product(reflection, cases.DTYPES):
    case = cases.make_far_reflection_case(rng, ndim, dtype)
    ref = torch_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac)
    entries.append(((ndim, mode, padding, ac), {**case, **ref}))
  write_cases(FAR_REFLECTION, entries)


def main() -> None:
  if torch is None:
    raise SystemExit("make_golden.py needs torch==2.13.0")
  write_far_reflection()
  if "--far-reflection-only" in sys.argv[1:]:
    return
  rng = np.random.default_rng(SEED)
  entries = []
  for ndim, mode, padding, ac in cases.combinations():
    for dtype in cases.DTYPES:
      for _ in range(CASES_PER_COMBINATION):
        case = cases.make_case(rng, ndim, mode, padding, ac, dtype)
        ref = torch_grid_sample(case["inp"], case["grid"], case["grad_out"], mode, padding, ac,
                                ddot=(case["u"], case["w"]))
        entries.append(((ndim, mode, padding, ac), {**case, **ref}))
  write_cases(GOLDEN, entries)


if __name__ == "__main__":
  main()
