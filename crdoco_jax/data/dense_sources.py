"""Random-access depth and flow domains: the embedded demos, folder domains
and (``dense_datasets.py``) the paper's datasets.

Folder domain layouts (``config.<domain>.name = 'folder'``), ``<split>``
``train`` or ``val`` (``validation`` means ``val``)::

  depth:  DIR/<split>/images/<stem>.{png,jpg,jpeg}
          DIR/<split>/depth/<stem>.png      16-bit greyscale, metres =
                                            value / png_scale, 0 = missing
  flow:   DIR/<split>/frame1/<stem>.{png,jpg,jpeg}
          DIR/<split>/frame2/<stem>.{png,jpg,jpeg}
          DIR/<split>/flow/<stem>.{flo,png}  Middlebury .flo or KITTI PNG

The ground-truth folder (``depth`` / ``flow``) may be left out for an
unlabelled split. Files are read and checked on access; a bad file fails
with an error naming it.
"""
import importlib
import os
from typing import Callable, Dict, List, Optional, Tuple

import ml_collections
import numpy as np

from crdoco_jax.data import depth_io, flow_io, folder

DEMOS = {"crdoco_demo_depth": "crdoco_jax.data.demo_depth",
         "crdoco_demo_flow": "crdoco_jax.data.demo_flow"}
GT_DIRS = {"depth": "depth", "flow": "flow"}
GT_SUFFIXES = {"depth": (".png",), "flow": (".flo", ".png")}


def _split_dir(root: str, split: str) -> str:
  path = os.path.join(root, {"validation": "val"}.get(split, split))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Missing folder {path} for split {split!r}")
  return path


def _match(first: Dict[str, str], second: Dict[str, str], first_dir: str,
           second_dir: str, what: str) -> None:
  """Every file of ``first`` needs its partner in ``second`` and back."""
  missing = [first[k] for k in first if k not in second]
  if missing:
    raise ValueError(f"{len(missing)} file(s) have no {what} in "
                     f"{second_dir}: {folder._some(missing)}")  # pylint: disable=protected-access
  orphans = [second[k] for k in second if k not in first]
  if orphans:
    raise ValueError(f"{len(orphans)} {what} file(s) have no partner in "
                     f"{first_dir}: {folder._some(orphans)}")  # pylint: disable=protected-access


def check_label(label: np.ndarray, image: np.ndarray, path: str,
                image_path: str) -> None:
  """Ground truth must cover its image pixel for pixel."""
  if label.shape[:2] != image.shape[:2]:
    raise ValueError(f"{path}: size {label.shape[1]}x{label.shape[0]} "
                     f"differs from its image's {image.shape[1]}x"
                     f"{image.shape[0]} ({image_path})")


# (key, first frame, second frame or None, ground truth or None)
Files = List[Tuple[str, str, Optional[str], Optional[str]]]
# ground-truth path -> (label [H, W] or [H, W, 2], valid [H, W] or None)
GroundTruthReader = Callable[[str], Tuple[np.ndarray, Optional[np.ndarray]]]


class FileSource:
  """Random-access examples from a list of files: ``source[i] -> {'image',
  ['image2'], ['label', 'valid'], 'id'}``, read and checked on access."""

  def __init__(self, files: Files, read_ground_truth: GroundTruthReader):
    if not files:
      raise ValueError("No examples found")
    self.files, self.read_ground_truth = files, read_ground_truth

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> Dict[str, object]:
    key, first, second, gt = self.files[index]
    example = {"image": folder.read_image(first), "id": key}
    if second is not None:
      if not os.path.exists(second):
        raise ValueError(f"{first}: its second frame {second} is missing")
      example["image2"] = folder.read_image(second)
      check_label(example["image2"], example["image"], second, first)
    if gt is not None:
      label, valid = self.read_ground_truth(gt)
      check_label(label, example["image"], gt, first)
      example["label"] = label
      if valid is not None:
        example["valid"] = valid
    return example


def read_depth(scale: float) -> GroundTruthReader:
  return lambda path: (depth_io.read_depth_png(path, scale), None)


class DenseFolderSource(FileSource):
  """Random-access examples of a depth or flow folder domain (see the
  module docstring)."""

  def __init__(self, root: str, split: str, task: str,
               png_scale: float = depth_io.DEFAULT_SCALE):
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f"Missing folder domain directory {root!r} "
                              f"(the domain's dir)")
    split_dir = _split_dir(root, split)
    first_dir = os.path.join(split_dir,
                             "frame1" if task == "flow" else "images")
    firsts = folder.list_files(first_dir, folder.IMAGE_EXTENSIONS)
    if not firsts:
      raise ValueError(f"No images in {first_dir}")
    seconds = {}
    if task == "flow":
      second_dir = os.path.join(split_dir, "frame2")
      if not os.path.isdir(second_dir):
        raise ValueError(f"Missing second frames: no folder {second_dir} "
                         f"for the first frames in {first_dir}")
      seconds = folder.list_files(second_dir, folder.IMAGE_EXTENSIONS)
      _match(firsts, seconds, first_dir, second_dir, "second frame")
    gt_dir = os.path.join(split_dir, GT_DIRS[task])
    gts = {}
    if os.path.isdir(gt_dir):
      gts = folder.list_files(gt_dir, GT_SUFFIXES[task])
      _match(firsts, gts, first_dir, gt_dir, f"{task} ground truth")
    super().__init__(
        [(k, firsts[k], seconds.get(k), gts.get(k)) for k in sorted(firsts)],
        read_depth(png_scale) if task == "depth" else flow_io.read_flow)


def open_dense_source(domain: ml_collections.ConfigDict, split: str,
                      tfds_data_dir: str, task: str):
  """The random-access source of a depth / flow domain: the demo builders
  ``crdoco_demo_depth`` / ``crdoco_demo_flow`` (generated on first use),
  ``folder``, a dataset of ``dense_datasets.READERS``, or any prepared tfds
  dataset with ``image`` [``image2``] ``label`` [``valid``] features."""
  from crdoco_jax.data import dense_datasets  # pylint: disable=g-import-not-at-top
  if domain.name in DEMOS:
    # Importing a builder module registers it with tfds.
    demo = importlib.import_module(DEMOS[domain.name])
    return demo.build(domain.builder_config, tfds_data_dir
                      ).as_data_source(split=split)
  scale = domain.get("png_scale", depth_io.DEFAULT_SCALE)
  if domain.name == "folder":
    return DenseFolderSource(domain.dir, split, task, scale)
  if domain.name in dense_datasets.READERS:
    return dense_datasets.open_reader(domain, split, task)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(domain.name + (f"/{domain.builder_config}" if
                                          domain.builder_config else ""),
                           data_dir=tfds_data_dir)
  except Exception as e:  # tfds raises several types for an unknown name
    raise FileNotFoundError(
        f"Unknown {task} dataset {domain.name!r}: use 'folder', "
        f"{', '.join(repr(n) for n in sorted(DEMOS))} or one of "
        f"{sorted(dense_datasets.READERS)} ({e})") from e
  return builder.as_data_source(split=split)
