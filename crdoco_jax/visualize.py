"""Host-side visualisation: label colouring, image grids, PNG output.

Everything here is NumPy on the host (call ``np.asarray`` / ``jax.device_get``
on device arrays first, or let the functions do it). Images are ``[H, W, 3]``
uint8; label maps are integer ``[..., H, W]`` with 255 as the ignore label.
"""
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle")

_CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32))


def _cityscapes_palette() -> np.ndarray:
  palette = np.zeros((256, 3), np.uint8)  # unused ids and 255 stay black
  palette[:len(_CITYSCAPES_COLORS)] = np.array(_CITYSCAPES_COLORS, np.uint8)
  palette.setflags(write=False)  # shared module constant
  return palette


# [256, 3] uint8: train ids 0..18 -> official colours, everything else black.
CITYSCAPES_PALETTE = _cityscapes_palette()

_CITYSCAPES_COLOR_BY_NAME = dict(zip(CITYSCAPES_CLASSES, _CITYSCAPES_COLORS))


def _normalize_name(name: str) -> str:
  # "Traffic_Light", "traffic-light" and "traffic light" are the same class.
  return name.strip().lower().replace("_", " ").replace("-", " ")


def _voc_palette() -> np.ndarray:
  """Classic PASCAL VOC palette: bits of the id interleaved into R, G, B."""
  palette = np.zeros((256, 3), np.uint8)
  for i in range(256):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette[i] = (r, g, b)
  return palette


def palette_for(num_classes: int,
                class_names: Optional[Sequence[str]] = None) -> np.ndarray:
  """Colour palette for a label set.

  Cityscapes colours are used when every class name is a Cityscapes class
  (case/underscore-insensitive; this also covers the 16/13-class SYNTHIA
  subsets, which keep their Cityscapes colours), or when no names are given
  and ``num_classes == 19``. Otherwise the deterministic PASCAL VOC palette.

  Args:
    num_classes: number of classes ``C`` (at most 255; 255 is ignore).
    class_names: optional ``C`` class names in id order.
  Returns:
    ``[256, 3]`` uint8; ids ``>= C`` (including 255) are black.
  """
  if not 0 < num_classes <= 255:
    raise ValueError(f"num_classes must be in [1, 255], got {num_classes}.")
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} "
                     "classes.")
  palette = np.zeros((256, 3), np.uint8)
  if class_names is None:
    if num_classes == len(CITYSCAPES_CLASSES):
      return np.array(CITYSCAPES_PALETTE)
  else:
    names = [_normalize_name(n) for n in class_names]
    if all(n in _CITYSCAPES_COLOR_BY_NAME for n in names):
      for i, n in enumerate(names):
        palette[i] = _CITYSCAPES_COLOR_BY_NAME[n]
      return palette
  palette[:num_classes] = _voc_palette()[:num_classes]
  return palette


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """Maps integer label ids to colours.

  Args:
    labels: ``[..., H, W]`` integer ids; ids outside the palette are black.
    palette: ``[K, 3]`` uint8 (e.g. from :func:`palette_for`).
  Returns:
    ``[..., H, W, 3]`` uint8.
  """
  labels = np.asarray(labels)
  palette = np.asarray(palette, dtype=np.uint8)
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must be integer, got {labels.dtype}; take the "
                    "argmax of logits first.")
  if palette.ndim != 2 or palette.shape[1] != 3:
    raise ValueError(f"palette must be [K, 3], got {palette.shape}.")
  valid = (labels >= 0) & (labels < palette.shape[0])
  out = palette[np.where(valid, labels, 0)]
  out[~valid] = 0
  return out


# Dark purple -> red -> yellow (a coarse "inferno"-like ramp): near is bright.
_DEPTH_RAMP = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84),
                        (249, 142, 9), (252, 255, 164)], np.float32)


def colorize_depth(depth: np.ndarray, valid: Optional[np.ndarray] = None,
                   min_depth: float = 0.1, max_depth: float = 10.0
                   ) -> np.ndarray:
  """Depth ``[..., H, W]`` (metres) -> ``[..., H, W, 3]`` uint8, coloured
  by log depth between the caps (near = bright); invalid pixels
  (``valid`` false, non-finite or <= 0) are black."""
  depth = np.asarray(depth, np.float32)
  ok = np.isfinite(depth) & (depth > 0)
  if valid is not None:
    ok &= np.asarray(valid).astype(bool)
  d = np.clip(np.where(ok, depth, max_depth), min_depth, max_depth)
  t = 1.0 - np.log(d / min_depth) / np.log(max_depth / min_depth)
  t = np.clip(t, 0.0, 1.0) * (len(_DEPTH_RAMP) - 1)
  lo = np.minimum(t.astype(np.int64), len(_DEPTH_RAMP) - 2)
  frac = (t - lo)[..., None]
  rgb = _DEPTH_RAMP[lo] * (1.0 - frac) + _DEPTH_RAMP[lo + 1] * frac
  return np.where(ok[..., None], np.round(rgb), 0).astype(np.uint8)


