"""Parity with PyTorch from committed golden values (runs without torch).

The values come from ``make_golden.py`` (torch 2.13.0, CPU): forward,
grad_input, grad_grid and the double backward, for every rank, mode, padding
and align_corners PyTorch supports, in float32 and float64, on grids full of
hard points.
"""

from __future__ import annotations

import pathlib

import cases
import numpy as np
import pytest
from jax_side import jax_grid_sample

GOLDEN = pathlib.Path(__file__).parent / "golden" / "grid_sample.npz"
FIELDS = ("out", "grad_input", "grad_grid", "dd_input", "dd_grid", "dd_grad_out")


GOLDEN_CASES = cases.load_golden(GOLDEN)


def _case_id(case):
  ndim, mode, padding, ac = case["meta"]
  return f"{ndim}d-{mode}-{padding}-ac{ac}-{case['inp'].dtype}"


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[_case_id(c) for c in GOLDEN_CASES])
def test_matches_torch_golden_values(case, implementation):
  ndim, mode, padding, ac = case["meta"]
  align_corners = ac == "True"
  ours = jax_grid_sample(case["inp"], case["grid"], case["grad_out"], str(mode), str(padding), align_corners,
                         ddot=(case["u"], case["w"]), implementation=implementation)
  for field in FIELDS:
    cases.assert_close(ours[field], case[field], case["inp"].dtype, what=field)


FAR_REFLECTION_CASES = cases.load_golden(GOLDEN.with_name("far_reflection.npz"))


@pytest.mark.parametrize("case", FAR_REFLECTION_CASES, ids=[_case_id(c) for c in FAR_REFLECTION_CASES])
def test_reflection_far_outside_a_wide_plane_matches_torch(case, implementation):
  """x far outside a 731-pixel row, where one rounding more than PyTorch's reads the wrong pixel."""
  ndim, mode, padding, ac = case["meta"]
  ours = jax_grid_sample(case["inp"], case["grid"], case["grad_out"], str(mode), str(padding), ac == "True",
                         implementation=implementation)
  for field in ("out", "grad_input", "grad_grid"):
    cases.assert_close(ours[field], case[field], case["inp"].dtype, what=field)


def test_golden_file_covers_every_combination():
  seen = {tuple(c["meta"]) + (str(c["inp"].dtype),) for c in GOLDEN_CASES}
  expected = {(str(n), m, p, str(a), np.dtype(d).name)
              for n, m, p, a in cases.combinations() for d in cases.DTYPES}
  assert seen == expected
