"""Benchmarks jaxgridsample against PyTorch's CPU grid_sample and a plain-autodiff JAX baseline.

Run from the repository root::

  python benchmarks/bench.py            # full run, a few minutes
  python benchmarks/bench.py --quick    # small shapes, few repetitions (< ~60 s)

Every workload times, in one process and interleaved in a shuffled order
within each repetition, six competitors:

* ``jgs fwd``: ``jaxgridsample.grid_sample`` forward, jit-compiled;
* ``jgs f+b``: ``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))`` with
  ``loss = sum(grid_sample(input, grid) * cotangent)`` (the hand-written VJP);
* ``torch fwd``: ``torch.nn.functional.grid_sample`` under ``torch.no_grad()``;
* ``torch f+b``: the same forward with ``requires_grad`` input and grid, then
  ``(out * cotangent).sum().backward()``;
* ``base fwd`` / ``base f+b``: the same JAX forward differentiated by JAX
  autodiff instead of the hand-written backward
  (``jaxgridsample._autodiff._forward``).

Results are printed as Markdown and written to ``results.md``,
``results.json`` and ``scaling.png`` next to this script (``results_quick.*``
and ``scaling_quick.png`` with ``--quick``, so a CI smoke run never overwrites
a full run; ``results_extra.*`` with ``--extra``, eight other common shapes;
a ``_single`` suffix with ``--single``, one timed call per competitor with no
pause, as a quick side-by-side script would time them).
See ``benchmarks/README.md`` for the meaning of every column.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import torch
import torch.nn.functional as F

import jaxgridsample
from jaxgridsample import _autodiff, grid_sample

HERE = Path(__file__).resolve().parent
# Whether the baseline's ``_autodiff._forward`` takes the layout as an argument
# (newer versions) or only channels-last values (older versions).
_FORWARD_HAS_LAYOUT = "channels_last" in inspect.signature(_autodiff._forward).parameters


@dataclasses.dataclass(frozen=True)
class Workload:
  """One benchmark configuration.

  Attributes:
    name: short identifier, usable with ``--workloads``.
    description: what the workload stands for.
    input_shape: channels-first input shape, (N, C, H, W) or (N, C, D, H, W).
    out_spatial: output spatial shape, (Ho, Wo) or (Do, Ho, Wo).
    mode: interpolation mode.
    padding_mode: padding mode.
    align_corners: corner convention.
    grid_range: grid values are uniform in ``[-grid_range, grid_range]``.
  """

  name: str
  description: str
  input_shape: tuple[int, ...]
  out_spatial: tuple[int, ...]
  mode: str
  padding_mode: str
  align_corners: bool
  grid_range: float = 1.1

  @property
  def grid_shape(self) -> tuple[int, ...]:
    return (self.input_shape[0], *self.out_spatial, len(self.out_spatial))

  @property
  def out_shape(self) -> tuple[int, ...]:
    return (self.input_shape[0], self.input_shape[1], *self.out_spatial)

  def shapes(self) -> str:
    return f"{_fmt_shape(self.input_shape)} → {'x'.join(map(str, self.out_spatial))}"


def _fmt_shape(shape) -> str:
  return "(" + ", ".join(map(str, shape)) + ")"


FULL_WORKLOADS = (
    Workload("warp_features", "feature-map warping", (8, 32, 96, 96), (96, 96), "bilinear", "zeros", False),
    Workload("warp_image", "image warping", (4, 3, 384, 384), (384, 384), "bilinear", "border", True),
    Workload("downsample", "strong downsampling", (16, 16, 128, 128), (32, 32), "bilinear", "reflection",
             False),
    Workload("bicubic", "bicubic", (4, 8, 128, 128), (128, 128), "bicubic", "zeros", False),
    Workload("nearest", "nearest", (8, 16, 128, 128), (128, 128), "nearest", "border", True),
    Workload("trilinear", "trilinear volume", (2, 8, 48, 48, 48), (48, 48, 48), "bilinear", "zeros", False),
)

QUICK_WORKLOADS = (
    Workload("warp_features", "feature-map warping", (2, 16, 48, 48), (48, 48), "bilinear", "zeros", False),
    Workload("warp_image", "image warping", (2, 3, 96, 96), (96, 96), "bilinear", "border", True),
    Workload("downsample", "strong downsampling", (4, 16, 64, 64), (16, 16), "bilinear", "reflection", False),
    Workload("bicubic", "bicubic", (2, 8, 48, 48), (48, 48), "bicubic", "zeros", False),
    Workload("nearest", "nearest", (2, 16, 64, 64), (64, 64), "nearest", "border", True),
    Workload("trilinear", "trilinear volume", (1, 4, 16, 16, 16), (16, 16, 16), "bilinear", "zeros", False),
)

# Shapes beyond the six, from common uses, to look for cliffs (``--extra``).
EXTRA_WORKLOADS = (
    Workload("gray", "one-channel image", (4, 1, 256, 256), (256, 256), "bilinear", "zeros", False),
    Workload("deformable", "deformable attention: many channels, few points", (8, 256, 32, 32), (100, 4),
             "bilinear", "zeros", False),
    Workload("triplane", "NeRF triplane feature lookups", (3, 32, 256, 256), (1, 65536), "bilinear", "border",
             True),
    Workload("big_batch", "large batch of small maps", (64, 16, 32, 32), (32, 32), "bilinear", "zeros", False),
    Workload("upsample", "4x upsampling", (2, 8, 64, 64), (256, 256), "bilinear", "border", False),
    Workload("volume_nearest", "3-D nearest", (2, 4, 32, 32, 32), (32, 32, 32), "nearest", "zeros", True),
    Workload("bicubic_reflect", "bicubic, reflection, 3 channels", (2, 3, 256, 256), (256, 256), "bicubic",
             "reflection", True),
    Workload("volume_1ch", "one-channel trilinear volume", (1, 1, 96, 96, 96), (96, 96, 96), "bilinear",
             "border", True),
)

# Scaling sweeps (bilinear, zeros, align_corners=False): (label, input shape, output spatial).
FULL_SCALING = {
    "points": [(f"{s}²", (4, 16, 128, 128), (s, s)) for s in (32, 64, 128, 256)],
    "channels": [(f"C={c}", (4, c, 96, 96), (96, 96)) for c in (4, 8, 16, 32)],
}
QUICK_SCALING = {
    "points": [(f"{s}²", (2, 8, 32, 32), (s, s)) for s in (8, 16, 32, 64)],
    "channels": [(f"C={c}", (2, c, 32, 32), (32, 32)) for c in (4, 8, 16, 32)],
}

WORKLOAD_COMPETITORS = ("jgs_fwd", "jgs_fb", "torch_fwd", "torch_fb", "base_fwd", "base_fb")
SCALING_COMPETITORS = ("jgs_fwd", "jgs_fb", "torch_fwd", "torch_fb")


# ----------------------------------------------------------------------------- environment


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def library_version() -> dict:
  """Which jaxgridsample was benchmarked: version, git commit, local changes, source hash."""
  package_dir = Path(jaxgridsample.__file__).resolve().parent
  kernel_dir = package_dir.parent / "csrc"  # the compiled kernel's sources, in a source checkout
  sources = sorted(package_dir.glob("*.py")) + sorted(kernel_dir.glob("*.cc"))
  digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:12]
  info = {"version": jaxgridsample.__version__, "path": str(package_dir), "source_sha256": digest,
          "commit": None, "modified": None}
  try:
    def git(*cmd):
      return subprocess.run(["git", *cmd], cwd=package_dir, capture_output=True, text=True, check=True,
                            timeout=10).stdout.strip()
    info["commit"] = git("rev-parse", "--short", "HEAD")
    watched = ["."] + (["../csrc"] if kernel_dir.is_dir() else [])
    info["modified"] = bool(git("status", "--porcelain", "--", *watched))
  except (OSError, subprocess.SubprocessError):
    pass
  return info


def _default_implementation() -> str:
  """Which implementation grid_sample chooses here ("cpu": the compiled kernel, with its ISA; "xla")."""
  try:
    from jaxgridsample import _cpu_kernel  # noqa: PLC0415
    from jaxgridsample._api import choose_implementation  # noqa: PLC0415
  except ImportError:  # versions before the compiled kernel
    return "xla"
  choice = choose_implementation(None, (2, 2))
  if choice == "cpu":
    return f"cpu ({_cpu_kernel.loaded_isa()} build of the compiled kernel)"
  return f"xla ({_cpu_kernel.unavailable_reason() or 'not the CPU backend'})"


def environment(num_threads: int) -> dict:
  """Machine and library versions for the header."""
  try:
    affinity = len(os.sched_getaffinity(0))
  except AttributeError:
    affinity = None
  return {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "cpu": cpu_model(),
      "os_cpu_count": os.cpu_count(),
      "cpu_affinity": affinity,
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "jax_backend": jax.default_backend(),
      "jax_devices": [str(d) for d in jax.devices()],
      "torch": torch.__version__,
      "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
      "torch_num_threads": num_threads,
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "block_calls": PATTERN["block_calls"],
      "pause_s": PATTERN["pause_s"],
      "jaxgridsample": library_version(),
      "baseline_layout_arg": _FORWARD_HAS_LAYOUT,
      "jgs_implementation": _default_implementation(),
      "load_average_start": load_average(),
  }


# ----------------------------------------------------------------------------- competitors


def make_data(workload_input_shape, grid_shape, out_shape, grid_range, seed):
  """Random float32 input, grid and cotangent as NumPy arrays."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(workload_input_shape, dtype=np.float32)
  g = rng.uniform(-grid_range, grid_range, grid_shape).astype(np.float32)
  cot = rng.standard_normal(out_shape, dtype=np.float32)
  return x, g, cot