def flow_to_color(flow: np.ndarray, valid: Optional[np.ndarray] = None,
                  max_magnitude: Optional[float] = None) -> np.ndarray:
  """Flow ``[..., H, W, 2]`` (u, v in pixels) -> ``[..., H, W, 3]`` uint8:
  hue = direction, saturation = length relative to ``max_magnitude``
  (default: the largest valid length), white = no motion; invalid black."""
  flow = np.asarray(flow, np.float32)
  ok = np.all(np.isfinite(flow), axis=-1)
  if valid is not None:
    ok &= np.asarray(valid).astype(bool)
  u, v = (np.where(ok, flow[..., i], 0.0) for i in (0, 1))
  length = np.hypot(u, v)
  if max_magnitude is None:
    max_magnitude = float(length.max()) if length.size else 1.0
  sat = np.clip(length / max(max_magnitude, 1e-6), 0.0, 1.0)
  hue = (np.arctan2(-v, -u) / np.pi + 1.0) * 3.0  # [0, 6)
  # HSV -> RGB with value 1: each channel falls off with its hue distance.
  channel = lambda n: 1.0 - sat * np.clip(
      np.minimum((n + hue) % 6.0, 4.0 - (n + hue) % 6.0), 0.0, 1.0)
  rgb = np.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)
  return np.where(ok[..., None], np.round(255.0 * rgb), 0).astype(np.uint8)


def to_uint8_image(x: np.ndarray) -> np.ndarray:
  """Maps a float image in ``[-1, 1]`` (the translators' tanh range) to
  uint8 ``[0, 255]``; values outside are clipped and NaN becomes 0.

  Args:
    x: float array of any shape, e.g. ``[N, H, W, 3]``.
  Returns:
    uint8 array of the same shape.
  """
  x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=-1.0)
  x = (np.clip(x, -1.0, 1.0) + 1.0) * 127.5
  return np.round(x).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2,
               pad_value: int = 255) -> np.ndarray:
  """Tiles rows of equally sized images into one image.

  Padding of ``pad`` pixels separates the tiles and surrounds the grid, so
  ``R`` rows of at most ``K`` images of ``[H, W, 3]`` give
  ``[R * H + (R + 1) * pad, K * W + (K + 1) * pad, 3]``. Shorter rows are
  left-aligned; missing tiles are filled with ``pad_value``.

  Args:
    rows: sequence of rows, each a sequence of ``[H, W, 3]`` uint8 images.
    pad: padding width in pixels (>= 0).
    pad_value: grey level of the padding (255 white).
  Returns:
    ``[H_total, W_total, 3]`` uint8.
  """
  rows = [list(r) for r in rows]
  if not rows or not any(rows):
    raise ValueError("image_grid needs at least one image.")
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}.")
  first = np.asarray(next(img for r in rows for img in r))
  shape = first.shape
  if len(shape) != 3 or shape[2] != 3:
    raise ValueError(f"Images must be [H, W, 3], got shape {shape}.")
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      img = np.asarray(img)
      if img.shape != shape:
        raise ValueError(f"Image at row {i}, column {j} has shape "
                         f"{img.shape}; expected {shape} like the first.")
      if img.dtype != np.uint8:
        raise TypeError(f"Image at row {i}, column {j} has dtype "
                        f"{img.dtype}; expected uint8 (see to_uint8_image).")
  h, w, _ = shape
  n_rows, n_cols = len(rows), max(len(r) for r in rows)
  grid = np.full((n_rows * h + (n_rows + 1) * pad,
                  n_cols * w + (n_cols + 1) * pad, 3), pad_value, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = img
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a ``[H, W, 3]`` (or ``[H, W]`` grey) uint8 image as PNG,
  creating parent directories as needed."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"save_png expects uint8, got {image.dtype}.")
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
    raise ValueError(f"Expected [H, W], [H, W, 3] or [H, W, 4], got "
                     f"{image.shape}.")
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(image).save(path, format="PNG")
