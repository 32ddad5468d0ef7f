"""Label id conventions of GTA5, SYNTHIA and Cityscapes (REFERENCE.md 4.1-4.3).

Every map is a read-only ``uint8 [256]`` lookup table applied by indexing, so
mapping a whole label image is one gather. Unmapped ids go to ``IGNORE``.

* Cityscapes label ids (also GTA5's label encoding) -> the 19 train ids, and
  back (``train_id_to_cityscapes_id``, for the evaluation server).
* SYNTHIA-RAND-CITYSCAPES ids -> the 19 train ids.
* The 16- and 13-class protocols of SYNTHIA -> Cityscapes keep a subset of
  the 19 classes, renumbered in order (``PROTOCOL_TRAIN_IDS``); the
  ``*_TO_PROTOCOL`` tables map either dataset's ids straight into them, so
  both domains of a 16/13-class setting share one class numbering.
"""
from typing import Dict, Tuple

import numpy as np

from crdoco_jax.visualize import CITYSCAPES_CLASSES

IGNORE = 255
NUM_CITYSCAPES_IDS = 34  # Label ids 0..33; -1 (license plate) is stored as 255.
NUM_SYNTHIA_IDS = 23  # SYNTHIA-RAND-CITYSCAPES ids 0..22.

# Train id (list position) -> Cityscapes label id.
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                   28, 31, 32, 33)
# Train id (list position) -> SYNTHIA id. Terrain (16), truck (18) and train
# (20) do not occur in SYNTHIA, hence the 16-class protocol.
_SYNTHIA_IDS = (3, 4, 2, 21, 5, 7, 15, 9, 6, 16, 1, 10, 17, 8, 18, 19, 20, 12,
                11)

# The train ids each protocol keeps, in their new order.
PROTOCOL_TRAIN_IDS: Dict[int, Tuple[int, ...]] = {
    19: tuple(range(19)),
    # Without terrain, truck and train (absent from SYNTHIA).
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    # Also without wall, fence and pole.
    13: (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}
CLASS_NAMES: Dict[int, Tuple[str, ...]] = {
    n: tuple(CITYSCAPES_CLASSES[i] for i in ids)
    for n, ids in PROTOCOL_TRAIN_IDS.items()}
CITYSCAPES_VALID_IDS = tuple(range(NUM_CITYSCAPES_IDS)) + (IGNORE,)
SYNTHIA_VALID_IDS = tuple(range(NUM_SYNTHIA_IDS))


def _frozen(table: np.ndarray) -> np.ndarray:
  table.setflags(write=False)  # Shared module constant.
  return table


def _table(keys, values, default: int = IGNORE) -> np.ndarray:
  """``uint8 [256]``: ``keys[i] -> values[i]``, everything else ``default``."""
  table = np.full(256, default, np.uint8)
  table[np.asarray(keys, np.int64)] = values
  return _frozen(table)


CITYSCAPES_ID_TO_TRAIN_ID = _table(_CITYSCAPES_IDS, range(19))
# Inverse, for the evaluation server: ignored / unknown -> 0 ('unlabeled',
# excluded from evaluation).
TRAIN_ID_TO_CITYSCAPES_ID = _table(range(19), _CITYSCAPES_IDS, default=0)
SYNTHIA_ID_TO_TRAIN_ID = _table(_SYNTHIA_IDS, range(19))
# 19 train ids -> protocol ids (identity for 19).
TRAIN_ID_TO_PROTOCOL: Dict[int, np.ndarray] = {
    n: _table(ids, range(n)) for n, ids in PROTOCOL_TRAIN_IDS.items()}
# Dataset ids -> protocol ids in one lookup (composed tables).
CITYSCAPES_ID_TO_PROTOCOL: Dict[int, np.ndarray] = {
    n: _frozen(t[CITYSCAPES_ID_TO_TRAIN_ID])
    for n, t in TRAIN_ID_TO_PROTOCOL.items()}
SYNTHIA_ID_TO_PROTOCOL: Dict[int, np.ndarray] = {
    n: _frozen(t[SYNTHIA_ID_TO_TRAIN_ID])
    for n, t in TRAIN_ID_TO_PROTOCOL.items()}


def _check_protocol(num_classes: int) -> None:
  if num_classes not in PROTOCOL_TRAIN_IDS:
    raise ValueError(f"Unknown class protocol {num_classes!r}; expected one "
                     f"of {tuple(PROTOCOL_TRAIN_IDS)}.")


def _lookup(table: np.ndarray, label: np.ndarray) -> np.ndarray:
  label = np.asarray(label)
  if label.dtype != np.uint8:
    # -1 is Cityscapes' license plate id, stored as 255 in uint8 PNGs.
    if label.size and (label.min() < -1 or label.max() > 255):
      raise ValueError(f"Label values outside [-1, 255]: min {label.min()}, "
                       f"max {label.max()}.")
    label = label.astype(np.int64) % 256
  return table[label]


def cityscapes_id_to_train_id(label: np.ndarray,
                              num_classes: int = 19) -> np.ndarray:
  """Cityscapes/GTA5 label ids ``[...]`` -> ``num_classes``-protocol train
  ids ``uint8 [...]``."""
  _check_protocol(num_classes)
  return _lookup(CITYSCAPES_ID_TO_PROTOCOL[num_classes], label)


def train_id_to_cityscapes_id(label: np.ndarray) -> np.ndarray:
  """19-class train ids ``[...]`` -> Cityscapes label ids ``uint8 [...]``."""
  return _lookup(TRAIN_ID_TO_CITYSCAPES_ID, label)


def synthia_id_to_train_id(label: np.ndarray,
                           num_classes: int = 19) -> np.ndarray:
  """SYNTHIA ids ``[...]`` -> ``num_classes``-protocol ids ``uint8 [...]``."""
  _check_protocol(num_classes)
  return _lookup(SYNTHIA_ID_TO_PROTOCOL[num_classes], label)


def train_id_to_protocol(label: np.ndarray, num_classes: int) -> np.ndarray:
  """19-class train ids ``[...]`` -> 19/16/13-protocol ids ``uint8 [...]``."""
  _check_protocol(num_classes)
  return _lookup(TRAIN_ID_TO_PROTOCOL[num_classes], label)


def invalid_values(label: np.ndarray, valid: Tuple[int, ...]) -> np.ndarray:
  """Sorted distinct values of a non-negative integer ``label`` not in
  ``valid`` (a counting pass, cheaper than sorting the pixels)."""
  present = np.flatnonzero(np.bincount(np.asarray(label).ravel()))
  return present[~np.isin(present, valid)]