def jax_functions(mode, padding_mode, align_corners):
  """(jgs forward, jgs loss, baseline forward, baseline loss), all channels first."""

  def jgs_fwd(x, g):
    return grid_sample(x, g, mode, padding_mode, align_corners)

  def base_fwd(x, g):
    if _FORWARD_HAS_LAYOUT:
      return _autodiff._forward(x, g, mode, padding_mode, align_corners, False)
    out = _autodiff._forward(jnp.moveaxis(x, 1, -1), g, mode, padding_mode, align_corners)
    return jnp.moveaxis(out, -1, 1)

  def loss_of(fwd):
    def loss(x, g, cot):
      return jnp.sum(fwd(x, g) * cot)
    return loss

  return jgs_fwd, loss_of(jgs_fwd), base_fwd, loss_of(base_fwd)


def compile_timed(fn, *args) -> tuple[Callable, float]:
  """``jax.jit(fn).lower(*args).compile()`` and the seconds it took."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def memory_stats(compiled, input_bytes: int) -> dict:
  """Temporary, argument and output bytes of a compiled program."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  temp = int(stats.temp_size_in_bytes)
  return {
      "temp_bytes": temp,
      "argument_bytes": int(stats.argument_size_in_bytes),
      "output_bytes": int(stats.output_size_in_bytes),
      "temp_over_input_grid": temp / input_bytes,
  }


