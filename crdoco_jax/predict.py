"""Inference with a trained workdir on a folder (or glob) of images.

* ``predict``: F_T's label maps (``--mode=predict``). Each image is resized
  to ``config.target.image_size`` (as in training), F_T's main-head logits
  are upsampled bilinearly to the image's own size (as AdaptSegNet
  evaluates) and arg-maxed. Writes ``labels/<name>.png`` (uint8 train ids,
  or with ``cityscapes_ids`` the Cityscapes label ids the official
  evaluation server reads) and ``overlays/<name>.png`` (image blended with
  the class colours).
* ``translate``: ``G_S->T`` (direction ``S2T``, images resized to
  ``config.source.image_size``) or ``G_T->S`` (``T2S``, target size);
  writes ``<name>.png`` at that size (``--mode=translate``).

Images are batched over the local devices (``eval_per_device_batch`` each,
pmap); the last batch is padded and the padding dropped. Images of one size
share a compiled step (one compilation per distinct image size). With
several processes each takes every ``process_count``-th image.
"""
import collections
import glob
import os
from typing import Any, Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from crdoco_jax import checkpointing, parallel, visualize
from crdoco_jax import state as state_lib
from crdoco_jax.data import input_pipeline
from crdoco_jax.data import labels as labels_lib
from crdoco_jax.models import build_networks, layers

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff",
                    ".webp")
DIRECTIONS = ("S2T", "T2S")
OVERLAY_ALPHA = 0.5  # weight of the class colours in the overlays


def find_images(pattern: str) -> List[Tuple[str, str]]:
  """Sorted ``(path, output name)`` pairs. A directory is searched
  recursively and names keep the path below it (``frankfurt/x.png``); a
  glob (``**`` allowed) gives base names, which must then be distinct."""
  is_image = lambda p: p.lower().endswith(IMAGE_EXTENSIONS)
  png = lambda p: os.path.splitext(p)[0] + ".png"
  if os.path.isdir(pattern):
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(pattern)
                   for f in files if is_image(f))
    items = [(p, png(os.path.relpath(p, pattern))) for p in paths]
  else:
    paths = sorted(p for p in glob.glob(pattern, recursive=True)
                   if is_image(p) and os.path.isfile(p))
    items = [(p, png(os.path.basename(p))) for p in paths]
    clashes = [n for n, k in collections.Counter(n for _, n in items).items()
               if k > 1]
    if clashes:
      raise ValueError(f"--input={pattern!r} matches several images named "
                       f"{clashes[:5]}; pass their common folder instead.")
  if not items:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in "
                            f"or matching --input={pattern!r}.")
  return items


