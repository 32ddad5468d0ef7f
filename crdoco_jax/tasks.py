"""What each dense prediction task means for the CrDoCo objective.

The train step is written once, in the paper's terms (supervised task loss,
cross-domain consistency, output-space adversarial loss); this module says
what those terms are for ``config.task``:

============  =======================  ======================  ===============
task          supervised loss          consistency             D^feat sees
============  =======================  ======================  ===============
segmentation  CE, ignore label         bidirectional KL        softmax
depth         L1 / berHu (valid px)    L1                      normalised depth
flow          EPE / L1 (valid px)      L1                      flow / scale
============  =======================  ======================  ===============

Everything is a pure function of arrays. Network outputs ``out`` are
``[N, H, W, C]``: logits (segmentation), encoded depth ``[.., 1]`` (log
metres, or metres, ``config.depth.log_depth``) or flow / ``config.flow.scale``
``[.., 2]``. Labels as the input pipeline delivers them: int32 ``[N, H, W]``
class ids (segmentation) or ``(label [N, H, W, D] float32, valid [N, H, W]
bool)`` with depth in metres and flow in pixels (u right, v down).
Flow examples hold both frames on the channel axis: ``image [N, H, W, 6]``.
"""
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crdoco_jax import evaluate, losses, visualize

TASKS = ("segmentation", "depth", "flow")
Array = jax.Array


class Task(NamedTuple):
  """The task-specific pieces of the objective and of evaluation."""
  name: str
  frames: int  # images per example: 2 for flow (frame 1, frame 2)
  # (batch, 'source' | 'target' | '') -> labels of that domain (or eval batch).
  labels: Callable[[Dict[str, Array], str], Any]
  supervised: Callable[[Array, Any], Array]   # (out, labels) -> scalar
  consistency: Callable[[Array, Array], Array]  # (out_a, out_b) -> scalar
  disc_input: Callable[[Array], Array]        # out -> D^feat's input
  # (out, source labels) -> scalar class-prior term (loss.class_prior);
  # None where the task has no classes.
  class_prior: Optional[Callable[[Array, Any], Array]]
  # (source labels, power) -> [N, H, W] pixel weights of the source-side
  # cycle loss (loss.cycle_class_balance); None where the task has no classes.
  cycle_weights: Optional[Callable[[Any, float], Array]]
  predict: Callable[[Array], Array]           # out -> ids / metres / pixels
  # (out, eval batch) -> pytree of sums over the batch (psum-able).
  eval_sums: Callable[[Array, Dict[str, Array]], Any]
  # Host side. eval_sums totals over the split -> metrics.
  metrics: Callable[[Any], Dict[str, Any]]
  # metrics -> reported fields: 'target_<metric>' numbers (mIoU and pixel
  # accuracy in %), optionally 'per_class_iou' {name: %}.
  scores: Callable[[Dict[str, Any]], Dict[str, Any]]
  # metrics -> the evaluation's log text (segmentation: an IoU table).
  describe: Callable[[Dict[str, Any]], str]
  # (label or prediction [H, W, ...], valid [H, W] or None) -> uint8 RGB.
  draw: Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]


def _key(domain: str, name: str) -> str:
  return f"{domain}_{name}" if domain else name


def _regression_loss(name: str) -> Callable:
  if name == "l1":
    return losses.l1_loss
  if name == "berhu":
    return losses.berhu_loss
  if name == "epe":
    return losses.endpoint_error_loss
  raise ValueError(f"Unknown loss.regression {name!r}; use l1, berhu or epe.")


def _check_regression_loss(config: ml_collections.ConfigDict) -> None:
  if config.loss.consistency_balance:
    raise ValueError(
        f"loss.consistency_balance={config.loss.consistency_balance} weights "
        f"classes; the {config.task} task has none. Leave it at 0.")
  if config.loss.consistency_form != "kl":
    raise ValueError(
        f"loss.consistency_form={config.loss.consistency_form!r} is for "
        f"segmentation; the {config.task} task uses L1. Leave it at 'kl'.")
  if config.loss.get("consistency_mask", "all") != "all":
    raise ValueError(
        f"loss.consistency_mask={config.loss.consistency_mask!r} compares "
        f"class decisions; the {config.task} task has none. Leave it at "
        "'all'.")
  if config.loss.get("consistency_mean", "pixel") != "pixel":
    raise ValueError(
        f"loss.consistency_mean={config.loss.consistency_mean!r} averages "
        f"over classes; the {config.task} task has none. Leave it at "
        "'pixel'.")
  if config.loss.get("class_prior", 0.0):
    raise ValueError(
        f"loss.class_prior={config.loss.class_prior} matches class shares; "
        f"the {config.task} task has none. Leave it at 0.")
  if config.loss.get("semantic", 0.0):
    raise ValueError(
        f"loss.semantic={config.loss.semantic} holds G_T->S to class "
        f"labels; the {config.task} task has none. Leave it at 0.")
  if config.loss.get("cycle_class_balance", 0.0):
    raise ValueError(
        f"loss.cycle_class_balance={config.loss.cycle_class_balance} weighs "
        f"the cycle by the source labels' classes; the {config.task} task "
        "has none. Leave it at 0.")