def build_competitors(input_shape, out_spatial, mode, padding_mode, align_corners, grid_range, seed,
                      with_baseline: bool):
  """Compiles the JAX programs and wraps every competitor as a zero-argument callable.

  Returns:
    (callables, compile seconds, memory stats, accuracy checks).
  """
  ndim = len(out_spatial)
  grid_shape = (input_shape[0], *out_spatial, ndim)
  out_shape = (input_shape[0], input_shape[1], *out_spatial)
  x_np, g_np, cot_np = make_data(input_shape, grid_shape, out_shape, grid_range, seed)
  x, g, cot = jax.device_put(x_np), jax.device_put(g_np), jax.device_put(cot_np)
  input_bytes = x_np.nbytes + g_np.nbytes

  jgs_fwd, jgs_loss, base_fwd, base_loss = jax_functions(mode, padding_mode, align_corners)
  programs = {
      "jgs_fwd": (jgs_fwd, (x, g)),
      "jgs_fb": (jax.value_and_grad(jgs_loss, argnums=(0, 1)), (x, g, cot)),
  }
  if with_baseline:
    programs["base_fwd"] = (base_fwd, (x, g))
    programs["base_fb"] = (jax.value_and_grad(base_loss, argnums=(0, 1)), (x, g, cot))

  callables, compile_s, memory = {}, {}, {}
  for name, (fn, args) in programs.items():
    compiled, seconds = compile_timed(fn, *args)
    compile_s[name] = seconds
    memory[name] = memory_stats(compiled, input_bytes)
    callables[name] = (lambda c=compiled, a=args: jax.block_until_ready(c(*a)))

  tx, tg, tcot = (torch.from_numpy(a.copy()) for a in (x_np, g_np, cot_np))
  tx_req = tx.clone().requires_grad_(True)
  tg_req = tg.clone().requires_grad_(True)
  torch_kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)

  def torch_fwd():
    with torch.no_grad():
      return F.grid_sample(tx, tg, **torch_kwargs)

  def torch_fb():
    tx_req.grad = None
    tg_req.grad = None
    out = F.grid_sample(tx_req, tg_req, **torch_kwargs)
    loss = (out * tcot).sum()
    loss.backward()
    return loss, tx_req.grad, tg_req.grad

  callables["torch_fwd"] = torch_fwd
  callables["torch_fb"] = torch_fb

  # Sanity check that both libraries compute the same thing (also a warm-up).
  out_j = np.asarray(callables["jgs_fwd"]())
  out_t = torch_fwd().numpy()
  _, (gx_j, gg_j) = callables["jgs_fb"]()
  _, gx_t, gg_t = torch_fb()

  def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

  checks = {
      "fwd_max_abs_err": float(np.max(np.abs(out_j - out_t))),
      "grad_input_rel_err": rel_err(gx_j, gx_t.numpy()),
      "grad_grid_rel_err": rel_err(gg_j, gg_t.numpy()),
      "input_grid_bytes": input_bytes,
  }
  return callables, compile_s, memory, checks


