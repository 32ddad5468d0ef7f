"""Evaluation metrics: segmentation (confusion matrix, per-class IoU, mIoU),
depth (Eigen et al.'s abs rel, sq rel, RMSE, RMSE log, delta thresholds) and
optical flow (end-point error, KITTI's Fl outlier percentage).

:func:`confusion_matrix` is a pure JAX function meant to run on device inside
``jit``/``pmap`` (sum it across devices with ``lax.psum``); everything else
works on the small ``[C, C]`` matrix on the host in NumPy. Accumulate the
per-batch matrices on the host in int64 (``np.asarray(cm, np.int64)``): a
full Cityscapes val pass has ~1e9 pixels, close to the int32 limit.

Depth and flow follow the same split: ``*_metric_sums`` run on device and
return per-batch sums (``lax.psum`` them); the host adds the batches up in
float64 and ``*_metrics`` turns the totals into the reported numbers.

IoU follows the Cityscapes / AdaptSegNet definition: ``TP / (TP + FP + FN)``
per class over the whole evaluation set, NaN for a class that appears neither
in the ground truth nor in the predictions, and mIoU is the NaN-mean.
"""
from typing import Dict, Sequence
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


def upsample_to(logits: Array, size) -> Array:
  """``[N, h, w, C]`` logits -> ``[N, H, W, C]`` at the label resolution
  ``size = (H, W)`` (bilinear, half-pixel centres), as the Cityscapes
  protocol scores 1024x512 inputs at 2048x1024; identity when equal."""
  size = tuple(size)
  if tuple(logits.shape[1:3]) == size:
    return logits
  return jax.image.resize(logits, (logits.shape[0], *size, logits.shape[-1]),
                          "bilinear")


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


# --------------------------------------------------------------------- depth
DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2",
                 "delta3")
# Lower is better for the errors, higher for the delta accuracies.
DEPTH_HIGHER_IS_BETTER = ("delta1", "delta2", "delta3")


# Garg et al. 2016 / Eigen et al. 2014 crops as used by monodepth and T2Net:
# (top, bottom, left, right) as fractions of the ground truth's height and
# width, truncated to int. They drop KITTI's sky rows, where the LiDAR has no
# returns, and the image borders; '' evaluates every pixel.
DEPTH_EVAL_CROPS = {
    "": None,
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}


def check_depth_eval_crop(crop: str) -> str:
  """``crop`` if it is a :data:`DEPTH_EVAL_CROPS` name, else ValueError (so
  configs fail at set-up, not at the first evaluation)."""
  if crop not in DEPTH_EVAL_CROPS:
    raise ValueError(f"Unknown depth eval crop {crop!r}; use "
                     f"{', '.join(repr(k) for k in DEPTH_EVAL_CROPS)}.")
  return crop


def depth_eval_crop_mask(height: int, width: int, crop: str) -> np.ndarray:
  """``[height, width]`` bool, True inside the ``crop`` of
  :data:`DEPTH_EVAL_CROPS` (all True for ''). NumPy on static shapes, so it
  is a constant under ``jit`` / ``pmap``; AND it with the validity mask."""
  fractions = DEPTH_EVAL_CROPS[check_depth_eval_crop(crop)]
  mask = np.zeros((height, width), bool)
  if fractions is None:
    mask[:] = True
    return mask
  top, bottom, left, right = fractions
  mask[int(top * height):int(bottom * height),
       int(left * width):int(right * width)] = True
  return mask


