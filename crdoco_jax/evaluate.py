"""Semantic-segmentation metrics: confusion matrix, per-class IoU, mIoU.

:func:`confusion_matrix` is a pure JAX function meant to run on device inside
``jit``/``pmap`` (sum it across devices with ``lax.psum``); everything else
works on the small ``[C, C]`` matrix on the host in NumPy. Accumulate the
per-batch matrices on the host in int64 (``np.asarray(cm, np.int64)``): a
full Cityscapes val pass has ~1e9 pixels, close to the int32 limit.

IoU follows the Cityscapes / AdaptSegNet definition: ``TP / (TP + FP + FN)``
per class over the whole evaluation set, NaN for a class that appears neither
in the ground truth nor in the predictions, and mIoU is the NaN-mean.
"""
from typing import Sequence
import warnings

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def confusion_matrix(preds: Array, labels: Array, num_classes: int,
                     ignore_label: int = 255) -> Array:
  """Pixel confusion matrix of one batch.

  Pixels whose label is ``ignore_label`` or outside ``[0, num_classes)`` are
  excluded, and so are pixels whose prediction is outside that range (they
  have no column to go to; argmax predictions never are).

  Args:
    preds: ``[N, H, W]`` (any shape) integer predicted class ids.
    labels: integer ground-truth ids, same shape as ``preds``.
    num_classes: ``C``; must be static under ``jit`` (``static_argnums``).
    ignore_label: label value marking pixels without ground truth.
  Returns:
    ``[C, C]`` int32 counts, rows = ground truth, columns = prediction.
  """
  if preds.shape != labels.shape:
    raise ValueError(f"preds shape {preds.shape} != labels shape "
                     f"{labels.shape}.")
  c = num_classes
  preds = preds.reshape(-1).astype(jnp.int32)
  labels = labels.reshape(-1).astype(jnp.int32)
  valid = ((labels != ignore_label) & (labels >= 0) & (labels < c)
           & (preds >= 0) & (preds < c))
  # One bincount over label * C + pred; excluded pixels go to the extra dump
  # bin C * C, so the output length stays static and no boolean indexing
  # (data-dependent shape) is needed.
  index = jnp.where(valid, labels * c + preds, c * c)
  counts = jnp.bincount(index, length=c * c + 1)
  return counts[:c * c].reshape(c, c).astype(jnp.int32)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
  """Per-class IoU ``TP / (TP + FP + FN)`` from a confusion matrix.

  Args:
    cm: ``[C, C]`` counts, rows = ground truth, columns = prediction.
  Returns:
    ``[C]`` float64 IoU in ``[0, 1]``; NaN for classes absent from both the
    ground truth and the predictions (0 / 0). A class predicted but never in
    the ground truth gets 0, not NaN.
  """
  cm = np.asarray(cm, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"Expected a square [C, C] matrix, got {cm.shape}.")
  tp = np.diag(cm)
  union = cm.sum(axis=0) + cm.sum(axis=1) - tp  # TP + FP + FN
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
  """mIoU as a fraction in ``[0, 1]`` (multiply by 100 for the usual %).

  NaN-mean over classes, so classes absent from both ground truth and
  predictions do not count; NaN if no class is present at all.
  """
  ious = iou_from_confusion(cm)
  if np.all(np.isnan(ious)):
    return float("nan")  # avoid nanmean's "Mean of empty slice" warning
  return float(np.nanmean(ious))


def pixel_accuracy(cm: np.ndarray) -> float:
  """Overall pixel accuracy ``trace / sum`` in ``[0, 1]``; NaN if empty."""
  cm = np.asarray(cm, dtype=np.float64)
  total = cm.sum()
  return float(np.trace(cm) / total) if total > 0 else float("nan")


def format_iou_table(ious: np.ndarray, class_names: Sequence[str]) -> str:
  """Markdown table of per-class IoU and mIoU, in percent with 1 decimal.

  Args:
    ious: ``[C]`` IoU fractions as from :func:`iou_from_confusion` (NaN for
      absent classes, shown as ``n/a`` and left out of the mIoU).
    class_names: ``C`` class names.
  Returns:
    Multi-line string, one row per class followed by an ``mIoU`` row.
  """
  ious = np.asarray(ious, dtype=np.float64).reshape(-1)
  if len(class_names) != ious.shape[0]:
    raise ValueError(f"{len(class_names)} class names for {ious.shape[0]} "
                     "IoU values.")

  def fmt(v: float) -> str:
    return "n/a" if np.isnan(v) else f"{100.0 * v:.1f}"

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN is fine
    miou = float(np.nanmean(ious)) if ious.size else float("nan")
  width = max([len("class"), len("mIoU")] + [len(n) for n in class_names])
  lines = [f"| {'class':<{width}} | IoU (%) |",
           f"|{'-' * (width + 2)}|--------:|"]
  for name, v in zip(class_names, ious):
    lines.append(f"| {name:<{width}} | {fmt(v):>7} |")
  lines.append(f"| {'mIoU':<{width}} | {fmt(miou):>7} |")
  return "\n".join(lines)