# PyTorch's OpenMP threads busy-wait for milliseconds after a call (about
# 10 ms here); jaxgridsample's kernel workers and XLA's pool sleep at once. A
# call right after a torch call therefore shares the cores with a spinning
# thread. By default each competitor thus runs as a block of calls of which
# only the last is timed, so every timed call follows a call of its own
# library, as in a real program.
BLOCK_CALLS = 3

# A short sleep before each block lets the previous competitor's spinning
# threads park. Besides, the order of the competitors is shuffled afresh in
# every repetition. With a fixed cyclic order (rotating only the starting
# competitor) each one nearly always followed the same neighbour, and the
# "base" forward, the very same compiled program as ours, read 0.56-0.98x of
# our forward's median; shuffled with the pause, it reads 0.91-1.07x.
PAUSE_S = 0.02

# ``--single``: the harsher pattern a quick side-by-side script uses. One
# timed call per competitor, no pause, so a call often follows a torch call
# while torch's threads still spin.
SINGLE_BLOCK_CALLS = 1
SINGLE_PAUSE_S = 0.0

# The pattern in use; main() switches it for --single.
PATTERN = {"block_calls": BLOCK_CALLS, "pause_s": PAUSE_S}


def time_interleaved(callables: dict[str, Callable], repeats: int, warmup: int,
                     seed: int) -> dict[str, list[float]]:
  """Times every callable ``repeats`` times, in a shuffled order within each repetition.

  Within a repetition each competitor sleeps ``PATTERN["pause_s"]``, then
  runs ``PATTERN["block_calls"]`` times in a row, and only the last call is
  timed (see ``BLOCK_CALLS``). The order is a fresh random permutation (from
  ``seed``) in every repetition, so that no competitor systematically follows
  another. Returns seconds per call.
  """
  names = list(callables)
  for _ in range(warmup):
    for name in names:
      callables[name]()
  rng = np.random.default_rng(seed)
  samples = {name: [] for name in names}
  gc_was_enabled = gc.isenabled()
  gc.disable()
  try:
    for _ in range(repeats):
      for index in rng.permutation(len(names)):
        fn = callables[names[index]]
        if PATTERN["pause_s"]:
          time.sleep(PATTERN["pause_s"])
        for _ in range(PATTERN["block_calls"] - 1):
          fn()
        start = time.perf_counter()
        fn()
        samples[names[index]].append(time.perf_counter() - start)
  finally:
    if gc_was_enabled:
      gc.enable()
  return samples


