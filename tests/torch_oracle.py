"""PyTorch as the oracle: forward, first and second derivatives of grid_sample.

Imported only by tests that run when torch is installed (it is in CI) and by
``make_golden.py``; the package itself never imports torch.
"""

from __future__ import annotations

import numpy as np

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # the golden-value tests still run without torch
  torch = None


def torch_grid_sample(inp, grid, grad_out, mode, padding_mode, align_corners, ddot=None):
  """Runs torch's grid_sample and its backward on NumPy arrays.

  Args:
    inp, grid, grad_out: NumPy arrays (float32 or float64) of PyTorch's shapes.
    mode, padding_mode, align_corners: as for F.grid_sample.
    ddot: optional pair (u, w) of NumPy arrays shaped like inp and grid; if
      given, also returns the gradient of ``sum(grad_input * u) +
      sum(grad_grid * w)`` with respect to (inp, grid, grad_out): PyTorch's
      double backward.

  Returns:
    dict with "out", "grad_input", "grad_grid" and, with ddot, "dd_input",
    "dd_grid", "dd_grad_out".
  """
  ti = torch.tensor(inp, requires_grad=True)
  tg = torch.tensor(grid, requires_grad=True)
  tgo = torch.tensor(grad_out, requires_grad=ddot is not None)
  out = F.grid_sample(ti, tg, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
  gi, gg = torch.autograd.grad(out, (ti, tg), tgo, create_graph=ddot is not None)
  result = {"out": out.detach().numpy(), "grad_input": gi.detach().numpy(),
            "grad_grid": gg.detach().numpy()}
  if ddot is not None:
    u, w = ddot
    total = (gi * torch.tensor(u)).sum() + (gg * torch.tensor(w)).sum()
    second = torch.autograd.grad(total, (ti, tg, tgo), allow_unused=True)
    for name, like, value in zip(("dd_input", "dd_grid", "dd_grad_out"), (inp, grid, grad_out), second):
      result[name] = np.zeros_like(like) if value is None else value.detach().numpy()
  return result
