"""The compiled CPU kernel: loading, registration, and its JAX operations.

``csrc/grid_sample_cpu.cc`` implements the forward and the first-order
backward as XLA FFI handlers (built by ``setup.py`` into
``jaxgridsample/_grid_sample_cpu*.so``). XLA's own gathers and scatter-adds
on the CPU work one value at a time on one thread; the kernel computes each
point's taps once, in SIMD, shares them across channels, and splits the work
over XLA's intra-op threads.

The operations here take the layouts of ``_autodiff``: ``values`` (N, C,
*spatial_in) or channels-last (N, *spatial_in, C), ``points`` (N, P, ndim),
the output and its cotangent (N, C, P) or (N, P, C). Each is wrapped so that
it behaves like any other JAX operation:

* ``jax.vmap`` folds the mapped axis into the batch (``custom_vmap``);
* under a batch-sharded ``jit`` each device runs the kernel on its own shard,
  with no communication (``custom_partitioning``).

Set ``JAXGRIDSAMPLE_CPU_KERNEL`` to ``off`` to never use the kernel, or to
``generic`` to use its baseline build where the AVX2 one would run.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}

# The kernel addresses a channel's pixels with int32 offsets, which it adds up
# to about twice the pixel count.
MAX_PIXELS = 2**30 - 1

ENVIRONMENT_VARIABLE = "JAXGRIDSAMPLE_CPU_KERNEL"
_LIBRARY_STEM = "_grid_sample_cpu"
_ISAS = ("avx2", "generic")  # best first


def _library_path() -> pathlib.Path | None:
  here = pathlib.Path(__file__).resolve().parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = here / (_LIBRARY_STEM + suffix)
    if path.exists():
      return path
  return None


def _choose_isa(library, requested: str) -> str:
  supported = ["generic"]
  if hasattr(library, "JaxGridSampleForward_avx2") and getattr(library, "JaxGridSampleSupportsAvx2", lambda: 0)():
    supported.insert(0, "avx2")
  if requested in _ISAS:
    if requested not in supported:
      raise RuntimeError(f"{ENVIRONMENT_VARIABLE}={requested}, but this build or processor offers {supported}")
    return requested
  return supported[0]


def _target(isa: str, direction: str) -> str:
  return f"jaxgridsample_{isa}_{direction}"


@functools.cache
def _loaded() -> tuple[str | None, str]:
  """Loads and registers the kernel once: ``(isa, "")``, or ``(None, why not)``."""
  requested = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
  if requested == "off":
    return None, f"{ENVIRONMENT_VARIABLE}=off"
  path = _library_path()
  if path is None:
    return None, "jaxgridsample was installed without its compiled CPU kernel (see setup.py)"
  try:
    library = ctypes.CDLL(str(path))
    isa = _choose_isa(library, requested)
    for direction, symbol in (("forward", "JaxGridSampleForward"), ("backward", "JaxGridSampleBackward")):
      handler = getattr(library, f"{symbol}_{isa}")
      jax.ffi.register_ffi_target(_target(isa, direction), jax.ffi.pycapsule(handler), platform="cpu")
    _self_test(isa)
  except Exception as error:  # noqa: BLE001 - any failure leaves the pure-JAX implementation
    return None, f"the compiled CPU kernel at {path} could not be used: {error}"
  return isa, ""


def _self_test(isa: str) -> None:
  """Runs the kernel once, so that an ABI mismatch with this jaxlib shows up here, not in a user's program."""
  values = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
  grid = np.zeros((1, 1, 1, 2), np.float32)  # the centre: the mean of the four pixels
  with jax.ensure_compile_time_eval():
    out = np.asarray(jax.jit(_forward_op("bilinear", "zeros", False, False, isa, 2, 2))(values, grid))
  if out.shape != (1, 1, 1, 1) or out[0, 0, 0, 0] != 1.5:
    raise RuntimeError(f"self-test gave {out!r}, expected [[[[1.5]]]]")


def unavailable_reason() -> str | None:
  """None if the compiled kernel can be used, else why not."""
  isa, reason = _loaded()
  return None if isa is not None else reason


def loaded_isa() -> str | None:
  """The instruction set of the kernel build in use ("avx2" or "generic"), or None if there is none."""
  return _loaded()[0]


def usable_for(spatial_shape) -> bool:
  """Whether the kernel is loaded and can address an input of this spatial shape."""
  return unavailable_reason() is None and math.prod(spatial_shape) <= MAX_PIXELS