def summarise(samples: list[float]) -> dict:
  """Median and quartiles, in milliseconds."""
  ms = sorted(s * 1e3 for s in samples)
  q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
  return {"median_ms": statistics.median(ms), "q1_ms": q[0], "q3_ms": q[2], "min_ms": ms[0],
          "samples_ms": ms}


# ----------------------------------------------------------------------------- runs


def run_workload(w: Workload, repeats: int, warmup: int, seed: int) -> dict:
  callables, compile_s, memory, checks = build_competitors(
      w.input_shape, w.out_spatial, w.mode, w.padding_mode, w.align_corners, w.grid_range, seed,
      with_baseline=True)
  input_grid_bytes = checks.pop("input_grid_bytes")
  samples = time_interleaved(callables, repeats, warmup, seed)
  times = {name: summarise(samples[name]) for name in WORKLOAD_COMPETITORS}
  med = {name: t["median_ms"] for name, t in times.items()}
  ratios = {
      "jgs_over_torch_fwd": med["jgs_fwd"] / med["torch_fwd"],
      "jgs_over_torch_fb": med["jgs_fb"] / med["torch_fb"],
      "base_over_jgs_fwd": med["base_fwd"] / med["jgs_fwd"],
      "base_over_jgs_fb": med["base_fb"] / med["jgs_fb"],
  }
  return {"workload": dataclasses.asdict(w), "shapes": w.shapes(), "times": times, "ratios": ratios,
          "compile_s": compile_s, "memory": memory, "checks": checks, "input_grid_bytes": input_grid_bytes}


def run_scaling(sweeps: dict, repeats: int, warmup: int, seed: int) -> dict:
  results = {}
  for sweep, configs in sweeps.items():
    rows = []
    for label, input_shape, out_spatial in configs:
      callables, _, _, checks = build_competitors(input_shape, out_spatial, "bilinear", "zeros", False, 1.1,
                                                   seed, with_baseline=False)
      samples = time_interleaved(callables, repeats, warmup, seed)
      times = {name: summarise(samples[name]) for name in SCALING_COMPETITORS}
      points = input_shape[0] * math.prod(out_spatial)
      rows.append({"label": label, "input_shape": input_shape, "out_spatial": out_spatial,
                   "points": points, "channels": input_shape[1], "times": times, "checks": checks})
      print(f"  scaling {sweep:8s} {label:6s} done", file=sys.stderr, flush=True)
    results[sweep] = rows
  return results


# ----------------------------------------------------------------------------- reporting


def _pattern_text(env: dict) -> str:
  calls, pause = env.get("block_calls", 1), env.get("pause_s", 0)
  if calls == 1 and not pause:
    return "one call per competitor, no pause"
  return f"blocks of {calls} calls after a {pause * 1e3:.0f} ms pause, the last call timed"


