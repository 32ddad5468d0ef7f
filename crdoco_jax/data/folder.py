"""Image/label folders: a generic domain read without tfds, and the file-level
helpers (list, pair, read, check) the GTA5 / SYNTHIA / Cityscapes builders
share.

A generic folder domain (``config.source.name = 'folder'``) is laid out as::

  DIR/classes.txt                   optional, one class name per line
  DIR/<split>/images/*.{png,jpg,jpeg}
  DIR/<split>/labels/<stem>.png     optional: uint8 class index, 255 = ignore

with ``<split>`` ``train`` or ``val`` (``validation`` means ``val``; other
names are used as given). Without a ``labels`` folder the split is unlabelled
and its examples carry no ``'label'``; with one, every image needs its label
and every label its image. ``FolderSource`` is random access like a tfds data
source: ``len(source)``, ``source[i] -> {'image': uint8 [H, W, 3], 'label':
uint8 [H, W], 'id': str}``. Files are read and checked on access, so a bad
file fails the step that reads it, naming the file; ``check.py`` reads them
all up front.
"""
import io
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from crdoco_jax.data import labels as labels_lib

IGNORE = labels_lib.IGNORE
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.txt"
_SPLIT_DIRS = {"validation": "val"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_RGB = 2  # IHDR colour type of truecolour without alpha.
_MAX_LISTED = 5  # Unpaired files named in an error message.

Pair = Tuple[str, str, Optional[str]]  # (key, image path, label path)


# ------------------------------------------------------------- file listing
def list_files(directory: str, suffixes: Sequence[str],
               recursive: bool = False) -> Dict[str, str]:
  """``{key: path}`` of files under ``directory`` ending in a suffix.

  The key is the path relative to ``directory`` less the suffix (suffixes
  compare case-insensitively), e.g. ``aachen/aachen_000000_000019``.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Missing folder {directory}")
  lowered = tuple(s.lower() for s in suffixes)
  files = {}
  for folder, dirs, names in os.walk(directory):
    dirs.sort()
    if not recursive:
      dirs.clear()
    for name in sorted(names):
      suffix = next((s for s in lowered if name.lower().endswith(s)), None)
      if suffix is None:
        continue
      path = os.path.join(folder, name)
      key = os.path.relpath(path, directory)[:-len(suffix)]
      if key in files:
        raise ValueError(f"Two files for one example: {files[key]} and "
                         f"{path}")
      files[key] = path
  return files


def _some(paths) -> str:
  paths = sorted(paths)
  more = len(paths) - _MAX_LISTED
  return ", ".join(paths[:_MAX_LISTED]) + (f" and {more} more" if more > 0
                                           else "")


def pair_files(images: Dict[str, str], labels: Dict[str, str],
               image_dir: str, label_dir: str) -> List[Pair]:
  """Sorted ``(key, image, label)`` triples; every file must have its match.

  ``image_dir`` / ``label_dir`` only name the folders in error messages.
  """
  if not images:
    raise ValueError(f"No images in {image_dir}")
  missing = [images[k] for k in images if k not in labels]
  if missing:
    raise ValueError(f"{len(missing)} image(s) have no label in {label_dir}: "
                     f"{_some(missing)}")
  orphans = [labels[k] for k in labels if k not in images]
  if orphans:
    raise ValueError(f"{len(orphans)} label(s) have no image in {image_dir}: "
                     f"{_some(orphans)}")
  return [(k, images[k], labels[k]) for k in sorted(images)]


# ------------------------------------------------------------------ reading
def _open(path: str, data: bytes) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # Decodes now: a truncated file fails here, not later.
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: unreadable or truncated image ({e})") from e
  return image


def read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e})") from e


def png_header(data: bytes) -> Optional[Tuple[int, int]]:
  """``(bit depth, colour type)`` of PNG ``data``; None if not a PNG."""
  if len(data) < 26 or not data.startswith(_PNG_SIGNATURE):
    return None
  return data[24], data[25]


def read_image(path: str) -> np.ndarray:
  """Any PIL-readable image file -> ``uint8 [H, W, 3]``."""
  return np.asarray(_open(path, read_bytes(path)).convert("RGB"))


def image_feature(path: str) -> Tuple[np.ndarray, Union[bytes, np.ndarray]]:
  """``(uint8 [H, W, 3], value for tfds.features.Image)``.

  An 8-bit RGB PNG goes to tfds as its original bytes (it decodes to exactly
  the returned array), which saves re-encoding every full-size image.
  """
  data = read_bytes(path)
  image = np.asarray(_open(path, data).convert("RGB"))
  return image, (data if png_header(data) == (8, _PNG_RGB) else image)


def read_label(path: str) -> np.ndarray:
  """8-bit single-channel (greyscale or palette-index) PNG -> ``uint8 [H, W]``.

  Palette PNGs (GTA5's labels) give their indices, not the colours.
  """
  label = _open(path, read_bytes(path))
  if label.mode not in ("L", "P"):
    raise ValueError(f"{path}: expected an 8-bit single-channel label image "
                     f"(PIL mode L or P), got mode {label.mode}")
  return np.asarray(label)


# ----------------------------------------------------------------- checking
def check_pair(image: np.ndarray, label: np.ndarray, valid: Sequence[int],
               image_path: str, label_path: str) -> None:
  """Raises ValueError naming the files unless ``label [H, W]`` matches
  ``image [H, W, 3]`` in size and holds only ``valid`` values."""
  if image.shape[:2] != label.shape[:2]:
    raise ValueError(
        f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs "
        f"from its image's {image.shape[1]}x{image.shape[0]} ({image_path})")
  bad = labels_lib.invalid_values(label, valid)
  if bad.size:
    raise ValueError(f"{label_path}: label values {bad.tolist()} are neither "
                     f"valid ids nor ignore (valid: {_ranges(valid)})")


def _ranges(values: Sequence[int]) -> str:
  """``(0, 1, 2, 255)`` -> ``'0..2, 255'``."""
  groups = []
  for v in sorted(values):
    if groups and v == groups[-1][1] + 1:
      groups[-1][1] = v
    else:
      groups.append([v, v])
  return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in groups)


def labelled_example(key: str, image_path: str, label_path: str,
                     label: np.ndarray, valid: Sequence[int],
                     table: np.ndarray) -> Dict[str, object]:
  """tfds example of one image/label pair; ``label`` holds the raw ids,
  checked against ``valid`` and mapped through the ``[256]`` ``table``."""
  image, stored = image_feature(image_path)
  check_pair(image, label, valid, image_path, label_path)
  return {"image": stored, "label": table[label][..., None], "id": key}


def segmentation_info(builder, doc: str, size=(None, None)):
  """The ``DatasetInfo`` all our builders share: image (original size unless
  ``size`` fixes it), label (single-channel PNG of train ids, 255 = ignore)
  and the file id."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.DatasetInfo(
      builder=builder,
      description=doc,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(*size, 3)),
          "label": tfds.features.Image(shape=(*size, 1)),
          "id": tfds.features.Text(),
      }),
      supervised_keys=("image", "label"),
      # Keep the sorted file order, so record i is the i-th file.
      disable_shuffling=True,
  )