def _batch_parallel(call, rule: str):
  """Wraps ``call``, whose every operand and result has a leading batch axis, for vmap and batch sharding.

  Args:
    call: a function of arrays whose samples are independent along axis 0.
    rule: the Shardy sharding rule of ``call`` (einsum-like; factor ``n`` is
      the batch); every other axis stays whole on each device.
  """
  from jax.experimental.custom_partitioning import custom_partitioning  # noqa: PLC0415
  from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

  def batch_sharding(mesh, shape):
    # The operand's batch sharding (if any) for every operand and result.
    spec = shape.sharding.spec
    return NamedSharding(mesh, PartitionSpec(spec[0] if len(spec) else None))

  def infer_sharding_from_operands(mesh, arg_shapes, result_shape):
    sharding = batch_sharding(mesh, arg_shapes[0])
    return jax.tree.map(lambda _: sharding, result_shape)

  def partition(mesh, arg_shapes, result_shape):
    sharding = batch_sharding(mesh, arg_shapes[0])
    return mesh, call, jax.tree.map(lambda _: sharding, result_shape), (sharding,) * len(arg_shapes)

  partitioned = custom_partitioning(call)
  partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer_sharding_from_operands,
                            sharding_rule=rule)

  @jax.custom_batching.custom_vmap
  def op(*args):
    return partitioned(*args)

  @op.def_vmap
  def _fold_mapped_axis_into_batch(axis_size, in_batched, *args):
    args = [a if batched else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, batched in zip(args, in_batched)]
    outs = op(*(a.reshape((axis_size * a.shape[1],) + a.shape[2:]) for a in args))
    unfold = lambda o: o.reshape((axis_size, o.shape[0] // max(axis_size, 1)) + o.shape[1:])  # noqa: E731
    return jax.tree.map(unfold, outs), jax.tree.map(lambda _: True, outs)

  return op


def _rule_axes(ndim: int, channels_last: bool) -> tuple[str, str, str]:
  """Sharding-rule factors of values, points and the output; ``n`` is the batch."""
  spatial = "h w" if ndim == 2 else "d h w"
  values = f"n {spatial} c" if channels_last else f"n c {spatial}"
  return values, "n p k", "n p c" if channels_last else "n c p"


def _grid_rule_axes(out_ndim: int, channels_last: bool) -> tuple[str, str]:
  """Sharding-rule factors of an unflattened grid (N, *spatial_out, ndim) and of the output it gives."""
  spatial = " ".join(f"o{i}" for i in range(out_ndim))
  return f"n {spatial} k", f"n {spatial} c" if channels_last else f"n c {spatial}"


def _attributes(mode, padding_mode, align_corners, channels_last):
  return {"mode": np.int32(MODES[mode]), "padding": np.int32(PADDINGS[padding_mode]),
          "align_corners": bool(align_corners), "channels_last": bool(channels_last)}


@functools.cache
def _forward_op(mode: str, padding_mode: str, align_corners: bool, channels_last: bool, isa: str, ndim: int,
                out_ndim: int):
  attributes = _attributes(mode, padding_mode, align_corners, channels_last)

  def call(values, grid):
    # The kernel reads the points flat, (N, P, ndim), and writes its output in
    # the final shape: reshaping a flat (N, 1, P) result afterwards made XLA
    # copy it (a layout it does not see is the same for one channel).
    channels = values.shape[-1] if channels_last else values.shape[1]
    batch, out_spatial = grid.shape[0], grid.shape[1:-1]
    points = grid.reshape(batch, math.prod(out_spatial), ndim)
    shape = (batch, *out_spatial, channels) if channels_last else (batch, channels, *out_spatial)
    out = jax.ShapeDtypeStruct(shape, values.dtype)
    return jax.ffi.ffi_call(_target(isa, "forward"), out, vmap_method="broadcast_all")(values, points, **attributes)

  values = _rule_axes(ndim, channels_last)[0]
  grid, out = _grid_rule_axes(out_ndim, channels_last)
  return _batch_parallel(call, f"{values}, {grid} -> {out}")


@functools.cache
def _backward_op(mode: str, padding_mode: str, align_corners: bool, channels_last: bool, isa: str, ndim: int):
  attributes = _attributes(mode, padding_mode, align_corners, channels_last)

  def call(values, points, grad_out):
    results = (jax.ShapeDtypeStruct(values.shape, values.dtype), jax.ShapeDtypeStruct(points.shape, points.dtype))
    return tuple(jax.ffi.ffi_call(_target(isa, "backward"), results, vmap_method="broadcast_all")(
        values, points, grad_out, **attributes))

  values, points, out = _rule_axes(ndim, channels_last)
  return _batch_parallel(call, f"{values}, {points}, {out} -> {values}, {points}")


def _isa() -> str:
  isa, reason = _loaded()
  if isa is None:
    raise RuntimeError(f"jaxgridsample: {reason}")
  return isa


def forward(values, grid, *, mode, padding_mode, align_corners, channels_last):
  """The sampled values, (N, C, *spatial_out) or (N, *spatial_out, C), for a grid (N, *spatial_out, ndim).

  ``values`` and ``grid`` have one float dtype (float32 or float64).
  """
  op = _forward_op(mode, padding_mode, align_corners, channels_last, _isa(), grid.shape[-1], grid.ndim - 2)
  return op(values, grid)


def backward(values, points, grad_out, *, mode, padding_mode, align_corners, channels_last):
  """``(grad_values, grad_points)`` for the incoming gradient ``grad_out`` (the output's layout)."""
  op = _backward_op(mode, padding_mode, align_corners, channels_last, _isa(), points.shape[-1])
  return op(values, points, grad_out)
