"""tfds builder ``crdoco_cityscapes``: Cityscapes gtFine from extracted folders.

tfds's own ``cityscapes`` builder reads the zip archives and stores label ids;
this one reads the extracted ``leftImg8bit`` / ``gtFine`` folders (as the
``cityscapesScripts`` tools expect them) and stores train ids in the class
protocol of its config, so both domains of an adaptation pair share one class
numbering:

* ``classes19`` (default): the 19 Cityscapes evaluation classes.
* ``classes16`` / ``classes13``: the SYNTHIA -> Cityscapes protocols
  (``labels.PROTOCOL_TRAIN_IDS``).

Splits ``train`` (2,975) and ``validation`` (500); images keep their original
size (2048x1024), labels are single-channel, 255 = ignore, ``id`` is
``<city>_<seq>_<frame>``. Prepare with ``open_source`` (``config.target.dir``
set to the manual dir) or ``tfds build --manual_dir``.
"""
import dataclasses
import os
from typing import Dict, Iterator, Tuple

import tensorflow_datasets as tfds

from crdoco_jax.data import folder
from crdoco_jax.data import labels
from crdoco_jax.data import registration

DATASET_NAME = "crdoco_cityscapes"
SPLIT_DIRS = {"train": "train", "validation": "val"}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclasses.dataclass(eq=False)
class ProtocolConfig(tfds.core.BuilderConfig):
  """Labels in the ``num_classes``-class protocol (19, 16 or 13)."""
  num_classes: int = 19


def protocol_configs():
  """One ``classes<n>`` config per protocol, 19 first (the default)."""
  return [ProtocolConfig(name=f"classes{n}", num_classes=n,
                         description=f"{n}-class protocol: "
                         f"{', '.join(labels.CLASS_NAMES[n])}.")
          for n in sorted(labels.PROTOCOL_TRAIN_IDS, reverse=True)]


def generate_examples(root: str, split: str, num_classes: int = 19
                      ) -> Iterator[Tuple[str, Dict[str, object]]]:
  """``(id, example)`` of one split under manual dir ``root``, file order."""
  image_dir = os.path.join(root, "leftImg8bit", SPLIT_DIRS[split])
  label_dir = os.path.join(root, "gtFine", SPLIT_DIRS[split])
  pairs = folder.pair_files(
      folder.list_files(image_dir, (IMAGE_SUFFIX,), recursive=True),
      folder.list_files(label_dir, (LABEL_SUFFIX,), recursive=True),
      image_dir, label_dir)
  table = labels.CITYSCAPES_ID_TO_PROTOCOL[num_classes]
  for key, image_path, label_path in pairs:
    name = os.path.basename(key)  # <city>/<name>: the name is unique.
    yield name, folder.labelled_example(
        name, image_path, label_path, folder.read_label(label_path),
        labels.CITYSCAPES_VALID_IDS, table)


class CrdocoCityscapes(tfds.core.GeneratorBasedBuilder,
                       skip_registration=registration.already_registered(
                           DATASET_NAME)):
  """Cityscapes gtFine train/val from extracted folders, train ids."""

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = protocol_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from
  https://www.cityscapes-dataset.com/downloads/ and extract both into the
  manual dir, giving (e.g. <name> = aachen_000000_000019):
    <manual_dir>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    <manual_dir>/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
  The other gtFine files and the test split are not read.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return folder.segmentation_info(self, __doc__)

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split)
            for split in SPLIT_DIRS}

  def _generate_examples(self, root: str, split: str):
    yield from generate_examples(root, split, self.builder_config.num_classes)
