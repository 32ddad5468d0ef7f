"""tfds builder ``crdoco_synthia``: SYNTHIA-RAND-CITYSCAPES from its folders.

One split, ``train``, with all 9,400 images at their original size
(1280x760). Labels are stored in the class protocol of the config
(``cityscapes.protocol_configs``): ``classes19``, ``classes16`` (the usual
SYNTHIA -> Cityscapes setting) or ``classes13``; pair it with the Cityscapes
config of the same name. ``id`` is the file stem.

SYNTHIA's ``GT/LABELS`` PNGs have 16 bits per channel with the class id in
the red channel. PIL reads such files as 8-bit RGB and silently keeps only
the high byte (all zeros here), so they are decoded with TensorFlow.
"""
import os
from typing import Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds

from crdoco_jax.data import cityscapes
from crdoco_jax.data import folder
from crdoco_jax.data import labels
from crdoco_jax.data import registration

DATASET_NAME = "crdoco_synthia"
_PNG_PALETTE = 3  # IHDR colour type: TF would decode colours, not indices.


def read_label(path: str) -> np.ndarray:
  """Class ids of a SYNTHIA label PNG: channel 0 (red), ``uint16 [H, W]``
  for 16-bit files, ``uint8 [H, W]`` for 8-bit ones."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = folder.read_bytes(path)
  header = folder.png_header(data)
  if header is None or header[1] == _PNG_PALETTE:
    raise ValueError(f"{path}: expected a SYNTHIA label PNG (ids in the red "
                     f"channel), got {'a palette PNG' if header else 'no PNG'}")
  # decode_png rescales 8-bit data when asked for uint16, so ask for the
  # file's own depth.
  dtype = tf.uint16 if header[0] == 16 else tf.uint8
  try:
    label = tf.io.decode_png(data, dtype=dtype).numpy()
  except tf.errors.OpError as e:
    raise ValueError(f"{path}: unreadable or truncated image "
                     f"({e.message})") from e
  return label[..., 0]


def generate_examples(root: str, num_classes: int = 19
                      ) -> Iterator[Tuple[str, Dict[str, object]]]:
  """``(id, example)`` of every image under manual dir ``root``, name order."""
  image_dir = os.path.join(root, "RGB")
  label_dir = os.path.join(root, "GT", "LABELS")
  pairs = folder.pair_files(folder.list_files(image_dir, (".png",)),
                            folder.list_files(label_dir, (".png",)),
                            image_dir, label_dir)
  table = labels.SYNTHIA_ID_TO_PROTOCOL[num_classes]
  for key, image_path, label_path in pairs:
    yield key, folder.labelled_example(
        key, image_path, label_path, read_label(label_path),
        labels.SYNTHIA_VALID_IDS, table)


class CrdocoSynthia(tfds.core.GeneratorBasedBuilder,
                    skip_registration=registration.already_registered(
                        DATASET_NAME)):
  """SYNTHIA-RAND-CITYSCAPES with labels in a Cityscapes class protocol."""

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = cityscapes.protocol_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download SYNTHIA-RAND-CITYSCAPES from http://synthia-dataset.net/downloads/
  and extract it into the manual dir, giving:
    <manual_dir>/RGB/<name>.png
    <manual_dir>/GT/LABELS/<name>.png   (same names, 16-bit PNGs)
  Other folders (GT/COLOR, Depth) are not read.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return folder.segmentation_info(self, __doc__)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

  def _generate_examples(self, root: str):
    yield from generate_examples(root, self.builder_config.num_classes)
