"""A spatial transformer network (Flax NNX + optax) on randomly distorted digits.

scikit-learn's bundled digits (1797 images, 8x8) are placed on a 32x32 canvas
with a random rotation, scale and translation (made with ``affine_grid`` and
``grid_sample`` themselves; fresh distortions every training step, a fixed
set for the test images). Two models are trained the same way:

* a small CNN classifier on the distorted canvases;
* the same CNN behind a ``jaxgridsample.nnx.SpatialTransformer``, whose
  localisation network learns, with no supervision but the class label, to
  predict an affine map that undoes the distortion.

Both test accuracies are printed, and a figure shows distorted test inputs
next to the transformer's rectified outputs.

Run:
  python examples/spatial_transformer.py            # 40 epochs each, a few minutes on 2 CPU cores
  python examples/spatial_transformer.py --quick    # 2 epochs on a subset, a smoke test
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from jaxgridsample import affine_grid, grid_sample
from jaxgridsample.nnx import SpatialTransformer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CANVAS = 32
FIGURES = pathlib.Path(__file__).resolve().parent / "figures"


def random_placement(key: jax.Array, batch: int) -> jax.Array:
  """theta (batch, 2, 3) mapping canvas coordinates to digit coordinates.

  ``theta = zoom * rotation`` plus a shift: the digit appears ``1 / zoom`` of
  the canvas wide (zoom 1.5 to 2.5: 13 to 21 of 32 pixels), turned by up to
  60 degrees, and shifted as far as it can go while staying on the canvas.
  """
  k_angle, k_zoom, k_shift = jax.random.split(key, 3)
  angle = jax.random.uniform(k_angle, (batch,), jnp.float32, -np.pi / 3, np.pi / 3)
  zoom = jax.random.uniform(k_zoom, (batch,), jnp.float32, 1.5, 2.5)
  shift = jax.random.uniform(k_shift, (batch, 2), jnp.float32, -1.0, 1.0) * (zoom - 1.0)[:, None]
  cos, sin = jnp.cos(angle) * zoom, jnp.sin(angle) * zoom
  rows = [jnp.stack([cos, -sin, shift[:, 0]], -1), jnp.stack([sin, cos, shift[:, 1]], -1)]
  return jnp.stack(rows, axis=1)


def distort(key: jax.Array, digits: jax.Array) -> jax.Array:
  """Places (N, 8, 8, 1) digits on (N, 32, 32, 1) canvases at random."""
  theta = random_placement(key, digits.shape[0])
  grid = affine_grid(theta, (digits.shape[0], 1, CANVAS, CANVAS))
  return grid_sample(digits, grid, "bilinear", "zeros", channels_last=True)


class CNN(nnx.Module):
  """Two conv/ReLU/max-pool blocks and two dense layers; (N, 32, 32, 1) -> 10 logits."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(32 * (CANVAS // 4) ** 2, 64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
    return self.out(x)


