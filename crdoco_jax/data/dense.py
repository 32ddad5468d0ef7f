"""Depth and flow records -> training arrays (resize, mirror, validity).

A dense-regression record (from a demo builder, a folder domain or a
dataset reader) is a dict with ``image`` uint8 ``[H, W, 3]``, for flow also
``image2`` (the second frame), optionally ``label`` float32 ``[H, W, D]``
(depth in metres, D = 1; flow in pixels, D = 2) and ``valid`` ``[H, W]``
(else: depth > 0 and finite; flow finite), and ``id``. Decoded examples
are ``image`` float32 ``[h, w, 3 * frames]`` in [-1, 1], ``label`` float32
``[h, w, D]`` (0 where invalid) and ``valid`` bool ``[h, w]``.
"""
from typing import Dict, Sequence

import numpy as np
from PIL import Image

CHANNELS = {"depth": 1, "flow": 2}
FRAMES = {"depth": 1, "flow": 2}


def _name(example) -> str:
  key = example.get("id", "?")
  return key.decode() if isinstance(key, bytes) else str(key)


def _resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  if tuple(image.shape[:2]) == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]),
                                                  Image.BICUBIC))


def _resize_nearest(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Nearest-neighbour resize of ``[H, W]`` float32 or bool: no value is
  invented (sparse ground truth stays sparse, holes stay holes)."""
  if tuple(array.shape[:2]) == tuple(size):
    return array
  if array.dtype == bool:
    return _resize_nearest(array.astype(np.uint8), size).astype(bool)
  mode = "L" if array.dtype == np.uint8 else "F"
  return np.asarray(Image.fromarray(array.astype(
      np.uint8 if mode == "L" else np.float32), mode).resize(
          (size[1], size[0]), Image.NEAREST))


def default_valid(label: np.ndarray, task: str) -> np.ndarray:
  """Where a label without an explicit mask counts: depth > 0 and finite
  (0 = no measurement, as KITTI / NYUv2 raw), flow finite."""
  finite = np.all(np.isfinite(label), axis=-1)
  return finite & (label[..., 0] > 0) if task == "depth" else finite


def decode_dense_example(example, image_size: Sequence[int], flip: bool,
                         task: str) -> Dict[str, np.ndarray]:
  """One depth / flow record -> ``{'image', 'label', 'valid'}`` resized to
  ``image_size`` and optionally mirrored (flow: u negated).

  Raises:
    ValueError naming the example: missing second frame, frames of
    different sizes, a label of the wrong channel count or size.
  """
  if task not in CHANNELS:
    raise ValueError(f"Unknown dense task {task!r}; use depth or flow.")
  name = _name(example)
  frames = [np.asarray(example["image"])]
  if task == "flow":
    if example.get("image2") is None:
      raise ValueError(f"{name}: flow example without its second frame")
    frames.append(np.asarray(example["image2"]))
    if frames[0].shape != frames[1].shape:
      raise ValueError(f"{name}: frames differ in size, {frames[0].shape} "
                       f"vs {frames[1].shape}")
  h, w = frames[0].shape[:2]
  image = np.concatenate([_resize_image(f, image_size) for f in frames], -1)
  image = image.astype(np.float32) / 127.5 - 1.0
  d = CHANNELS[task]
  if example.get("label") is None:  # unlabelled split
    label = np.zeros((*image_size, d), np.float32)
    valid = np.zeros(image_size, bool)
  else:
    label = np.asarray(example["label"], np.float32)
    if label.ndim == 2:
      label = label[..., None]
    if label.shape != (h, w, d):
      raise ValueError(f"{name}: {task} label of shape {label.shape}, "
                       f"expected {(h, w, d)} for a {w}x{h} image")
    valid = (np.asarray(example["valid"]).astype(bool)
             if example.get("valid") is not None
             else default_valid(label, task))
    valid &= np.all(np.isfinite(label), axis=-1)
    label = np.where(valid[..., None], label, 0.0).astype(np.float32)
    label = np.stack([_resize_nearest(label[..., c], image_size)
                      for c in range(d)], -1)
    valid = _resize_nearest(valid, image_size)
    if task == "flow":  # displacements scale with the image
      label = label * np.array([image_size[1] / w, image_size[0] / h],
                               np.float32)
  if flip:
    image, label, valid = image[:, ::-1], label[:, ::-1], valid[:, ::-1]
    if task == "flow":  # mirrored motion: u changes sign
      label = label * np.array([-1.0, 1.0], np.float32)
  return {"image": np.ascontiguousarray(image),
          "label": np.ascontiguousarray(label, np.float32),
          "valid": np.ascontiguousarray(valid)}


def empty_example(size: Sequence[int], task: str) -> Dict[str, np.ndarray]:
  """A decoded example with no valid pixel (evaluation padding)."""
  return {"image": np.zeros((*size, 3 * FRAMES[task]), np.float32),
          "label": np.zeros((*size, CHANNELS[task]), np.float32),
          "valid": np.zeros(size, bool)}
