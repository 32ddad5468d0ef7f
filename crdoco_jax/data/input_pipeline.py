"""Deterministic, resumable input pipeline over random-access tfds sources.

Why index-based rather than a tf.data stream: the examples of step ``k`` are
a pure function of ``(seed, k)`` (an epoch-wise permutation of the dataset
indexes the global sample position), so a job restarted at step ``k`` reads
exactly the batches an uninterrupted job would, with no iterator state to
checkpoint, and each process reads only its own slice of every global batch.
Records come from ``tfds.data_source`` (array_record, random access); decoding
and augmentation run on a thread pool a few steps ahead of the devices.

Batches are dicts of NumPy arrays shaped ``[local_devices, per_device_batch,
...]``: images float32 in [-1, 1] ``[..., H, W, 3]``, labels int32
``[..., H, W]`` (``ignore_label`` for unlabelled pixels). Depth and flow
(``config.task``) have float32 labels ``[..., H, W, 1]`` (metres) or
``[..., H, W, 2]`` (pixels, u right, v down) and bool ``*_valid [..., H, W]``
masks; flow images hold both frames, ``[..., H, W, 6]``.
"""
import concurrent.futures
import functools
import os
from typing import Dict, Iterator, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from crdoco_jax.data import dense

Batch = Dict[str, np.ndarray]
DEMO_COMMAND = ("python launch.py --config=configs/seg.py:demo "
                "--workdir=/tmp/crdoco_demo")


class DatasetNotFoundError(FileNotFoundError):
  """A configured dataset is not where the config says it is."""


def data_dir(config: ml_collections.ConfigDict) -> str:
  return config.data.tfds_data_dir or os.path.expanduser(
      os.path.join("~", "tensorflow_datasets"))


