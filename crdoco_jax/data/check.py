r"""Reads every example of a config's domains and checks it before training.

  python -m crdoco_jax.data.check --config=configs/seg.py:demo
  python -m crdoco_jax.data.check --config=configs/seg.py \
      --config.source.dir=/data/gta5 --config.target.dir=/data/cityscapes

Checks the source train split and the target train and evaluation splits:
tfds datasets are prepared first if needed (which checks their files), then
every image must be ``uint8 [H, W, 3]`` with a label of the same size holding
class ids ``< num_classes`` or 255. Errors name the file (folder domains) or
the example id (the file stem, tfds datasets). Prints counts per split.
Depth and flow configs (``configs/depth.py``, ``configs/flow.py``) read
and decode every example instead (second frames, label sizes and channels,
16-bit depth PNGs, .flo / KITTI flow files, NaN/Inf).
"""
from typing import Dict

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from crdoco_jax.data import dense, input_pipeline
from crdoco_jax.data.labels import IGNORE


def check_domain(domain_cfg: ml_collections.ConfigDict, split: str,
                 tfds_data_dir: str, num_classes: int) -> Dict[str, object]:
  """Reads all of ``split``; returns ``{'images', 'labelled',
  'ignored_fraction' (of labelled pixels), 'histogram' (pixels per class,
  length num_classes)}``. Raises ValueError naming a bad example."""
  source = input_pipeline.open_source(domain_cfg, split, tfds_data_dir,
                                      num_classes=num_classes)
  counts = np.zeros(256, np.int64)
  labelled = 0
  for i in range(len(source)):
    example = source[i]
    name = (f"{domain_cfg.name} {split} example {i} "
            f"({example.get('id', b'?')!r})")
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"{name}: image is {image.dtype} {image.shape}, "
                       f"expected uint8 [H, W, 3]")
    if "label" not in example:
      continue
    label = np.asarray(example["label"])
    label = label[..., 0] if label.ndim == 3 else label
    if label.dtype != np.uint8 or label.shape != image.shape[:2]:
      raise ValueError(f"{name}: label is {label.dtype} {label.shape}, "
                       f"expected uint8 {image.shape[:2]} like its image")
    found = np.bincount(label.ravel(), minlength=256)
    bad = np.flatnonzero(found[num_classes:IGNORE]) + num_classes
    if bad.size:
      raise ValueError(f"{name}: label values {bad.tolist()} are neither "
                       f"class ids < {num_classes} nor ignore {IGNORE}")
    counts += found
    labelled += 1
  pixels = counts.sum()
  return {"images": len(source), "labelled": labelled,
          "ignored_fraction": float(counts[IGNORE] / pixels) if pixels else 0.,
          "histogram": counts[:num_classes].tolist()}


def check_dense_domain(domain_cfg: ml_collections.ConfigDict, split: str,
                       tfds_data_dir: str, task: str) -> Dict[str, object]:
  """Depth / flow: reads and decodes all of ``split`` (the file readers
  check bit depth, size, channels, NaN/Inf, second frames); returns
  ``{'images', 'labelled', 'valid_fraction' (of labelled pixels)}``."""
  source = input_pipeline.open_source(domain_cfg, split, tfds_data_dir,
                                      task=task)
  labelled, valid, pixels = 0, 0, 0
  for i in range(len(source)):
    example = source[i]
    size = np.asarray(example["image"]).shape[:2]
    try:
      out = dense.decode_dense_example(example, size, False, task)
    except ValueError as e:
      raise ValueError(f"{domain_cfg.name} {split} example {i}: {e}") from e
    if example.get("label") is not None:
      labelled += 1
      valid += int(out["valid"].sum())
      pixels += out["valid"].size
  return {"images": len(source), "labelled": labelled,
          "valid_fraction": valid / pixels if pixels else 0.0}


def _summary(role: str, domain: ml_collections.ConfigDict, split: str,
             stats: Dict[str, object], class_names) -> str:
  hist = np.asarray(stats["histogram"], np.float64)
  share = hist / max(hist.sum(), 1)
  classes = ", ".join(f"{n} {s:.1%}" for n, s in zip(class_names, share))
  name = domain.name + (f"/{domain.builder_config}"
                        if domain.builder_config else "")
  return (f"{role} {name} {split}: "
          f"{stats['images']} images, {stats['labelled']} labelled, "
          f"{stats['ignored_fraction']:.1%} of labelled pixels ignored\n"
          f"  classes: {classes}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  root = input_pipeline.data_dir(config)
  checks = [("source", config.source, config.source.train_split),
            ("target", config.target, config.target.train_split),
            ("target", config.target, config.target.eval_split)]
  for role, domain, split in checks:
    if split and config.task != "segmentation":
      stats = check_dense_domain(domain, split, root, config.task)
      print(f"{role} {domain.name} {split}: {stats['images']} examples, "
            f"{stats['labelled']} labelled, {stats['valid_fraction']:.1%} "
            f"of their pixels with valid {config.task}")
    elif split:
      stats = check_domain(domain, split, root, config.data.num_classes)
      print(_summary(role, domain, split, stats, config.data.class_names))
  print("All checked splits are readable and valid.")


if __name__ == "__main__":
  # Defined here, not at import, so check_domain can be imported next to
  # another program's --config flag.
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/seg.py:demo.",
      lock_config=True)
  flags.mark_flags_as_required(["config"])
  app.run(main)