def restore_state(config: ml_collections.ConfigDict, workdir: str
                  ) -> Tuple[Any, int]:
  """``(state, step)`` of the workdir's newest checkpoint (an error if it
  has none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"No checkpoints under {workdir}; train first "
                            "or pass the --workdir of a trained run.")
  manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
  nets = build_networks(config)
  abstract = jax.eval_shape(lambda: state_lib.create_train_state(
      config, nets, jax.random.PRNGKey(0)))
  state, step = checkpointing.restore_latest(manager, abstract, workdir,
                                             config)
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
  logging.info("Restored the checkpoint of step %d from %s.", step, workdir)
  return state, step


def load_image(path: str) -> np.ndarray:
  """``[H, W, 3]`` uint8 RGB."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def to_model_input(image: np.ndarray, size) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> float32 ``[h, w, 3]`` in [-1, 1] at ``size``,
  exactly as the training input pipeline prepares images."""
  return input_pipeline.decode_example({"image": image}, tuple(size), False,
                                       labels_lib.IGNORE)["image"]


def to_cityscapes_ids(pred: np.ndarray, num_classes: int) -> np.ndarray:
  """Predicted ids of a 19/16/13-class Cityscapes protocol ``[...]`` ->
  Cityscapes label ids ``uint8 [...]`` (the evaluation server's format)."""
  if num_classes not in labels_lib.PROTOCOL_TRAIN_IDS:
    raise ValueError(
        f"--cityscapes_ids needs a Cityscapes class protocol (19, 16 or 13 "
        f"classes); this config has data.num_classes={num_classes}.")
  ids = labels_lib.PROTOCOL_TRAIN_IDS[num_classes]
  to_train = np.full(256, labels_lib.IGNORE, np.uint8)  # others: unlabeled
  to_train[:len(ids)] = ids
  return labels_lib.train_id_to_cityscapes_id(to_train[np.asarray(pred)])


def overlay(image: np.ndarray, colors: np.ndarray,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """uint8 ``[H, W, 3]`` blend of an image and its colourised labels."""
  mixed = (1 - alpha) * image.astype(np.float32) + alpha * colors
  return np.round(mixed).astype(np.uint8)


def run_batched(p_fn: Callable, variables: Any, x: np.ndarray, batch: int,
                *static) -> np.ndarray:
  """``p_fn(variables, x_sharded, *static)`` on ``len(x) <= batch``
  examples, zero-padded to ``batch`` (so every call has one shape); the
  padding's outputs are dropped. ``batch`` is a multiple of the local
  device count."""
  n = len(x)
  x = np.concatenate([x, np.zeros((batch - n,) + x.shape[1:], x.dtype)])
  devices = jax.local_device_count()
  out = p_fn(variables, parallel.shard(
      x.reshape((devices, batch // devices) + x.shape[1:])), *static)
  out = np.asarray(out)
  return out.reshape((batch,) + out.shape[2:])[:n]


def _my_images(pattern: str) -> List[Tuple[str, str]]:
  return find_images(pattern)[jax.process_index()::jax.process_count()]


def _batch_size(config) -> int:
  return config.data.eval_per_device_batch * jax.local_device_count()


def predict(config: ml_collections.ConfigDict, workdir: str, pattern: str,
            output: str, cityscapes_ids: bool = False) -> List[str]:
  """Writes F_T's labels and overlays of the images ``pattern`` names
  (directory or glob) under ``output``; returns the label files written."""
  if cityscapes_ids:
    to_cityscapes_ids(np.zeros(1, np.uint8), config.data.num_classes)
  items = _my_images(pattern)
  state, _ = restore_state(config, workdir)
  nets = build_networks(config)

  def predict_step(variables, images, size):
    logits = nets.task.apply(variables, images, "T", train=False)["main"]
    # AdaptSegNet: upsample the logits to the label size, then argmax.
    logits = layers.resize_bilinear_align_corners(logits, size)
    return jnp.argmax(logits, -1).astype(jnp.uint8)

  p_predict = jax.pmap(predict_step, axis_name=parallel.AXIS,
                       static_broadcasted_argnums=(2,))
  variables = parallel.replicate({"params": state.task.params,
                                  "batch_stats": state.task.batch_stats})
  palette = visualize.palette_for(config.data.num_classes,
                                  config.data.class_names)
  by_size = collections.defaultdict(list)
  for path, name in items:
    with Image.open(path) as image:  # reads the header only
      by_size[(image.height, image.width)].append((path, name))
  batch, written = _batch_size(config), []
  for size, group in sorted(by_size.items()):
    for i in range(0, len(group), batch):
      chunk = group[i:i + batch]
      images = [load_image(p) for p, _ in chunk]
      x = np.stack([to_model_input(im, config.target.image_size)
                    for im in images])
      preds = run_batched(p_predict, variables, x, batch, size)
      for (_, name), image, pred in zip(chunk, images, preds):
        label = (to_cityscapes_ids(pred, config.data.num_classes)
                 if cityscapes_ids else pred)
        path = os.path.join(output, "labels", name)
        visualize.save_png(path, label)
        visualize.save_png(os.path.join(output, "overlays", name),
                           overlay(image, visualize.colorize(pred, palette)))
        written.append(path)
  logging.info("Wrote %d label maps and overlays to %s.", len(written), output)
  return written


def translate(config: ml_collections.ConfigDict, workdir: str, pattern: str,
              output: str, direction: str = "S2T") -> List[str]:
  """Writes ``G_S->T`` (``S2T``) or ``G_T->S`` (``T2S``) translations of
  the images ``pattern`` names to ``output``; returns the files written."""
  if direction not in DIRECTIONS:
    raise ValueError(f"--direction={direction!r}: expected one of "
                     f"{DIRECTIONS}.")
  if not state_lib.uses_translator(config):
    raise ValueError(f"config.method={config.method!r} trains no "
                     "translators; nothing to translate with.")
  items = _my_images(pattern)
  state, _ = restore_state(config, workdir)
  nets = build_networks(config)
  size = (config.source if direction == "S2T" else config.target).image_size
  p_translate = jax.pmap(
      lambda params, x: nets.translator.apply({"params": params}, x,
                                              direction),
      axis_name=parallel.AXIS)
  params = parallel.replicate(state.translator.params)
  batch, written = _batch_size(config), []
  for i in range(0, len(items), batch):
    chunk = items[i:i + batch]
    x = np.stack([to_model_input(load_image(p), size) for p, _ in chunk])
    out = visualize.to_uint8_image(run_batched(p_translate, params, x, batch))
    for (_, name), image in zip(chunk, out):
      path = os.path.join(output, name)
      visualize.save_png(path, image)
      written.append(path)
  logging.info("Wrote %d %s translations to %s.", len(written), direction,
               output)
  return written