class STNClassifier(nnx.Module):
  """The same CNN behind a spatial transformer that starts as the identity."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.stn = SpatialTransformer(1, features=(16, 32), hidden=(64,), rngs=rngs)
    self.cnn = CNN(rngs=rngs)

  def __call__(self, x):
    return self.cnn(self.stn(x))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model, optimizer, digits, labels, key):
  """One optax step on freshly distorted digits; returns the batch loss."""
  canvases = distort(key, digits)
  loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(canvases), labels))(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def predict(model, canvases):
  return jnp.argmax(model(canvases), axis=-1)


def accuracy(model, canvases, labels, batch=256) -> float:
  correct = sum(int(jnp.sum(predict(model, canvases[i:i + batch]) == labels[i:i + batch]))
                for i in range(0, len(labels), batch))
  return correct / len(labels)


def train(name, model, train_digits, train_labels, test_canvases, test_labels, *, epochs, batch, seed):
  """Adam with a cosine schedule; returns (test accuracy, seconds, per-epoch losses)."""
  steps_per_epoch = len(train_labels) // batch
  schedule = optax.cosine_decay_schedule(2e-3, epochs * steps_per_epoch)
  optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  losses = []
  start = time.perf_counter()
  with tqdm(range(epochs), desc=name, unit="epoch") as bar:
    for _ in bar:
      order = rng.permutation(len(train_labels))
      epoch_loss = 0.0
      for i in range(steps_per_epoch):
        index = order[i * batch:(i + 1) * batch]
        key, step_key = jax.random.split(key)
        epoch_loss += float(train_step(model, optimizer, train_digits[index], train_labels[index], step_key))
      losses.append(epoch_loss / steps_per_epoch)
      bar.set_postfix(loss=f"{losses[-1]:.3f}")
  seconds = time.perf_counter() - start
  return accuracy(model, test_canvases, test_labels), seconds, losses


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 epochs on a subset (smoke test)")
  parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default 40, quick 2)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", type=pathlib.Path, default=FIGURES / "spatial_transformer.png")
  args = parser.parse_args()
  epochs = args.epochs or (2 if args.quick else 40)

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
  train_x, test_x, train_y, test_y = train_test_split(images, digits.target, test_size=0.25,
                                                      random_state=args.seed, stratify=digits.target)
  if args.quick:
    train_x, train_y, test_x, test_y = train_x[:256], train_y[:256], test_x[:128], test_y[:128]
  test_canvases = distort(jax.random.key(10_000 + args.seed), jnp.asarray(test_x))
  train_x, train_y, test_y = jnp.asarray(train_x), jnp.asarray(train_y), jnp.asarray(test_y)
  print(f"{len(train_y)} training and {len(test_y)} test digits on {CANVAS}x{CANVAS} canvases, "
        f"{epochs} epochs per model")

  run = functools.partial(train, train_digits=train_x, train_labels=train_y, test_canvases=test_canvases,
                          test_labels=test_y, epochs=epochs, batch=args.batch, seed=args.seed)
  cnn = CNN(rngs=nnx.Rngs(args.seed))
  cnn_accuracy, cnn_seconds, cnn_losses = run("CNN", cnn)
  stn = STNClassifier(rngs=nnx.Rngs(args.seed))
  stn_accuracy, stn_seconds, stn_losses = run("STN + CNN", stn)
  print(f"Test accuracy, CNN alone:        {100 * cnn_accuracy:.1f}%  (trained in {cnn_seconds:.0f} s)")
  print(f"Test accuracy, STN + same CNN:   {100 * stn_accuracy:.1f}%  (trained in {stn_seconds:.0f} s)")

  shown = 10
  rectified = np.asarray(stn.stn(test_canvases[:shown]))
  predicted = np.asarray(predict(stn, test_canvases[:shown]))
  fig = plt.figure(figsize=(13, 3.6), layout="constrained")
  left, right = fig.subfigures(1, 2, width_ratios=[3.2, 1])
  axes = left.subplots(2, shown)
  for i in range(shown):
    for row, (images_row, title) in enumerate([(test_canvases, "distorted"), (rectified, "rectified")]):
      ax = axes[row, i]
      ax.imshow(np.asarray(images_row[i, ..., 0]), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 1:
        ax.set_xlabel(f"label {int(test_y[i])}, pred {predicted[i]}", fontsize=7)
      if i == 0:
        ax.set_ylabel(title, fontsize=9)
  left.suptitle("Test inputs (top) and the spatial transformer's outputs (bottom)", fontsize=10)
  ax = right.subplots()
  ax.plot(range(1, epochs + 1), cnn_losses, label=f"CNN (test {100 * cnn_accuracy:.1f}%)")
  ax.plot(range(1, epochs + 1), stn_losses, label=f"STN + CNN (test {100 * stn_accuracy:.1f}%)")
  ax.set_xlabel("epoch")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  args.output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.output, dpi=100)
  print(f"Figure saved to {args.output}")


if __name__ == "__main__":
  main()
