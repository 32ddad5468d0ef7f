"""tfds builder ``crdoco_gta5``: GTA5 ("Playing for Data") from its folders.

One split, ``train``, with all 24,966 images (the usual GTA5 -> Cityscapes
source), kept at their original size (mostly 1914x1052). GTA5's label PNGs
hold Cityscapes label ids; they are stored as the 19 train ids (255 =
ignore). ``id`` is the file stem (``00001``). Prepare with ``open_source``
(``config.source.dir`` set to the manual dir) or ``tfds build --manual_dir``.
"""
import os
from typing import Dict, Iterator, Tuple

import tensorflow_datasets as tfds

from crdoco_jax.data import folder
from crdoco_jax.data import labels
from crdoco_jax.data import registration

DATASET_NAME = "crdoco_gta5"


def generate_examples(root: str) -> Iterator[Tuple[str, Dict[str, object]]]:
  """``(id, example)`` of every image under manual dir ``root``, name order."""
  image_dir = os.path.join(root, "images")
  label_dir = os.path.join(root, "labels")
  pairs = folder.pair_files(folder.list_files(image_dir, (".png",)),
                            folder.list_files(label_dir, (".png",)),
                            image_dir, label_dir)
  for key, image_path, label_path in pairs:
    yield key, folder.labelled_example(
        key, image_path, label_path, folder.read_label(label_path),
        labels.CITYSCAPES_VALID_IDS, labels.CITYSCAPES_ID_TO_TRAIN_ID)


class CrdocoGta5(tfds.core.GeneratorBasedBuilder,
                 skip_registration=registration.already_registered(
                     DATASET_NAME)):
  """GTA5 images with Cityscapes train-id labels."""

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download all image and label archives from
  https://download.visinf.tu-darmstadt.de/data/from_games/ and extract them
  into the manual dir, giving:
    <manual_dir>/images/00001.png ... 24966.png
    <manual_dir>/labels/00001.png ... 24966.png   (same names)
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return folder.segmentation_info(self, __doc__)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, root: str):
    yield from generate_examples(root)
