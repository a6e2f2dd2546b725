"""Quickstart: rotate, zoom and elastically deform a photo, in every mode and padding.

A photo (scikit-image's bundled astronaut) is resampled at ``affine_grid``
(a rotation and a zoom out, so that the padding shows around it) plus a
smooth random displacement field, with every interpolation mode (bilinear,
nearest, bicubic) and every padding mode (zeros, border, reflection). The
output is rendered at twice the input's resolution so that the modes'
differences are visible. The displacement field itself is made with
``grid_sample``: a coarse random lattice upsampled bicubically.

Run:
  python examples/quickstart.py            # 128 px photo, 256 px panels
  python examples/quickstart.py --quick    # 64 px photo, 128 px panels
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import skimage.data
import skimage.transform
from tqdm import tqdm

from jaxgridsample import affine_grid, flow_to_grid, grid_sample, identity_grid

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
FIGURES = pathlib.Path(__file__).resolve().parent / "figures"


def load_photo(size: int) -> jnp.ndarray:
  """The astronaut photo as (1, 3, size, size) float32 in [0, 1]."""
  photo = skimage.transform.resize(skimage.data.astronaut(), (size, size), anti_aliasing=True)
  return jnp.asarray(np.moveaxis(photo, -1, 0)[None], jnp.float32)


def rotation_zoom(angle_degrees: float, zoom: float) -> jnp.ndarray:
  """theta (1, 2, 3) of a rotation about the centre; zoom > 1 zooms out.

  theta maps output to input coordinates, so scaling it by ``zoom`` shows
  ``zoom`` times more of the input: the photo shrinks and padding appears.
  """
  a = np.deg2rad(angle_degrees)
  rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0]])
  return jnp.asarray(zoom * rotation, jnp.float32)[None]


def smooth_random_flow(key: jax.Array, size: int, lattice: int, amplitude: float) -> jnp.ndarray:
  """A smooth displacement field (1, size, size, 2) in pixels.

  Random displacements on a ``lattice`` x ``lattice`` grid of control points,
  upsampled with bicubic ``grid_sample`` (align_corners=True puts the control
  points on the corner pixels' centres).
  """
  coarse = amplitude * jax.random.normal(key, (1, 2, lattice, lattice), jnp.float32)
  fine = identity_grid((size, size), align_corners=True, dtype=jnp.float32)[None]
  flow = grid_sample(coarse, fine, "bicubic", "border", align_corners=True)  # (1, 2, size, size)
  return jnp.moveaxis(flow, 1, -1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small images, a few seconds")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", type=pathlib.Path, default=FIGURES / "quickstart.png")
  args = parser.parse_args()
  start = time.perf_counter()

  size = 64 if args.quick else 128
  out_size = 2 * size
  photo = load_photo(size)
  theta = rotation_zoom(angle_degrees=25.0, zoom=1.35)
  affine = affine_grid(theta, (1, 3, out_size, out_size), align_corners=False)
  # Displacements in output pixels, turned into normalised units (which do not
  # depend on resolution) so that they add to the affine grid.
  flow = smooth_random_flow(jax.random.key(args.seed), out_size, lattice=5, amplitude=0.04 * out_size)
  elastic = flow_to_grid(flow) - identity_grid((out_size, out_size), dtype=jnp.float32)[None]
  grid = affine + elastic

  results = {}
  for mode, padding in tqdm([(m, p) for m in MODES for p in PADDINGS], desc="grid_sample"):
    results[mode, padding] = grid_sample(photo, grid, mode, padding, align_corners=False)
  affine_only = grid_sample(photo, affine, "bilinear", "zeros")
  elastic_only = grid_sample(photo, identity_grid((out_size, out_size))[None] + elastic, "bilinear", "border")

  def show(ax, image, title):
    ax.imshow(np.clip(np.moveaxis(np.asarray(image[0]), 0, -1), 0, 1), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()

  fig, axes = plt.subplots(4, 3, figsize=(9, 12.4))
  show(axes[0, 0], photo, f"input ({size}x{size})")
  show(axes[0, 1], affine_only, "affine_grid: rotate 25°, zoom out\n(bilinear, zeros)")
  show(axes[0, 2], elastic_only, "smooth random displacement\n(bilinear, border)")
  for i, mode in enumerate(MODES):
    for j, padding in enumerate(PADDINGS):
      show(axes[i + 1, j], results[mode, padding], f"affine + elastic: {mode}, {padding}")
  fig.suptitle(f"jaxgridsample.grid_sample, {out_size}x{out_size} output", fontsize=11)
  fig.tight_layout()
  args.output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.output, dpi=60 if args.quick else 80)
  print(f"Rendered {len(results) + 2} images in {time.perf_counter() - start:.1f} s")
  print(f"Figure saved to {args.output}")


if __name__ == "__main__":
  main()
