"""Readers of public depth and flow datasets from their extracted folders.

Set a domain's ``name`` to one of :data:`READERS` and ``dir`` to the
extracted folder (``builder_config`` picks a variant where noted). Files
are listed up front (a missing partner file is an error naming it) and
read and checked on access, like folder domains.

Depth (metres; ``valid`` where measured):

* ``nyu_depth_v2``: NYUv2's labelled set, ``DIR/nyu_depth_v2_labeled.mat``
  (1449 RGB-D frames, HDF5) and ``DIR/splits.mat`` (the official 795 train /
  654 test indices). Only the Eigen crop (rows 12:468, cols 16:624 of 480 x
  640, as T2Net's evaluation) counts: the frames have a white border.
* ``vkitti2``: Virtual KITTI 2, ``DIR/**/frames/rgb/Camera_0/rgb_*.jpg`` with
  ``.../frames/depth/Camera_0/depth_*.png`` (16-bit centimetres, in the same
  tree or in a sibling ``*_depth`` tree); the sky (655.35 m) is not valid.
  Every frame is a training frame.
* ``kitti_depth``: KITTI's annotated depth,
  ``DIR/data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/
  image_02/<frame>.png`` (16-bit, /256) with the raw images
  ``DIR/<date>/<drive>/image_02/data/<frame>.png``.

Flow (pixels):

* ``sintel``: MPI Sintel, ``DIR/training/{clean,final}/<scene>/frame_*.png``
  and ``DIR/training/flow/<scene>/frame_*.flo`` (builder_config ``clean`` or
  ``final``, default ``final``); ``training/invalid/`` masks are used where
  present. Split ``train`` and ``val`` are both the training set.
* ``kitti_flow``: KITTI 2015 (builder_config ``2015``, default) or 2012
  (``2012``), ``DIR/training/image_2/<id>_10.png`` and ``_11.png``
  (``colored_0`` for 2012) with ``DIR/training/flow_occ/<id>_10.png``.
  Both splits are the 200 (194) training pairs, the usual evaluation of
  synthetic-trained models.
* ``flying_chairs``: ``DIR/data/<id>_img1.ppm``, ``_img2.ppm``,
  ``_flow.flo`` and ``DIR/FlyingChairs_train_val.txt`` (1 = train,
  2 = val; without it every pair is ``train``).
"""
import glob
import os
import threading
from typing import Dict

import ml_collections
import numpy as np

from crdoco_jax.data import depth_io, flow_io
from crdoco_jax.data.dense_sources import (FileSource, Files, check_label,
                                           read_depth)

NYU_CROP = (slice(12, 468), slice(16, 624))
VKITTI_SKY_M = 655.0


def _need(path: str, what: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"Missing {what} {path}")
  return path


def _partners(files: Files) -> Files:
  """Every listed second frame and ground truth must exist."""
  for key, first, second, gt in files:
    for path, what in ((second, "second frame"), (gt, "ground truth")):
      if path is not None and not os.path.exists(path):
        raise ValueError(f"{first} ({key}): its {what} {path} is missing")
  return files


# --------------------------------------------------------------------- depth
class NYUv2Source:
  """NYUv2 labelled frames from the .mat file (random access)."""

  def __init__(self, root: str, split: str):
    import h5py  # pylint: disable=g-import-not-at-top
    import scipy.io  # pylint: disable=g-import-not-at-top
    self.path = _need(os.path.join(root, "nyu_depth_v2_labeled.mat"),
                      "NYUv2 file")
    splits = scipy.io.loadmat(_need(os.path.join(root, "splits.mat"),
                                    "NYUv2 split file"))
    key = "trainNdxs" if split == "train" else "testNdxs"
    self.indices = np.asarray(splits[key]).reshape(-1) - 1  # 1-based
    self._h5py, self._file, self._lock = h5py, None, threading.Lock()

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Dict[str, object]:
    i = int(self.indices[index])
    with self._lock:  # one handle, reads from several loader threads
      if self._file is None:
        self._file = self._h5py.File(self.path, "r")
      # MATLAB stores column-major: [N, C, W, H] and [N, W, H] in HDF5.
      image = np.asarray(self._file["images"][i]).transpose(2, 1, 0)
      depth = np.asarray(self._file["depths"][i], np.float32).T
    if image.dtype != np.uint8 or image.shape[2] != 3:
      raise ValueError(f"{self.path}: frame {i} is {image.dtype} "
                       f"{image.shape}, expected uint8 [H, W, 3]")
    check_label(depth, image, f"{self.path} (depth {i})", self.path)
    if not np.all(np.isfinite(depth)):
      raise ValueError(f"{self.path}: NaN/Inf in the depth of frame {i}")
    valid = np.zeros(depth.shape, bool)
    valid[NYU_CROP] = depth[NYU_CROP] > 0
    return {"image": image, "label": depth, "valid": valid,
            "id": f"nyu_{i:04d}"}


def vkitti2(root: str, split: str, config: str) -> FileSource:
  del split, config  # one split, one variant
  files = []
  for rgb in sorted(glob.glob(os.path.join(
      root, "**", "frames", "rgb", "Camera_0", "rgb_*.jpg"), recursive=True)):
    rel = os.path.relpath(rgb, root)
    top, rest = rel.split(os.sep, 1)
    rest = rest.replace(f"{os.sep}rgb{os.sep}", f"{os.sep}depth{os.sep}")
    rest = rest.replace(f"{os.sep}rgb_", f"{os.sep}depth_")[:-4] + ".png"
    candidates = [os.path.join(root, top, rest),
                  os.path.join(root, top.replace("_rgb", "_depth"), rest)]
    depth = next((c for c in candidates if os.path.exists(c)), candidates[-1])
    files.append((rel[:-4], rgb, None, depth))
  if not files:
    raise ValueError(f"No Virtual KITTI 2 frames "
                     f"(**/frames/rgb/Camera_0/rgb_*.jpg) under {root}")
  read_cm = read_depth(100.0)

  def read(path):
    depth, _ = read_cm(path)
    return depth, (depth > 0) & (depth < VKITTI_SKY_M)
  return FileSource(_partners(files), read)