# ------------------------------------------------------------ folder domain
def read_class_names(root: str) -> Optional[Tuple[str, ...]]:
  """Names in ``root/classes.txt``, one per line; None without the file."""
  path = os.path.join(root, CLASSES_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f.read().rstrip().splitlines()]
  if not names or not all(names):
    raise ValueError(f"{path}: expected one non-empty class name per line")
  return tuple(names)


class FolderSource:
  """Random-access examples of ``root/<split>`` (see the module docstring).

  ``num_classes`` comes from ``classes.txt`` when present (a different
  ``num_classes`` argument is an error); labels ``>= num_classes`` other than
  255 fail on read. Without either, any 8-bit label value is accepted.
  """

  def __init__(self, root: str, split: str,
               num_classes: Optional[int] = None):
    if not root or not os.path.isdir(root):
      raise FileNotFoundError(f"Missing folder domain directory {root!r} "
                              f"(the domain's dir)")
    self.class_names = read_class_names(root)
    if self.class_names is not None:
      if num_classes is not None and num_classes != len(self.class_names):
        raise ValueError(
            f"{os.path.join(root, CLASSES_FILE)} lists "
            f"{len(self.class_names)} classes, the config {num_classes}")
      num_classes = len(self.class_names)
    self.num_classes = num_classes
    self.valid = (tuple(range(256)) if num_classes is None
                  else tuple(range(num_classes)) + (IGNORE,))
    split_dir = os.path.join(root, _SPLIT_DIRS.get(split, split))
    if not os.path.isdir(split_dir):
      raise FileNotFoundError(f"Missing folder {split_dir} for split "
                              f"{split!r}")
    image_dir = os.path.join(split_dir, "images")
    label_dir = os.path.join(split_dir, "labels")
    images = list_files(image_dir, IMAGE_EXTENSIONS)
    self.has_labels = os.path.isdir(label_dir)
    if self.has_labels:
      self.files = pair_files(images, list_files(label_dir, (".png",)),
                              image_dir, label_dir)
    elif images:
      self.files = [(k, images[k], None) for k in sorted(images)]
    else:
      raise ValueError(f"No images in {image_dir}")

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> Dict[str, object]:
    key, image_path, label_path = self.files[index]
    example = {"image": read_image(image_path), "id": key}
    if label_path is not None:
      label = read_label(label_path)
      check_pair(example["image"], label, self.valid, image_path,
                 label_path)
      example["label"] = label
    return example