def _ms(t: dict) -> str:
  return f"{t['median_ms']:.2f}"


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  right = [i > 0 for i in range(len(header))]

  def line(cells):
    padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))
    return "| " + " | ".join(padded) + " |"

  rules = (("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1)) for w, r in zip(widths, right, strict=True))
  sep = "|" + "|".join(rules) + "|"
  return "\n".join([line(header), sep] + [line(r) for r in rows])


def render(env: dict, args: argparse.Namespace, workloads: list[dict], scaling: dict | None) -> str:
  lib = env["jaxgridsample"]
  flag = " (--quick)" if args.quick else " (--extra)" if args.extra else ""
  out = [f"# jaxgridsample benchmark{flag}", ""]
  out += [
      f"- date: {env['date']}",
      f"- machine: {env['cpu']}, os.cpu_count() = {env['os_cpu_count']}"
      f" (affinity {env['cpu_affinity']}), {env['platform']}",
      f"- python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']} ({env['jax_backend']}),"
      f" torch {env['torch']}",
      f"- jaxgridsample {lib['version']} at commit {lib['commit']}"
      f"{' + uncommitted changes' if lib['modified'] else ''} (source sha256 {lib['source_sha256']});"
      f" baseline forward {'channels first' if env['baseline_layout_arg'] else 'channels last + moveaxis'};"
      f" jgs implementation {env.get('jgs_implementation', 'xla')}",
      f"- torch CPU capability: {env['torch_cpu_capability']};"
      f" torch.set_num_threads({env['torch_num_threads']});"
      f" OMP_WAIT_POLICY {env.get('omp_wait_policy') or 'unset (the default)'}",
      f"- load average (1, 5, 15 min): start {env['load_average_start']}, end {env.get('load_average_end')}",
      f"- repetitions: {args.repeats} (interleaved in a shuffled order, {_pattern_text(env)}; medians),"
      f" warm-up {args.warmup};"
      " float32; times in ms",
      "",
  ]
  if workloads:
    out += ["## Run time (median ms)", ""]
    header = ["workload", "shapes", "mode/pad/ac", "jgs fwd", "torch fwd", "jgs/torch fwd", "jgs f+b",
              "torch f+b", "jgs/torch f+b", "base fwd", "base f+b", "base/jgs fwd", "base/jgs f+b"]
    rows = []
    for r in workloads:
      w, t, q = r["workload"], r["times"], r["ratios"]
      rows.append([
          w["name"], r["shapes"], f"{w['mode']}/{w['padding_mode']}/{'T' if w['align_corners'] else 'F'}",
          _ms(t["jgs_fwd"]), _ms(t["torch_fwd"]), f"{q['jgs_over_torch_fwd']:.2f}",
          _ms(t["jgs_fb"]), _ms(t["torch_fb"]), f"{q['jgs_over_torch_fb']:.2f}",
          _ms(t["base_fwd"]), _ms(t["base_fb"]),
          f"{q['base_over_jgs_fwd']:.2f}", f"{q['base_over_jgs_fb']:.2f}",
      ])
    out += [markdown_table(header, rows), ""]

    out += ["## Spread (interquartile range, ms)", ""]
    header = ["workload"] + [n.replace("_fb", " f+b").replace("_fwd", " fwd") for n in WORKLOAD_COMPETITORS]
    rows = [[r["workload"]["name"]] + [f"{r['times'][n]['q1_ms']:.2f}–{r['times'][n]['q3_ms']:.2f}"
                                        for n in WORKLOAD_COMPETITORS] for r in workloads]
    out += [markdown_table(header, rows), ""]

    out += ["## Compile time (s) and agreement with torch", ""]
    header = ["workload", "jgs fwd", "jgs f+b", "base fwd", "base f+b", "fwd max abs err",
              "grad input rel err", "grad grid rel err"]
    rows = []
    for r in workloads:
      c, k = r["compile_s"], r["checks"]
      rows.append([r["workload"]["name"], f"{c['jgs_fwd']:.2f}", f"{c['jgs_fb']:.2f}", f"{c['base_fwd']:.2f}",
                   f"{c['base_fb']:.2f}", f"{k['fwd_max_abs_err']:.1e}", f"{k['grad_input_rel_err']:.1e}",
                   f"{k['grad_grid_rel_err']:.1e}"])
    out += [markdown_table(header, rows), ""]

    out += ["## Memory (XLA memory_analysis, MiB; ×: temp / bytes of input + grid)", ""]
    header = ["workload", "input+grid", "jgs fwd temp", "jgs f+b temp", "base fwd temp", "base f+b temp",
              "jgs fwd ×", "jgs f+b ×", "base fwd ×", "base f+b ×", "jgs f+b args", "jgs f+b out"]
    rows = []
    for r in workloads:
      m = r["memory"]
      if not all(m.values()):
        continue
      programs = ("jgs_fwd", "jgs_fb", "base_fwd", "base_fb")
      rows.append([r["workload"]["name"], _mib(r["input_grid_bytes"])]
                  + [_mib(m[n]["temp_bytes"]) for n in programs]
                  + [f"{m[n]['temp_over_input_grid']:.1f}" for n in programs]
                  + [_mib(m["jgs_fb"]["argument_bytes"]), _mib(m["jgs_fb"]["output_bytes"])])
    if rows:
      out += [markdown_table(header, rows), ""]

  if scaling:
    for sweep, title in (("points", "Scaling with output points"), ("channels", "Scaling with channels")):
      rows_in = scaling.get(sweep) or []
      if not rows_in:
        continue
      first = rows_in[0]
      if sweep == "points":
        fixed = f"input {_fmt_shape(first['input_shape'])}"
      else:
        fixed = f"N={first['input_shape'][0]}, {'x'.join(map(str, first['input_shape'][2:]))} → " \
                f"{'x'.join(map(str, first['out_spatial']))}"
      out += [f"## {title} (bilinear, zeros, align_corners=False; {fixed}; median ms)", ""]
      header = ["config", "points", "C", "jgs fwd", "torch fwd", "jgs/torch fwd", "jgs f+b", "torch f+b",
                "jgs/torch f+b"]
      rows = []
      for r in rows_in:
        t = r["times"]
        rows.append([r["label"], str(r["points"]), str(r["channels"]), _ms(t["jgs_fwd"]), _ms(t["torch_fwd"]),
                     f"{t['jgs_fwd']['median_ms'] / t['torch_fwd']['median_ms']:.2f}", _ms(t["jgs_fb"]),
                     _ms(t["torch_fb"]), f"{t['jgs_fb']['median_ms'] / t['torch_fb']['median_ms']:.2f}"])
      out += [markdown_table(header, rows), ""]
  return "\n".join(out)


def plot_scaling(scaling: dict, path: Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  styles = {
      "jgs_fwd": dict(color="tab:blue", linestyle="-", marker="o", label="jaxgridsample fwd"),
      "jgs_fb": dict(color="tab:blue", linestyle="--", marker="s", label="jaxgridsample fwd+bwd"),
      "torch_fwd": dict(color="tab:orange", linestyle="-", marker="o", label="torch fwd"),
      "torch_fb": dict(color="tab:orange", linestyle="--", marker="s", label="torch fwd+bwd"),
  }
  panels = (("points", "points", "output points (N·Ho·Wo)"), ("channels", "channels", "channels C"))
  for ax, (sweep, xkey, xlabel) in zip(axes, panels, strict=True):
    rows = scaling.get(sweep) or []
    if not rows:
      ax.set_visible(False)
      continue
    xs = [r[xkey] for r in rows]
    for name, style in styles.items():
      ax.plot(xs, [r["times"][name]["median_ms"] for r in rows], **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("median time (ms)")
    first = rows[0]
    if sweep == "points":
      ax.set_title(f"input {_fmt_shape(first['input_shape'])}, bilinear/zeros")
    else:
      out_size = "x".join(map(str, first["out_spatial"]))
      ax.set_title(f"N={first['input_shape'][0]}, {out_size} out, bilinear/zeros")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small shapes and few repetitions (< ~60 s)")
  parser.add_argument("--extra", action="store_true",
                      help="the extra workloads (other common shapes) instead of the issue's six")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed repetitions per competitor (default 25, or 5 with --quick)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed calls per competitor (default 3, or 1 with --quick)")
  names = ",".join(w.name for w in FULL_WORKLOADS)
  extra_names = ",".join(w.name for w in EXTRA_WORKLOADS)
  parser.add_argument("--workloads", default=None,
                      help=f"comma-separated subset of: {names} (with --extra: {extra_names})")
  parser.add_argument("--single", action="store_true",
                      help="time one call per competitor with no pause (see SINGLE_BLOCK_CALLS); "
                           "results get a _single suffix")
  parser.add_argument("--no-plot", action="store_true", help="do not write the scaling plot")
  parser.add_argument("--no-scaling", action="store_true", help="skip the scaling sweeps")
  parser.add_argument("--output-dir", type=Path, default=HERE, help="where to write results (default: here)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.repeats is None:
    args.repeats = 5 if args.quick else 25
  if args.warmup is None:
    args.warmup = 1 if args.quick else 3
  if args.repeats < 1:
    parser.error("--repeats must be at least 1")
  if args.quick and args.extra:
    parser.error("--extra has full-size shapes only; it cannot be combined with --quick")
  catalogue = EXTRA_WORKLOADS if args.extra else QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
  names = ",".join(w.name for w in catalogue)
  if args.workloads is None:
    args.selected = list(catalogue)
  else:
    wanted = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {w.name for w in catalogue})
    if unknown:
      parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {names}")
    args.selected = [w for w in catalogue if w.name in wanted]
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.single:
    PATTERN.update(block_calls=SINGLE_BLOCK_CALLS, pause_s=SINGLE_PAUSE_S)
  start = time.perf_counter()
  num_threads = os.cpu_count() or 1
  torch.set_num_threads(num_threads)
  env = environment(torch.get_num_threads())
  print(f"torch.set_num_threads({torch.get_num_threads()}); JAX backend {jax.default_backend()}, "
        f"os.cpu_count() = {num_threads}; load average {env['load_average_start']}", file=sys.stderr)

  # Pay JAX's one-time backend and tracing set-up before any compile is timed.
  jax.block_until_ready(jax.jit(lambda a: a * 2)(jnp.ones(4)))

  workloads = []
  for i, w in enumerate(args.selected):
    workloads.append(run_workload(w, args.repeats, args.warmup, args.seed + i))
    gc.collect()
    print(f"  workload {w.name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

  scaling = None
  if not args.no_scaling:
    sweeps = QUICK_SCALING if args.quick else FULL_SCALING
    scaling = run_scaling(sweeps, args.repeats, args.warmup, args.seed + 100)

  env["load_average_end"] = load_average()
  env["wall_time_s"] = round(time.perf_counter() - start, 1)
  report = render(env, args, workloads, scaling)
  print(report)
  print(f"(wall time {env['wall_time_s']} s)")

  suffix = ("_quick" if args.quick else "_extra" if args.extra else "") + ("_single" if args.single else "")
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / f"results{suffix}.md").write_text(report + "\n")
  payload = {"environment": env,
             "settings": {"quick": args.quick, "extra": args.extra, "repeats": args.repeats, "warmup": args.warmup,
                          "seed": args.seed},
             "workloads": workloads, "scaling": scaling}
  (args.output_dir / f"results{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")
  if scaling and not args.no_plot:
    title = f"jaxgridsample vs torch {torch.__version__} CPU ({env['cpu']}, {num_threads} threads)"
    plot_scaling(scaling, args.output_dir / f"scaling{suffix}.png", title)


if __name__ == "__main__":
  main()