def _regression_labels(batch, domain):
  return batch[_key(domain, "label")], batch[_key(domain, "valid")]


def _consistency_l1(a: Array, b: Array) -> Array:
  # Both predictions of the same scene are free (no stop-gradient), as the
  # segmentation KL: each task net pulls the other towards agreement.
  return losses.regression_consistency(a, b)[0]


CONSISTENCY_MASKS = ("all", "agree")
CONSISTENCY_MEANS = ("pixel", "element")


def _segmentation_consistency(loss: ml_collections.ConfigDict) -> Callable:
  """The paper's bidirectional KL, or the hard-target variant
  (``loss.consistency_form``), optionally class-balanced
  (``loss.consistency_balance``: the power of
  :func:`losses.class_balance_weights`; 0 = the paper's plain mean) and
  optionally on the pixels where both nets' argmax agree only
  (``loss.consistency_mask='agree'``; 'all' = the paper).

  ``loss.consistency_mean``: 'pixel' averages the per-pixel loss (the KL
  summed over the C classes) over pixels; 'element' averages over pixels
  and classes, i.e. divides by C, as PyTorch's ``nn.KLDivLoss()`` does with
  its default reduction (the released code's ``KL_criterion`` is undefined;
  ../shared/REFERENCE.md). The hard form is divided by C alike."""
  forms = dict(kl=losses.bidirectional_kl, hard=losses.cross_pseudo_label)
  if loss.consistency_form not in forms:
    raise ValueError(f"loss.consistency_form={loss.consistency_form!r}; use "
                     "'kl' (the paper) or 'hard'.")
  if loss.consistency_balance < 0:
    raise ValueError(f"loss.consistency_balance={loss.consistency_balance} "
                     "must be >= 0 (0: the paper's plain mean; 1: "
                     "class-balanced).")
  # Configs written before the key existed: the paper's all pixels.
  mask = loss.get("consistency_mask", "all")
  if mask not in CONSISTENCY_MASKS:
    raise ValueError(f"loss.consistency_mask={mask!r}; use 'all' (the "
                     "paper) or 'agree'.")
  form, balance = forms[loss.consistency_form], loss.consistency_balance
  # Configs written before the key existed: the per-pixel mean.
  mean = loss.get("consistency_mean", "pixel")
  if mean not in CONSISTENCY_MEANS:
    raise ValueError(f"loss.consistency_mean={mean!r}; use 'pixel' or "
                     "'element' (PyTorch KLDivLoss's default reduction).")
  per_class = mean == "element"

  def weights(a, b):
    w = losses.class_balance_weights(a, b, balance) if balance else None
    if mask == "agree":
      agree = losses.agreement_mask(a, b)
      w = agree if w is None else w * agree
    return w
  # The number of classes C is the logits' last axis.
  return lambda a, b: (form(a, b, weights(a, b))[0]
                       / (a.shape[-1] if per_class else 1))


def segmentation(config: ml_collections.ConfigDict) -> Task:
  ignore, classes = config.data.ignore_label, config.data.num_classes
  names = config.data.class_names
  palette = visualize.palette_for(classes, names)
  argmax = lambda out: jnp.argmax(out, -1)
  return Task(
      name="segmentation", frames=1,
      labels=lambda batch, domain: batch[_key(domain, "label")],
      supervised=lambda out, y: losses.softmax_cross_entropy(out, y,
                                                             ignore)[0],
      consistency=_segmentation_consistency(config.loss),
      disc_input=lambda out: jax.nn.softmax(out, axis=-1),
      class_prior=lambda out, y: losses.class_prior_loss(out, y, classes,
                                                         ignore),
      cycle_weights=lambda y, power: losses.label_balance_weights(
          y, classes, power, ignore),
      predict=argmax,
      eval_sums=lambda out, batch: evaluate.confusion_matrix(
          argmax(evaluate.upsample_to(out, batch["label"].shape[1:3])),
          batch["label"], classes, ignore),
      metrics=_segmentation_metrics,
      scores=lambda m: dict(
          target_miou=100 * m["miou"],
          target_pixel_accuracy=100 * m["pixel_accuracy"],
          per_class_iou={n: 100 * float(v)
                         for n, v in zip(names, m["ious"])}),
      describe=lambda m: "\n" + evaluate.format_iou_table(m["ious"], names),
      draw=lambda x, valid: visualize.colorize(x, palette))


