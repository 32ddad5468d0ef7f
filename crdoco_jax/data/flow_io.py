"""Optical-flow files: Middlebury ``.flo`` and KITTI's 16-bit PNG.

* ``.flo`` (Middlebury, MPI Sintel, FlyingChairs): the float32 ``202021.25``
  tag, int32 width, int32 height, then ``H * W * 2`` little-endian float32
  ``(u, v)`` row-major. Every pixel has a flow.
* KITTI 2012 / 2015 PNG: 16-bit RGB, ``u = (R - 2^15) / 64``,
  ``v = (G - 2^15) / 64`` pixels, ``B`` = 1 where the flow is valid, 0 where
  there is no ground truth. The range is about +-512 px at 1/64 px steps.

Flows are float32 ``[H, W, 2]`` (u right, v down) in pixels; readers check
the file and raise ValueError naming it (wrong tag, size, bit depth or
channel count, truncation, NaN / Inf).
"""
import os
import struct
from typing import Optional, Tuple

import numpy as np

from crdoco_jax.data import folder

FLO_TAG = 202021.25
_FLO_TAG_BYTES = struct.pack("<f", FLO_TAG)
_MAX_SIDE = 1 << 15  # larger "sizes" mean a damaged header
KITTI_OFFSET, KITTI_SCALE = 2 ** 15, 64.0
_PNG_RGB = 2


def read_flo(path: str) -> np.ndarray:
  """``.flo`` file -> float32 ``[H, W, 2]``."""
  data = folder.read_bytes(path)
  if len(data) < 12 or data[:4] != _FLO_TAG_BYTES:
    raise ValueError(f"{path}: not a .flo file (missing the {FLO_TAG} tag)")
  w, h = struct.unpack("<ii", data[4:12])
  if not (0 < w < _MAX_SIDE and 0 < h < _MAX_SIDE):
    raise ValueError(f"{path}: implausible .flo size {w}x{h}")
  if len(data) != 12 + 8 * w * h:
    raise ValueError(f"{path}: {len(data)} bytes, a {w}x{h} .flo file has "
                     f"{12 + 8 * w * h} (truncated or padded)")
  flow = np.frombuffer(data, "<f4", offset=12).reshape(h, w, 2)
  if not np.all(np.isfinite(flow)):
    raise ValueError(f"{path}: {int(np.sum(~np.isfinite(flow)))} NaN/Inf "
                     "flow values")
  return flow.astype(np.float32)


def write_flo(path: str, flow: np.ndarray) -> None:
  """Writes float ``[H, W, 2]`` as ``.flo``."""
  flow = np.asarray(flow)
  if flow.ndim != 3 or flow.shape[2] != 2:
    raise ValueError(f"flow must be [H, W, 2], got {flow.shape}")
  if not np.all(np.isfinite(flow)):
    raise ValueError(f"{path}: refusing to write NaN/Inf flow values")
  h, w = flow.shape[:2]
  _makedirs(path)
  with open(path, "wb") as f:
    f.write(_FLO_TAG_BYTES + struct.pack("<ii", w, h))
    f.write(flow.astype("<f4").tobytes())


def read_kitti_png(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """KITTI flow PNG -> ``(flow float32 [H, W, 2], valid bool [H, W])``;
  flow is 0 where not valid."""
  data = folder.read_bytes(path)
  header = folder.png_header(data)
  if header is None:
    raise ValueError(f"{path}: not a PNG file")
  if header != (16, _PNG_RGB):
    raise ValueError(f"{path}: expected a 16-bit RGB PNG (KITTI flow), got "
                     f"{_describe(header)}")
  raw = _decode_png16(path, data)
  valid = raw[..., 2] > 0
  flow = (raw[..., :2].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
  return np.where(valid[..., None], flow, 0.0).astype(np.float32), valid


def write_kitti_png(path: str, flow: np.ndarray,
                    valid: Optional[np.ndarray] = None) -> None:
  """Writes ``[H, W, 2]`` flow (``valid`` default: everywhere) in KITTI's
  format; values beyond the format's +-512 px range are an error."""
  flow = np.asarray(flow, np.float64)
  if flow.ndim != 3 or flow.shape[2] != 2:
    raise ValueError(f"flow must be [H, W, 2], got {flow.shape}")
  valid = (np.ones(flow.shape[:2], bool) if valid is None
           else np.asarray(valid, bool))
  if not np.all(np.isfinite(flow[valid])):
    raise ValueError(f"{path}: refusing to write NaN/Inf flow values")
  encoded = np.where(valid[..., None], flow * KITTI_SCALE + KITTI_OFFSET, 0)
  encoded = np.rint(encoded)
  if encoded.min() < 0 or encoded.max() > 65535:
    raise ValueError(f"{path}: flow beyond KITTI's PNG range (+-"
                     f"{KITTI_OFFSET / KITTI_SCALE:.0f} px)")
  raw = np.concatenate([encoded, valid[..., None]], -1).astype(np.uint16)
  _makedirs(path)
  with open(path, "wb") as f:
    f.write(_encode_png16(raw))


def read_flow(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """``.flo`` or KITTI ``.png`` by extension -> ``(flow, valid)``."""
  if path.lower().endswith(".flo"):
    flow = read_flo(path)
    return flow, np.ones(flow.shape[:2], bool)
  if path.lower().endswith(".png"):
    return read_kitti_png(path)
  raise ValueError(f"{path}: unknown flow file type (use .flo or .png)")


# --------------------------------------------------------------- 16-bit PNG
def _describe(header: Tuple[int, int]) -> str:
  depth, colour = header
  kinds = {0: "greyscale", 2: "RGB", 3: "palette", 4: "grey+alpha",
           6: "RGBA"}
  return f"a {depth}-bit {kinds.get(colour, f'colour type {colour}')} PNG"


def _decode_png16(path: str, data: bytes) -> np.ndarray:
  # PIL reduces 16-bit colour PNGs to 8 bits; TensorFlow (already needed
  # by tfds) decodes them exactly.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
  except tf.errors.OpError as e:
    raise ValueError(f"{path}: unreadable or truncated PNG ({e.message})"
                     ) from e


def _encode_png16(raw: np.ndarray) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.encode_png(raw).numpy()


def _makedirs(path: str) -> None:
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
