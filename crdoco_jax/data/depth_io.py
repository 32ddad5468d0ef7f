"""Depth maps as 16-bit greyscale PNG: ``depth in metres = value / scale``,
0 = no measurement.

Common scales: 256 (KITTI depth completion / annotated depth), 100
(Virtual KITTI: centimetres), 1000 (millimetres, e.g. NYUv2 exported by its
toolbox or a Kinect). The folder domain layout's default is 256 (max
256 m at 4 mm steps). Readers check the file and raise ValueError naming
it (not a PNG, wrong bit depth or channel count, truncated).
"""
import io
import os

import numpy as np
from PIL import Image

from crdoco_jax.data import folder

DEFAULT_SCALE = 256.0
_PNG_GREY = 0


def read_depth_png(path: str, scale: float = DEFAULT_SCALE) -> np.ndarray:
  """16-bit greyscale PNG -> float32 ``[H, W]`` metres (0 = missing)."""
  data = folder.read_bytes(path)
  header = folder.png_header(data)
  if header is None:
    raise ValueError(f"{path}: not a PNG file (depth must be a 16-bit "
                     "greyscale PNG)")
  if header != (16, _PNG_GREY):
    raise ValueError(f"{path}: expected a 16-bit greyscale PNG (depth x "
                     f"{scale:g}), got a {header[0]}-bit PNG of colour type "
                     f"{header[1]}" + (" (RGB)" if header[1] == 2 else ""))
  image = folder._open(path, data)  # pylint: disable=protected-access
  depth = np.asarray(image, np.float32)
  if depth.ndim != 2:
    raise ValueError(f"{path}: depth PNG decoded to shape {depth.shape}")
  return depth / np.float32(scale)


def write_depth_png(path: str, depth: np.ndarray,
                    scale: float = DEFAULT_SCALE) -> None:
  """Writes metres ``[H, W]`` (0 or NaN = missing) as a 16-bit PNG; depths
  beyond ``65535 / scale`` are an error (they would wrap)."""
  depth = np.asarray(depth, np.float64)
  if depth.ndim != 2:
    raise ValueError(f"depth must be [H, W], got {depth.shape}")
  value = np.rint(np.nan_to_num(depth, nan=0.0, posinf=np.inf) * scale)
  if value.min() < 0 or value.max() > 65535:
    raise ValueError(f"{path}: depth outside [0, {65535 / scale:g}] m at "
                     f"scale {scale:g}")
  buffer = io.BytesIO()
  Image.fromarray(value.astype(np.uint16)).save(buffer, format="PNG")
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
