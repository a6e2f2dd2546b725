"""Smoke tests: every example runs with ``--quick`` and saves its figure."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

# Example script -> the optional modules it imports (pip names in the comments).
REQUIREMENTS = {
    "quickstart.py": ("matplotlib", "skimage", "tqdm"),  # matplotlib scikit-image tqdm
    "spatial_transformer.py": ("flax", "optax", "sklearn", "matplotlib", "tqdm"),  # + flax optax scikit-learn
    "registration.py": ("optax", "skimage", "matplotlib", "tqdm"),
    "sharded.py": ("skimage", "matplotlib"),
}


@pytest.mark.parametrize("script", sorted(REQUIREMENTS))
def test_example_runs_quick(script, tmp_path):
  missing = [name for name in REQUIREMENTS[script] if importlib.util.find_spec(name) is None]
  if missing:
    pytest.skip(f"{script} needs {', '.join(missing)}")
  figure = tmp_path / f"{pathlib.Path(script).stem}.png"
  env = dict(os.environ, MPLBACKEND="Agg")
  env.pop("XLA_FLAGS", None)  # sharded.py sets its own device count
  result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--output", str(figure)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert figure.is_file() and figure.stat().st_size > 0
  assert f"Figure saved to {figure}" in result.stdout