def kitti_depth(root: str, split: str, config: str) -> FileSource:
  del config
  split = {"validation": "val"}.get(split, split)
  base = _need(os.path.join(root, "data_depth_annotated", split),
               "KITTI annotated depth folder")
  files = []
  for gt in sorted(glob.glob(os.path.join(
      base, "*", "proj_depth", "groundtruth", "image_0[23]", "*.png"))):
    parts = gt.split(os.sep)
    drive, camera, frame = parts[-5], parts[-2], parts[-1]
    image = os.path.join(root, drive[:10], drive, camera, "data", frame)
    files.append((f"{drive}/{camera}/{frame[:-4]}", image, None, gt))
  for key, image, _, gt in files:
    if not os.path.exists(image):
      raise ValueError(f"{gt}: its raw image {image} is missing (extract "
                       f"KITTI raw's <date>/<drive> folders into {root})")
  return FileSource(files, read_depth(256.0))


# ---------------------------------------------------------------------- flow
def sintel(root: str, split: str, config: str) -> FileSource:
  del split
  render = config or "final"
  if render not in ("clean", "final"):
    raise ValueError(f"Sintel builder_config {render!r}: use clean or final")
  train = _need(os.path.join(root, "training"), "Sintel folder")
  files = []
  for flo in sorted(glob.glob(os.path.join(train, "flow", "*", "*.flo"))):
    scene, name = flo.split(os.sep)[-2:]
    number = int(name[len("frame_"):-len(".flo")])
    frame = lambda n: os.path.join(train, render, scene, f"frame_{n:04d}.png")
    files.append((f"{scene}/{number:04d}", frame(number), frame(number + 1),
                  flo))

  def read(path):
    flow = flow_io.read_flo(path)
    invalid = path.replace(f"{os.sep}flow{os.sep}",
                           f"{os.sep}invalid{os.sep}")[:-4] + ".png"
    if not os.path.exists(invalid):
      return flow, None
    from crdoco_jax.data import folder  # pylint: disable=g-import-not-at-top
    return flow, folder.read_label(invalid) == 0
  return FileSource(_partners(files), read)


def kitti_flow(root: str, split: str, config: str) -> FileSource:
  del split
  year = config or "2015"
  images = {"2015": "image_2", "2012": "colored_0"}
  if year not in images:
    raise ValueError(f"kitti_flow builder_config {year!r}: use 2015 or 2012")
  train = _need(os.path.join(root, "training"), "KITTI flow folder")
  files = []
  for gt in sorted(glob.glob(os.path.join(train, "flow_occ", "*_10.png"))):
    pair = os.path.basename(gt)[:-len("_10.png")]
    frame = lambda n: os.path.join(train, images[year], f"{pair}_{n}.png")
    files.append((pair, frame(10), frame(11), gt))
  return FileSource(_partners(files), flow_io.read_flow)


def flying_chairs(root: str, split: str, config: str) -> FileSource:
  del config
  data = _need(os.path.join(root, "data"), "FlyingChairs folder")
  flows = sorted(glob.glob(os.path.join(data, "*_flow.flo")))
  split_file = os.path.join(root, "FlyingChairs_train_val.txt")
  if os.path.exists(split_file):
    marks = np.loadtxt(split_file, dtype=np.int64).reshape(-1)
    if len(marks) != len(flows):
      raise ValueError(f"{split_file}: {len(marks)} entries for "
                       f"{len(flows)} flows in {data}")
    want = 2 if split in ("val", "validation") else 1
    flows = [f for f, m in zip(flows, marks) if m == want]
  files = [(os.path.basename(f)[:-len("_flow.flo")],
            f[:-len("flow.flo")] + "img1.ppm",
            f[:-len("flow.flo")] + "img2.ppm", f) for f in flows]
  for _, first, _, _ in files:
    _need(first, "first frame")
  return FileSource(_partners(files), flow_io.read_flow)


READERS = dict(nyu_depth_v2="depth", vkitti2="depth", kitti_depth="depth",
               sintel="flow", kitti_flow="flow", flying_chairs="flow")
_OPEN = dict(vkitti2=vkitti2, kitti_depth=kitti_depth, sintel=sintel,
             kitti_flow=kitti_flow, flying_chairs=flying_chairs)


def open_reader(domain: ml_collections.ConfigDict, split: str, task: str):
  """The random-access source of dataset ``domain.name`` in ``domain.dir``."""
  if READERS[domain.name] != task:
    raise ValueError(f"{domain.name!r} is a {READERS[domain.name]} dataset, "
                     f"the config's task is {task!r}")
  if not domain.dir or not os.path.isdir(domain.dir):
    raise FileNotFoundError(
        f"Dataset {domain.name!r} reads its extracted folder: set the "
        f"domain's dir (e.g. --config.source.dir=...), got {domain.dir!r}. "
        f"Layouts: crdoco_jax/data/dense_datasets.py.")
  if domain.name == "nyu_depth_v2":
    return NYUv2Source(domain.dir, split)
  return _OPEN[domain.name](domain.dir, split, domain.builder_config)
