"""Builds jaxgridsample's compiled CPU kernel (csrc/grid_sample_cpu.cc).

Everything else about the package is in pyproject.toml. The kernel is a
shared library of XLA FFI handlers, compiled against the FFI headers that
jaxlib ships; on x86-64 a second build with AVX2 and FMA is linked in beside
the baseline one, and jaxgridsample/_cpu_kernel.py registers the one the
processor supports. The kernel is optional: if it cannot be built (no C++17
compiler, no jaxlib headers), the package installs without it and runs its
pure-JAX implementation, with the same results.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -ffp-contract=off: no multiply-add contraction that PyTorch does not do (one
# ulp decides floor() at a pixel centre). -fno-trapping-math and
# -fno-math-errno change no result; they let the compiler select instead of
# branch, and vectorise.
COMPILE_FLAGS = ["-std=c++17", "-O3", "-g0", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-Wno-psabi"]
AVX2_SOURCE = "csrc/grid_sample_cpu_avx2.cc"


def _is_x86_64() -> bool:
  return platform.machine().lower() in ("x86_64", "amd64")


class BuildCpuKernel(build_ext):
  """build_ext that adds jaxlib's FFI headers and the AVX2 object, and never fails the install."""

  def build_extension(self, ext):
    try:
      import jaxlib  # noqa: PLC0415 - only the build needs it

      ext.include_dirs.append(os.path.join(os.path.dirname(jaxlib.__file__), "include"))
      if _is_x86_64() and self.compiler.compiler_type == "unix":
        ext.extra_objects = self.compiler.compile(
            [AVX2_SOURCE], output_dir=self.build_temp, include_dirs=ext.include_dirs,
            extra_postargs=COMPILE_FLAGS + ["-mavx2", "-mfma"])
      super().build_extension(ext)
    except Exception as error:  # noqa: BLE001 - any failure leaves the pure-JAX package
      print(f"jaxgridsample: the compiled CPU kernel was not built ({error}); "
            "grid_sample will use its pure-JAX implementation.", file=sys.stderr)

  def get_export_symbols(self, ext):
    # A library of FFI handlers loaded with ctypes, not a Python module: no PyInit_ to export.
    return []


setup(
    ext_modules=[
        Extension("jaxgridsample._grid_sample_cpu", sources=["csrc/grid_sample_cpu.cc"], language="c++",
                  extra_compile_args=COMPILE_FLAGS, depends=["csrc/grid_sample_cpu.cc", AVX2_SOURCE]),
    ],
    cmdclass={"build_ext": BuildCpuKernel},
)