def _segmentation_metrics(cm) -> Dict[str, Any]:
  return dict(miou=evaluate.mean_iou(cm), ious=evaluate.iou_from_confusion(cm),
              pixel_accuracy=evaluate.pixel_accuracy(cm), pixels=int(cm.sum()))


def _regression_report(metrics: Callable) -> Dict[str, Callable]:
  """The host-side Task fields shared by depth and flow."""
  return dict(
      metrics=metrics,
      scores=lambda m: {f"target_{k}": v for k, v in m.items()},
      describe=lambda m: ", ".join(f"{k} {v:.4g}" for k, v in m.items()))


def depth(config: ml_collections.ConfigDict) -> Task:
  """Depth in metres; the net regresses ``log(depth)`` or metres."""
  d = config.depth
  _check_regression_loss(config)
  loss = _regression_loss(config.loss.regression)
  if d.log_depth:
    encode = lambda m: jnp.log(jnp.maximum(m, d.min_depth))
    decode = jnp.exp
    # log-depth is already O(1) for depths of 0.1 - 100 m.
    normalise = lambda out: out
  else:
    encode = decode = lambda x: x
    normalise = lambda out: out / d.max_depth

  def supervised(out, labels):
    depth_m, valid = labels
    return loss(out, encode(depth_m), valid[..., None])[0]

  def predict(out):
    return jnp.clip(decode(out), d.min_depth, d.max_depth)

  crop = evaluate.check_depth_eval_crop(d.eval_crop)

  def eval_sums(out, batch):
    gt = batch["label"][..., 0]  # [N, H, W]; H, W static, so is the crop
    valid = batch["valid"] & evaluate.depth_eval_crop_mask(*gt.shape[1:],
                                                           crop)
    return evaluate.depth_metric_sums(predict(out)[..., 0], gt, valid,
                                      d.min_depth, d.max_depth)

  return Task(
      name="depth", frames=1, labels=_regression_labels,
      supervised=supervised, consistency=_consistency_l1,
      disc_input=normalise, class_prior=None, cycle_weights=None,
      predict=predict, eval_sums=eval_sums,
      draw=lambda x, valid: visualize.colorize_depth(
          x[..., 0], valid, d.min_depth, d.max_depth),
      **_regression_report(evaluate.depth_metrics))


def flow(config: ml_collections.ConfigDict) -> Task:
  """Two-frame flow in pixels; the net regresses ``flow / flow.scale``
  (FlowNet's trick: O(1) targets for any image size)."""
  scale = config.flow.scale
  _check_regression_loss(config)
  loss = _regression_loss(config.loss.regression)

  def supervised(out, labels):
    flow_px, valid = labels
    return loss(out, flow_px / scale, valid[..., None])[0]

  predict = lambda out: out * scale
  return Task(
      name="flow", frames=2, labels=_regression_labels,
      supervised=supervised, consistency=_consistency_l1,
      disc_input=lambda out: out, class_prior=None, cycle_weights=None,
      predict=predict,
      eval_sums=lambda out, batch: evaluate.flow_metric_sums(
          predict(out), batch["label"], batch["valid"]),
      draw=lambda x, valid: visualize.flow_to_color(x, valid, scale),
      **_regression_report(evaluate.flow_metrics))


_BUILDERS = dict(segmentation=segmentation, depth=depth, flow=flow)


def get_task(config: ml_collections.ConfigDict) -> Task:
  """The :class:`Task` of ``config.task``."""
  if config.task not in _BUILDERS:
    raise ValueError(f"Unknown task {config.task!r}; choose from {TASKS}.")
  return _BUILDERS[config.task](config)


def num_frames(config: ml_collections.ConfigDict) -> int:
  """Images per example (the task net sees ``3 * num_frames`` channels)."""
  return 2 if config.task == "flow" else 1


# ---------------------------------------------------------------- frames
def to_frames(x: Array, frames: int) -> Array:
  """``[N, H, W, 3k]`` -> ``[k N, H, W, 3]`` (frame-major), so translators
  and image discriminators see ordinary RGB images; identity for k = 1."""
  if frames == 1:
    return x
  return jnp.concatenate(jnp.split(x, frames, axis=-1), axis=0)


def from_frames(x: Array, frames: int) -> Array:
  """Inverse of :func:`to_frames`: ``[k N, H, W, 3]`` -> ``[N, H, W, 3k]``."""
  if frames == 1:
    return x
  return jnp.concatenate(jnp.split(x, frames, axis=0), axis=-1)