def depth_metric_sums(pred: Array, gt: Array, valid: Array,
                      min_depth: float, max_depth: float
                      ) -> Dict[str, Array]:
  """Eigen et al. (2014) depth metrics of each image, summed over the batch.

  As in the usual evaluation code (Monodepth, T2Net's ``evaluation.py``):
  pixels count where ``valid`` and ``min_depth < gt < max_depth``;
  predictions are clipped to ``[min_depth, max_depth]``; every metric is
  computed per image and the images are averaged (images without a valid
  pixel, e.g. eval padding, count for nothing).

  Args:
    pred, gt: ``[N, H, W]`` depths in metres. valid: ``[N, H, W]`` bool.
    min_depth, max_depth: the caps (e.g. 1e-3 and 10 m for NYUv2, 80 m for
      KITTI).
  Returns:
    ``{name: scalar sum over images}`` for :data:`DEPTH_METRICS` and
    ``'images'`` (the number of images with a valid pixel).
  """
  gt = gt.astype(jnp.float32)
  valid = valid & jnp.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
  gt = jnp.where(valid, gt, 1.0)  # keeps the masked-out divisions finite
  pred = jnp.clip(jnp.nan_to_num(pred.astype(jnp.float32), nan=max_depth),
                  min_depth, max_depth)
  n = jnp.sum(valid, axis=(1, 2)).astype(jnp.float32)
  mean = lambda x: (jnp.sum(jnp.where(valid, x, 0.0), axis=(1, 2))
                    / jnp.maximum(n, 1.0))
  err = pred - gt
  ratio = jnp.maximum(pred / gt, gt / pred)
  per_image = dict(
      abs_rel=mean(jnp.abs(err) / gt),
      sq_rel=mean(err ** 2 / gt),
      rmse=jnp.sqrt(mean(err ** 2)),
      rmse_log=jnp.sqrt(mean((jnp.log(pred) - jnp.log(gt)) ** 2)),
      delta1=mean((ratio < 1.25).astype(jnp.float32)),
      delta2=mean((ratio < 1.25 ** 2).astype(jnp.float32)),
      delta3=mean((ratio < 1.25 ** 3).astype(jnp.float32)))
  has = n > 0
  sums = {k: jnp.sum(jnp.where(has, v, 0.0)) for k, v in per_image.items()}
  sums["images"] = jnp.sum(has).astype(jnp.int32)
  return sums


def depth_metrics(sums: Dict[str, np.ndarray]) -> Dict[str, float]:
  """Mean of each depth metric over images from accumulated sums (NaN if
  no image had a valid pixel); the deltas as fractions in ``[0, 1]``."""
  n = float(sums["images"])
  return {k: float(sums[k]) / n if n > 0 else float("nan")
          for k in DEPTH_METRICS}


# ---------------------------------------------------------------------- flow
FLOW_METRICS = ("epe", "fl")
# KITTI 2015's outlier: EPE > 3 px and > 5 % of the true flow's length.
FL_ABS_PX, FL_REL = 3.0, 0.05


def flow_metric_sums(pred: Array, gt: Array, valid: Array
                     ) -> Dict[str, Array]:
  """End-point error and KITTI Fl outliers of one batch, summed over pixels.

  Args:
    pred, gt: ``[N, H, W, 2]`` flow in pixels. valid: ``[N, H, W]`` bool.
  Returns:
    ``{'epe': sum of EPE, 'outliers': count, 'pixels': valid count}``;
    pixels with a non-finite ground truth do not count.
  """
  valid = valid & jnp.all(jnp.isfinite(gt), axis=-1)
  gt = jnp.where(valid[..., None], gt, 0.0).astype(jnp.float32)
  epe = jnp.sqrt(jnp.sum((pred.astype(jnp.float32) - gt) ** 2, axis=-1))
  magnitude = jnp.sqrt(jnp.sum(gt ** 2, axis=-1))
  outlier = (epe > FL_ABS_PX) & (epe > FL_REL * magnitude)
  return dict(epe=jnp.sum(jnp.where(valid, epe, 0.0)),
              outliers=jnp.sum(outlier & valid).astype(jnp.int32),
              pixels=jnp.sum(valid).astype(jnp.int32))


def flow_metrics(sums: Dict[str, np.ndarray]) -> Dict[str, float]:
  """``{'epe': mean EPE in px over all valid pixels, 'fl': outlier %}``
  (KITTI's Fl-all counts over all valid pixels of the split too)."""
  n = float(sums["pixels"])
  if n == 0:
    return dict(epe=float("nan"), fl=float("nan"))
  return dict(epe=float(sums["epe"]) / n,
              fl=100.0 * float(sums["outliers"]) / n)
