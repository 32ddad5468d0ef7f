"""Throughput of the training input pipeline at the paper's sizes.

Writes synthetic GTA5 and Cityscapes folders in their real layouts and
resolutions (1914x1052 and 2048x1024 PNGs, photo-like content so files and
decode costs are close to the real ones; sizes are printed), prepares them
with our tfds builders, then times ``input_pipeline.TrainBatches`` of
``configs/seg.py`` (720x1280 source + 512x1024 target per pair):

* ``alone``: the pipeline by itself, per worker-thread count;
* ``with_step``: the same while a compiled CrDoCo train step
  (``--step-preset``, default the demo networks) runs back to back on the
  same host cores, as the loop in ``train.py`` does, and the fraction of the
  loop's time spent waiting for input (what ``perf/input_wait_fraction``
  logs in training).

Prints one JSON line per measurement. Not a test: no assertion on speed.

  python benchmarks/input_pipeline.py --images 8 --steps 24
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

GTA5_SIZE = (1052, 1914)        # (H, W) of most GTA5 frames
CITYSCAPES_SIZE = (1024, 2048)
CITYSCAPES_VALID_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                        27, 28, 31, 32, 33)


def photo_like(rng, size, noise=3.0) -> np.ndarray:
  """Smooth colour fields plus sensor-like noise: PNG sizes and decode
  times near real street photos (pure noise would be ~2x larger)."""
  coarse = rng.integers(0, 256, (max(1, size[0] // 64),
                                  max(1, size[1] // 64), 3),
                        dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((size[1], size[0]),
                                                     Image.BICUBIC),
                      np.float32)
  noisy = smooth + rng.normal(0, noise, smooth.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def region_labels(rng, size) -> np.ndarray:
  """Blocky Cityscapes label ids (regions, as real label maps)."""
  coarse = rng.choice(CITYSCAPES_VALID_IDS + (0, 1),
                      (max(1, size[0] // 32), max(1, size[1] // 32))
                      ).astype(np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((size[1], size[0]),
                                                   Image.NEAREST))


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _shrink(size, downscale: int):
  return tuple(s // downscale for s in size)


def write_datasets(root: str, n: int, downscale: int = 1, seed: int = 0):
  """``n`` GTA5 frames and ``n`` Cityscapes train (+ 2 val) frames at the
  real resolutions divided by ``downscale``."""
  rng = np.random.default_rng(seed)
  gta5, cityscapes = (_shrink(GTA5_SIZE, downscale),
                      _shrink(CITYSCAPES_SIZE, downscale))
  for i in range(n):
    stem = f"{i + 1:05d}"
    _save(f"{root}/gta5/images/{stem}.png", photo_like(rng, gta5))
    _save(f"{root}/gta5/labels/{stem}.png", region_labels(rng, gta5))
  for split, count in (("train", n), ("val", 2)):
    for i in range(count):
      name = f"aachen_{i:06d}_000019"
      _save(f"{root}/cityscapes/leftImg8bit/{split}/aachen/"
            f"{name}_leftImg8bit.png", photo_like(rng, cityscapes))
      _save(f"{root}/cityscapes/gtFine/{split}/aachen/"
            f"{name}_gtFine_labelIds.png", region_labels(rng, cityscapes))


def mean_file_mb(directory: str) -> float:
  sizes = [os.path.getsize(os.path.join(d, f))
           for d, _, files in os.walk(directory) for f in files]
  return float(np.mean(sizes)) / 1e6


def time_pipeline(config, workers: int, steps: int, consume=None):
  """Pairs/s of ``steps`` batches (after 2 warm-up batches); with
  ``consume(batch)`` called on each (a train step), also the fraction of
  the time spent waiting for the next batch."""
  from crdoco_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  pipeline = input_pipeline.TrainBatches(config, num_local_devices=1,
                                         process_index=0, process_count=1,
                                         workers=workers,
                                         prefetch=max(2, workers))
  it = pipeline.iterate(0)
  for _ in range(2):
    batch = next(it)
    if consume:
      consume(batch)
  wait, t0 = 0.0, time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    batch = next(it)
    wait += time.perf_counter() - t
    if consume:
      consume(batch)
  elapsed = time.perf_counter() - t0
  pairs = steps * pipeline.local_batch
  return dict(pairs_per_s=pairs / elapsed, images_per_s=2 * pairs / elapsed,
              seconds_per_batch=elapsed / steps,
              input_wait_fraction=wait / elapsed)


def make_consumer(config, preset: str):
  """A compiled single-device train step of ``preset``'s networks, fed
  the pipeline's batches resized to the preset's image sizes on device."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import seg  # pylint: disable=g-import-not-at-top
  from crdoco_jax import models, parallel  # pylint: disable=g-import-not-at-top
  from crdoco_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from crdoco_jax import train_step as step_lib  # pylint: disable=g-import-not-at-top
  step_config = seg.get_config(preset)
  step_config.data.per_device_batch = config.data.per_device_batch
  step_config.translator.pretrain_steps = 0
  sizes = {"source": tuple(step_config.source.image_size),
           "target": tuple(step_config.target.image_size)}
  nets = models.build_networks(step_config, bn_axis_name=parallel.AXIS)
  state = parallel.replicate(state_lib.create_train_state(
      step_config, models.build_networks(step_config), jax.random.PRNGKey(0)))
  step = jax.pmap(step_lib.make_train_step(step_config, nets),
                  axis_name=parallel.AXIS, donate_argnums=(0,),
                  devices=jax.local_devices()[:1])

  def fit(batch):
    out = {}
    for key, value in batch.items():
      h, w = sizes[key.split("_")[0]]
      nearest = key.endswith("label")
      value = jax.image.resize(value, value.shape[:2] + (h, w)
                               + value.shape[4:],
                               "nearest" if nearest else "linear")
      out[key] = value.astype(batch[key].dtype)
    return out
  fit = jax.jit(fit)
  holder = {"state": state}

  def consume(batch):
    holder["state"], metrics = step(holder["state"], fit(batch))
    jax.block_until_ready(metrics)
  return consume


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=8,
                      help="frames written per dataset")
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--workers", default="1,2,4")
  parser.add_argument("--random-scale", default="1,1",
                      help="data.random_scale lo,hi (e.g. 0.5,1.5)")
  parser.add_argument("--step-preset", default="demo",
                      help="configs/seg.py variant of the consuming step; "
                      "'' skips the with_step measurement")
  parser.add_argument("--downscale", type=int, default=1,
                      help="divide frame and training sizes (tests: 16)")
  parser.add_argument("--root", default="",
                      help="reuse/keep the datasets here (else a tmp dir)")
  args = parser.parse_args(argv)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from configs import seg  # pylint: disable=g-import-not-at-top
  from crdoco_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  root = args.root or tempfile.mkdtemp(prefix="crdoco_pipeline_bench_")
  t = time.perf_counter()
  if not os.path.isdir(os.path.join(root, "gta5")):
    write_datasets(root, args.images, args.downscale)
  write_s = time.perf_counter() - t
  config = seg.get_config()
  config.source.dir = os.path.join(root, "gta5")
  config.target.dir = os.path.join(root, "cityscapes")
  config.data.tfds_data_dir = os.path.join(root, "tfds")
  for name in ("source", "target"):
    config[name].image_size = _shrink(config[name].image_size, args.downscale)
  config.data.random_scale = tuple(float(v) for v in
                                   args.random_scale.split(","))
  t = time.perf_counter()
  for name in ("source", "target"):
    input_pipeline.open_source(config[name], config[name].train_split,
                               config.data.tfds_data_dir)
  prepare_s = time.perf_counter() - t
  common = dict(
      source_size=list(config.source.image_size),
      target_size=list(config.target.image_size),
      random_scale=list(config.data.random_scale),
      batch=config.data.per_device_batch, cpus=os.cpu_count(),
      load_average=os.getloadavg()[0],
      gta5_png_mb=round(mean_file_mb(os.path.join(root, "gta5", "images")),
                        2),
      cityscapes_png_mb=round(mean_file_mb(os.path.join(
          root, "cityscapes", "leftImg8bit")), 2))
  print(json.dumps(dict(kind="setup", write_s=round(write_s, 1),
                        prepare_s=round(prepare_s, 1), **common)),
        flush=True)
  for w in (int(v) for v in args.workers.split(",")):
    print(json.dumps(dict(kind="alone", workers=w, **common, **{
        k: round(v, 3) for k, v in time_pipeline(config, w,
                                                 args.steps).items()})),
          flush=True)
  if args.step_preset:
    consume = make_consumer(config, args.step_preset)
    # Compile and time the step alone on a fixed batch first.
    batch = input_pipeline.TrainBatches(config, 1, 0, 1).batch(0)
    t = time.perf_counter()
    consume(batch)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(3):
      t = time.perf_counter()
      consume(batch)
      times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    w = max(int(v) for v in args.workers.split(","))
    result = time_pipeline(config, w, args.steps, consume)
    print(json.dumps(dict(
        kind="with_step", workers=w, step_preset=args.step_preset,
        step_alone_s=round(step_s, 3), step_compile_s=round(compile_s, 1),
        **common, **{k: round(v, 3) for k, v in result.items()})),
          flush=True)


if __name__ == "__main__":
  main()