def open_source(domain: ml_collections.ConfigDict, split: str,
                tfds_data_dir: str, num_classes: Optional[int] = None,
                task: str = "segmentation"):
  """Random-access source of ``{'image', 'label'}`` examples of one domain.

  ``name='folder'`` reads the folder ``domain.dir`` directly (see
  ``folder.py``; ``num_classes`` lets it reject out-of-range labels). The
  embedded demo pair is generated on first use. Other tfds datasets are read
  from ``tfds_data_dir``; one not prepared there yet is prepared from
  ``domain.dir`` as its manual dir when that is set (``crdoco_gta5``,
  ``crdoco_synthia`` and ``crdoco_cityscapes`` read the extracted folders),
  else a clear error names where it belongs. Depth and flow domains
  (``task``) are read by ``dense_sources.open_dense_source``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Importing the builder modules registers their datasets with tfds.
  # pylint: disable-next=g-import-not-at-top
  from crdoco_jax.data import cityscapes, demo_seg, folder, gta5, synthia
  if task != "segmentation":
    from crdoco_jax.data import dense_sources  # pylint: disable=g-import-not-at-top
    return dense_sources.open_dense_source(domain, split, tfds_data_dir, task)
  if domain.name == "folder":
    return folder.FolderSource(domain.dir, split, num_classes)
  name = domain.name + (f"/{domain.builder_config}"
                        if domain.builder_config else "")
  if domain.name == demo_seg.DATASET_NAME:
    return demo_seg.build(domain.builder_config, tfds_data_dir
                          ).as_data_source(split=split)
  fallback = (f"Or prepare it as the README's 'Datasets' section describes "
              f"(set --config.data.tfds_data_dir if it lives elsewhere), or "
              f"try the embedded demo pair first: {DEMO_COMMAND}")
  try:
    builder = tfds.builder(name, data_dir=tfds_data_dir)
  except Exception as e:  # tfds raises several types for an unknown name
    raise DatasetNotFoundError(
        f"Unknown dataset {name!r} (looked for it under {tfds_data_dir!r}): "
        f"{e}\nUse 'folder', {gta5.DATASET_NAME!r}, {synthia.DATASET_NAME!r} "
        f"or {cityscapes.DATASET_NAME!r} (the last two with builder_config "
        f"classes19/16/13), or a tfds dataset with 'image' and 'label' "
        f"features. {fallback}") from e
  if not builder.is_prepared():
    if not domain.dir:
      layout = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
      raise DatasetNotFoundError(
          f"Dataset {name!r} (split {split!r}) is not prepared under "
          f"{os.fspath(builder.data_dir)!r}. Set the domain's dir (e.g. "
          f"--config.source.dir) to its manual dir to prepare it there"
          + (f", laid out as:\n{layout}" if layout else ".\n") + fallback)
    if not os.path.isdir(domain.dir):
      raise DatasetNotFoundError(f"dir {domain.dir!r} of dataset {name!r} "
                                 f"does not exist.")
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=domain.dir))
  return builder.as_data_source(split=split)


def _resize(array: np.ndarray, size: Sequence[int], nearest: bool
            ) -> np.ndarray:
  if tuple(array.shape[:2]) == tuple(size):
    return array
  resample = Image.NEAREST if nearest else Image.BICUBIC
  return np.asarray(Image.fromarray(array).resize(
      (size[1], size[0]), resample=resample))


def decode_example(example, image_size: Sequence[int], flip: bool,
                   ignore_label: int, task: str = "segmentation",
                   label_size: Optional[Sequence[int]] = None
                   ) -> Dict[str, np.ndarray]:
  """One record -> float image in [-1, 1] and int32 labels, resized to
  ``image_size`` (bicubic; labels nearest, to ``label_size`` if given) and
  optionally mirrored. Depth and flow records go through
  ``dense.decode_dense_example``."""
  if task != "segmentation":
    if label_size is not None and tuple(label_size) != tuple(image_size):
      raise ValueError(f"eval_label_size {tuple(label_size)} != image_size "
                       f"{tuple(image_size)}: evaluation at the label "
                       f"resolution is for segmentation; leave "
                       f"target.eval_label_size empty for {task}.")
    return dense.decode_dense_example(example, image_size, flip, task)
  label_size = tuple(label_size or image_size)
  image = _resize(np.asarray(example["image"]), image_size, nearest=False)
  out = {"image": image.astype(np.float32) / 127.5 - 1.0}
  if "label" in example:
    label = np.asarray(example["label"])
    label = label[..., 0] if label.ndim == 3 else label
    out["label"] = _resize(label, label_size, nearest=True).astype(np.int32)
  else:
    out["label"] = np.full(label_size, ignore_label, np.int32)
  if flip:
    out = {k: v[:, ::-1] for k, v in out.items()}
  return out


class Augmentation(NamedTuple):
  """One training example's random augmentation: resize to ``scale`` times
  the configured size, crop the configured size at ``(top, left)`` (both in
  [0, 1): where the crop sits within its range), mirror if ``flip``."""
  flip: bool = False
  scale: float = 1.0
  top: float = 0.0
  left: float = 0.0


def sample_augmentation(seed: int, stream: int, position: int,
                        data: ml_collections.ConfigDict) -> Augmentation:
  """The augmentation of global sample ``position`` of a stream: a pure
  function of its arguments, so a resumed run augments as an uninterrupted
  one. ``data.hflip`` (bool) and ``data.random_scale`` ``(lo, hi)``."""
  rng = np.random.default_rng([seed, stream, position, 7])
  flip = bool(rng.random() < 0.5) and bool(data.hflip)
  lo, hi = data.random_scale
  if not 0 < lo <= hi:
    raise ValueError(f"config.data.random_scale={tuple(data.random_scale)}: "
                     f"need 0 < lo <= hi, e.g. (0.5, 1.5), or (1, 1) for "
                     f"none.")
  if lo == hi == 1:
    return Augmentation(flip)
  scale, top, left = rng.uniform(lo, hi), rng.random(), rng.random()
  return Augmentation(flip, float(scale), float(top), float(left))


def crop(example: Dict[str, np.ndarray], size: Sequence[int], top: float,
         left: float, ignore_label: int) -> Dict[str, np.ndarray]:
  """Crops every ``[H, W, ...]`` array of a decoded example to ``size``.

  A side shorter than ``size`` is padded first (image 0 = mid-grey, class
  labels ``ignore_label``, regression labels 0, validity False), so padded
  pixels never count. ``top``/``left`` in [0, 1) place the crop.
  """
  h, w = example["image"].shape[:2]
  ph, pw = max(h, size[0]), max(w, size[1])
  y0 = int(top * (ph - size[0] + 1))
  x0 = int(left * (pw - size[1] + 1))
  out = {}
  for key, value in example.items():
    fill = (ignore_label if key == "label" and value.dtype == np.int32
            else 0)
    if (ph, pw) != (h, w):
      padded = np.full((ph, pw) + value.shape[2:], fill, value.dtype)
      padded[:h, :w] = value
      value = padded
    out[key] = np.ascontiguousarray(value[y0:y0 + size[0],
                                          x0:x0 + size[1]])
  return out


def augment_example(example, image_size: Sequence[int], aug: Augmentation,
                    ignore_label: int, task: str = "segmentation"
                    ) -> Dict[str, np.ndarray]:
  """Decodes a training record at ``aug.scale`` times ``image_size`` and
  crops ``image_size`` out of it (flow vectors scale with the resize, depth
  keeps its metres)."""
  if aug.scale == 1.0:
    return decode_example(example, image_size, aug.flip, ignore_label, task)
  scaled = tuple(max(1, int(round(aug.scale * s))) for s in image_size)
  out = decode_example(example, scaled, aug.flip, ignore_label, task)
  return crop(out, image_size, aug.top, aug.left, ignore_label)


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, stream, epoch]).permutation(n)


def example_indices(step: int, n: int, global_batch: int, local_batch: int,
                    process_index: int, seed: int, stream: int) -> np.ndarray:
  """Dataset indices of this process's share of global batch ``step``.

  Global sample position ``q = step * global_batch + process_index *
  local_batch + j`` reads ``perm_epoch[q % n]`` with ``epoch = q // n``.
  """
  q = (step * global_batch + process_index * local_batch
       + np.arange(local_batch))
  return np.array([_permutation(n, seed, stream, int(e))[r]
                   for e, r in zip(q // n, q % n)]), q


class TrainBatches:
  """Zipped source/target training batches; ``batch(step)`` is pure.

  ``iterate(start_step)`` yields batches ``start_step, start_step + 1, ...``
  prepared ``prefetch`` steps ahead on ``workers`` threads.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               num_local_devices: Optional[int] = None,
               process_index: Optional[int] = None,
               process_count: Optional[int] = None,
               workers: int = 4, prefetch: int = 4):
    self.config = config
    self.local_devices = num_local_devices or jax.local_device_count()
    self.process_index = (jax.process_index() if process_index is None
                          else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
    self.per_device = config.data.per_device_batch
    self.local_batch = self.local_devices * self.per_device
    self.global_batch = self.local_batch * process_count
    root = data_dir(config)
    self.ideal_t2s = _check_ideal_t2s(config)
    self.streams = {
        name: open_source(config[name], config[name].train_split, root,
                          config.data.num_classes, config.task)
        for name in ("source", "target")}
    self.keep_target_label = config.method == "oracle"
    sample_augmentation(0, 0, 0, config.data)  # a bad range fails here
    self.workers, self.prefetch = workers, prefetch

  def _stream(self, name: str, stream_id: int, step: int) -> Batch:
    source = self.streams[name]
    domain = self.config[name]
    seed = self.config.seed
    idx, positions = example_indices(step, len(source), self.global_batch,
                                     self.local_batch, self.process_index,
                                     seed, stream_id)
    examples = [
        augment_example(source[int(i)], domain.image_size,
                        sample_augmentation(seed, stream_id, int(q),
                                            self.config.data),
                        self.config.data.ignore_label, self.config.task)
        for i, q in zip(idx, positions)]
    if self.config.task == "segmentation":
      for i, e in zip(idx, examples):
        check_labels(e["label"], self.config.data,
                     f"{_describe(domain, domain.train_split)} example {i}")
    shape = (self.local_devices, self.per_device)
    return {f"{name}_{k}": np.stack([e[k] for e in examples]).reshape(
        shape + examples[0][k].shape) for k in examples[0]}

  def batch(self, step: int) -> Batch:
    """The local share of global batch ``step``."""
    out = {**self._stream("source", 0, step), **self._stream("target", 1, step)}
    if self.ideal_t2s:
      from crdoco_jax.data import demo_seg  # pylint: disable=g-import-not-at-top
      labels = out["target_label"]
      # Seeded by the step and process: a resumed run renders the same.
      images = demo_seg.restyle(
          labels.reshape((-1,) + labels.shape[2:]),
          self.config.source.builder_config,
          (self.config.seed, step, self.process_index, 11))
      out["target_as_source"] = images.reshape(labels.shape + (3,))
    if not self.keep_target_label:
      del out["target_label"]
      out.pop("target_valid", None)
    return out

  def iterate(self, start_step: int = 0) -> Iterator[Batch]:
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
      pending = [pool.submit(self.batch, s)
                 for s in range(start_step, start_step + self.prefetch)]
      step = start_step + self.prefetch
      while True:
        result = pending.pop(0).result()
        pending.append(pool.submit(self.batch, step))
        step += 1
        yield result


def _check_ideal_t2s(config: ml_collections.ConfigDict) -> bool:
  """Whether batches carry ``target_as_source``: the target scenes rendered
  in the source style (``translator.ideal_t2s``, a diagnostic that reads the
  target labels), which only the embedded demo domains can render."""
  if not config.translator.get("ideal_t2s", False):
    return False
  from crdoco_jax.data import demo_seg  # pylint: disable=g-import-not-at-top
  names = {d: (config[d].name, config[d].builder_config)
           for d in ("source", "target")}
  if (config.task != "segmentation"
      or any(n != demo_seg.DATASET_NAME for n, _ in names.values())):
    raise ValueError(
        f"translator.ideal_t2s=True renders target scenes in the source "
        f"style, which needs the embedded segmentation demo "
        f"({demo_seg.DATASET_NAME!r}) as both domains; got task "
        f"{config.task!r} and domains {names}. Set "
        f"--config.translator.ideal_t2s=False.")
  return True


def _describe(domain: ml_collections.ConfigDict, split: str) -> str:
  config = f"/{domain.builder_config}" if domain.get("builder_config") else ""
  return f"{domain.name}{config} ({domain.dir or 'tfds'}), split {split!r},"


def check_labels(label: np.ndarray, data: ml_collections.ConfigDict,
                 where: str) -> None:
  """Class ids must lie in ``[0, data.num_classes)`` or be the ignore
  label: any other value would make the cross-entropy NaN in training, and
  be dropped from the confusion matrix in evaluation."""
  bad = (label != data.ignore_label) & ((label < 0)
                                        | (label >= data.num_classes))
  if bad.any():
    raise ValueError(
        f"{where} has label {int(label[bad][0])}, outside 0..."
        f"{data.num_classes - 1} and not the ignore label "
        f"{data.ignore_label}. Set data.num_classes to the dataset's number "
        f"of classes, or map that id to {data.ignore_label}.")


def open_eval_source(config: ml_collections.ConfigDict):
  """The target domain's evaluation split (``target.eval_split``)."""
  domain = config.target
  return open_source(domain, domain.eval_split, data_dir(config),
                     config.data.num_classes, config.task)


def eval_batches(config: ml_collections.ConfigDict,
                 num_local_devices: Optional[int] = None,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[Batch]:
  """The target domain's evaluation split, each process taking every
  ``process_count``-th example; the last batch is padded with ignored
  pixels so every batch has the same shape (no recompilation)."""
  devices = num_local_devices or jax.local_device_count()
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  domain = config.target
  source = open_eval_source(config)
  indices = list(range(p, len(source), count))
  per_batch = devices * config.data.eval_per_device_batch
  ignore = config.data.ignore_label
  # Every process runs the same number of batches (collectives must match).
  n_batches = -(-len(range(0, len(source), count)) // per_batch)
  label_size = tuple(domain.eval_label_size) or None
  for b in range(n_batches):
    chunk = indices[b * per_batch:(b + 1) * per_batch]
    examples = [decode_example(source[i], domain.image_size, False, ignore,
                               config.task, label_size) for i in chunk]
    if config.task == "segmentation":
      for i, e in zip(chunk, examples):
        check_labels(e["label"], config.data,
                     f"{_describe(domain, domain.eval_split)} example {i}")
    while len(examples) < per_batch:
      examples.append(_padding_example(config, domain.image_size,
                                       label_size))
    yield {k: np.stack([e[k] for e in examples]).reshape(
        (devices, config.data.eval_per_device_batch) + examples[0][k].shape)
           for k in examples[0]}


def _padding_example(config: ml_collections.ConfigDict,
                     size: Sequence[int],
                     label_size: Optional[Sequence[int]] = None
                     ) -> Dict[str, np.ndarray]:
  """An example with no valid pixel (fills the last evaluation batch)."""
  if config.task != "segmentation":
    return dense.empty_example(size, config.task)
  return {"image": np.zeros((*size, 3), np.float32),
          "label": np.full(tuple(label_size or size), config.data.ignore_label,
                           np.int32)}
