"""Test configuration: float64 available, no silent rank promotion.

x64 is switched on for the whole session so that float64 cases can run; every
test states its dtypes explicitly, so float32 cases stay float32.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: takes more than ~20 s or several GiB of memory (deselect with -m 'not slow')")
