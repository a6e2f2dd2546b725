"""Test configuration: float64 available, no silent rank promotion.

x64 is switched on for the whole session so that float64 cases can run; every
test states its dtypes explicitly, so float32 cases stay float32.
"""

import os

import jax
import pytest

from jaxgridsample import _cpu_kernel

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def require_cpu_kernel():
  """Skips if the compiled CPU kernel was switched off on purpose; fails if it is missing otherwise.

  A build that lost its kernel must not pass by quietly testing the pure-JAX
  implementation twice.
  """
  if os.environ.get(_cpu_kernel.ENVIRONMENT_VARIABLE, "").strip().lower() == "off":
    pytest.skip(f"{_cpu_kernel.ENVIRONMENT_VARIABLE}=off")
  reason = _cpu_kernel.unavailable_reason()
  assert reason is None, reason


@pytest.fixture(params=["xla", "cpu"])
def implementation(request):
  """Each of grid_sample's implementations: JAX operations, and the compiled CPU kernel."""
  if request.param == "cpu":
    require_cpu_kernel()
  return request.param


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: takes more than ~20 s or several GiB of memory (deselect with -m 'not slow')")
