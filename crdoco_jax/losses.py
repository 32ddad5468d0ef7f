"""CrDoCo loss functions: pure, jit/grad/vmap/pmap-safe array -> scalar maps.

Conventions: images and dense predictions are NHWC; logits ``[..., C]``;
integer labels ``[...]`` with ``ignore_label`` marking pixels without a label.
Masks are boolean or {0, 1} arrays broadcastable to the per-pixel map. Every
"mean" is over valid pixels only and is 0 (not NaN) when none is valid.

Functions returning ``(loss, per_pixel)`` give the scalar and the unreduced
per-pixel map (zero where masked), useful for visualisation and for
confidence-weighted variants.
"""
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def _f32(x: Array) -> Array:
  """Upcast to at least float32: bf16/fp16 inputs get f32 loss arithmetic,
  float64 stays float64 (gradient checks run in x64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def masked_mean(values: Array, mask: Optional[Array] = None) -> Array:
  """Mean of ``values`` over entries where ``mask`` is true; 0 if none is.

  Args:
    values: ``[...]`` float array.
    mask: optional array broadcastable to ``values`` (bool or {0, 1}).
  Returns:
    Scalar float32.
  """
  values = _f32(values)
  if mask is None:
    return jnp.mean(values)
  mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
  # max(count, 1) keeps the all-masked case at 0 instead of 0/0; the
  # numerator is exactly 0 there because masked values are multiplied by 0.
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------- task losses
def softmax_cross_entropy(logits: Array, labels: Array,
                          ignore_label: int = 255,
                          weights: Optional[Array] = None
                          ) -> Tuple[Array, Array]:
  """Pixel-wise softmax cross-entropy with an ignore label.

  Args:
    logits: ``[N, H, W, C]`` (any leading shape) unnormalised scores.
    labels: ``[N, H, W]`` integer class ids in ``[0, C)`` or ``ignore_label``.
    ignore_label: label value excluded from the loss and the mean.
    weights: optional per-pixel weights ``[N, H, W]`` (e.g. a confidence
      mask); the mean is then a weighted mean over valid pixels.
  Returns:
    ``(loss, per_pixel)``: scalar mean over valid pixels (0 if none) and the
    ``[N, H, W]`` per-pixel loss (0 at ignored pixels).
  """
  logits = _f32(logits)
  valid = labels != ignore_label
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  per_pixel = jnp.where(valid, nll, 0.0)
  mask = valid if weights is None else valid * weights
  return masked_mean(per_pixel, mask), per_pixel


def l1_loss(pred: Array, target: Array,
            mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """Masked L1 regression loss (depth, flow, image reconstruction).

  Args:
    pred, target: same shape, e.g. ``[N, H, W, D]``.
    mask: optional validity mask broadcastable to ``pred`` (e.g. ``[N, H, W,
      1]`` where ground truth exists).
  Returns:
    ``(loss, per_pixel)``: mean absolute error over valid entries and the
    elementwise ``|pred - target|`` (0 where masked).
  """
  diff = jnp.abs(_f32(pred) - _f32(target))
  if mask is not None:
    diff = jnp.where(jnp.broadcast_to(mask, diff.shape), diff, 0.0)
  return masked_mean(diff, mask), diff


def berhu_loss(pred: Array, target: Array, mask: Optional[Array] = None,
               threshold_ratio: float = 0.2) -> Tuple[Array, Array]:
  """Reverse Huber (berHu) loss, Laina et al. 2016, for depth regression.

  ``|d|`` for ``|d| <= c`` and ``(d^2 + c^2) / (2c)`` above, with
  ``c = threshold_ratio * max|d|`` over the valid entries of the batch. ``c``
  is treated as a constant (no gradient flows through the max).

  Args:
    pred, target: same shape. mask: optional validity mask.
    threshold_ratio: fraction of the largest residual where L1 turns into L2.
  Returns:
    ``(loss, per_pixel)`` as for :func:`l1_loss`.
  """
  diff = jnp.abs(_f32(pred) - _f32(target))
  valid = (jnp.ones_like(diff, dtype=bool) if mask is None
           else jnp.broadcast_to(mask, diff.shape).astype(bool))
  diff = jnp.where(valid, diff, 0.0)
  c = jax.lax.stop_gradient(threshold_ratio * jnp.max(diff))
  c = jnp.maximum(c, 1e-6)  # all-zero residual: keep the quadratic branch finite
  per_pixel = jnp.where(diff <= c, diff, (diff ** 2 + c ** 2) / (2 * c))
  per_pixel = jnp.where(valid, per_pixel, 0.0)
  return masked_mean(per_pixel, valid), per_pixel


def endpoint_error_loss(pred: Array, target: Array,
                        mask: Optional[Array] = None,
                        eps: float = 1e-6) -> Tuple[Array, Array]:
  """Mean end-point error ``||pred - target||_2`` over the last axis, the
  FlowNet / PWC-Net training loss for optical flow.

  Args:
    pred, target: ``[N, H, W, 2]`` flows. mask: optional validity mask
      broadcastable to ``[N, H, W, 1]`` (or ``[N, H, W]``).
    eps: inside the square root, so the gradient at a perfect match is 0,
      not NaN.
  Returns:
    ``(loss, per_pixel)``: mean EPE over valid pixels and the ``[N, H, W]``
    per-pixel EPE (0 where masked).
  """
  diff = _f32(pred) - _f32(target)
  epe = jnp.sqrt(jnp.sum(diff ** 2, axis=-1) + eps)
  if mask is None:
    return jnp.mean(epe), epe
  mask = jnp.asarray(mask)
  if mask.ndim == epe.ndim + 1:
    mask = mask[..., 0]
  mask = jnp.broadcast_to(mask, epe.shape)
  epe = jnp.where(mask, epe, 0.0)
  return masked_mean(epe, mask), epe


# ---------------------------------------------------- cross-domain consistency
def bidirectional_kl(logits_a: Array, logits_b: Array,
                     mask: Optional[Array] = None,
                     stop_gradient_a: bool = False,
                     stop_gradient_b: bool = False) -> Tuple[Array, Array]:
  """CrDoCo's segmentation consistency: KL(p_a || p_b) + KL(p_b || p_a).

  In CrDoCo ``logits_a = F_T(I_T)`` and ``logits_b = F_S(G_{T->S}(I_T))``.
  Per pixel the symmetric KL equals ``sum_c (p_a - p_b)(log p_a - log p_b)``,
  which is computed from log-softmax only (stable for logits of any size).

  Args:
    logits_a, logits_b: ``[N, H, W, C]`` logits of the two predictions.
    mask: optional ``[N, H, W]`` pixels to include (e.g. not-ignored or
      confident pixels).
    stop_gradient_a, stop_gradient_b: treat that side as a fixed target.
  Returns:
    ``(loss, per_pixel)``: mean over (masked) pixels of the symmetric KL summed
    over classes, and the ``[N, H, W]`` per-pixel divergence (0 where masked).
  """
  log_pa = jax.nn.log_softmax(_f32(logits_a), axis=-1)
  log_pb = jax.nn.log_softmax(_f32(logits_b), axis=-1)
  if stop_gradient_a:
    log_pa = jax.lax.stop_gradient(log_pa)
  if stop_gradient_b:
    log_pb = jax.lax.stop_gradient(log_pb)
  per_pixel = jnp.sum((jnp.exp(log_pa) - jnp.exp(log_pb)) * (log_pa - log_pb),
                      axis=-1)
  if mask is not None:
    per_pixel = jnp.where(mask, per_pixel, 0.0)
  return masked_mean(per_pixel, mask), per_pixel


def cross_pseudo_label(logits_a: Array, logits_b: Array,
                       mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """A hard-target variant of the consistency (not the paper's): each
  prediction learns the other's argmax, ``CE(p_a, argmax p_b) +
  CE(p_b, argmax p_a)``, as cross pseudo supervision does. Unlike the soft
  KL it transfers each net's decisions, small classes included, instead of
  pulling both towards a compromise.

  Args:
    logits_a, logits_b: ``[N, H, W, C]`` logits of the two predictions.
    mask: optional ``[N, H, W]`` pixel weights.
  Returns:
    ``(loss, per_pixel)`` as :func:`bidirectional_kl`.
  """
  per_pixel = sum(
      softmax_cross_entropy(x, jnp.argmax(y, -1), ignore_label=-1)[1]
      for x, y in ((logits_a, logits_b), (logits_b, logits_a)))
  if mask is not None:
    per_pixel = jnp.where(mask, per_pixel, 0.0)
  return masked_mean(per_pixel, mask), per_pixel


def agreement_mask(logits_a: Array, logits_b: Array) -> Array:
  """``[N, H, W]`` True where the two predictions' argmax classes agree.

  A consistency term restricted to these pixels sharpens the decisions the
  two nets share and leaves the ones they dispute alone; over all pixels,
  a disputed small-class pixel is pulled towards the class both nets find
  likelier, usually the larger one (README, "Evidence"). Not the paper's.
  """
  return jnp.argmax(logits_a, -1) == jnp.argmax(logits_b, -1)


def ensemble_labels(logits_a: Array, logits_b: Array) -> Array:
  """``[N, H, W]`` argmax of the two predictions' mean class probabilities
  (``[N, H, W, C]`` logits each): where the nets disagree, the more
  confident one decides. Labels for ``loss.semantic`` (not the paper's)."""
  probs = jax.nn.softmax(_f32(logits_a), -1) + jax.nn.softmax(_f32(logits_b), -1)
  return jnp.argmax(probs, -1)


def class_balance_weights(logits_a: Array, logits_b: Array,
                          power: float = 1.0, eps: float = 1e-4) -> Array:
  """Per-pixel weights that balance a consistency loss over classes.

  A plain mean over pixels lets the majority classes dominate the
  agreement, and two unsupervised predictions then agree by giving up the
  small classes (README, "Evidence"). Here a pixel's weight is
  ``sum_c q_c * f_c**-power`` with ``q`` the mean of the two softmaxes and
  ``f_c`` the share of class ``c`` in ``q`` over the batch (as class-balanced
  self-training does with pseudo-labels); ``power=1`` gives every class the
  same total weight, ``0`` is the plain mean. No gradient flows through the
  weights; they are normalised to mean 1.

  Args:
    logits_a, logits_b: ``[N, H, W, C]`` logits of the two predictions.
  Returns:
    ``[N, H, W]`` float32 weights, mean 1.
  """
  q = jax.lax.stop_gradient(0.5 * (jax.nn.softmax(_f32(logits_a), -1)
                                   + jax.nn.softmax(_f32(logits_b), -1)))
  share = jnp.mean(q, axis=tuple(range(q.ndim - 1)))
  weights = jnp.sum(q * (share + eps) ** -power, axis=-1)
  return weights / jnp.mean(weights)


def label_shares(labels: Array, num_classes: int,
                 ignore_label: int = 255) -> Array:
  """``[C]`` share of each class among the valid pixels of ``labels``
  (``[...]`` integer ids or ``ignore_label``); all 0 if none is valid."""
  counts = jnp.sum(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
                   * (labels != ignore_label)[..., None],
                   axis=tuple(range(labels.ndim)))
  return counts / jnp.maximum(jnp.sum(counts), 1.0)


def label_balance_weights(labels: Array, num_classes: int, power: float,
                          ignore_label: int = 255) -> Array:
  """Per-pixel weights ``f_c**-power`` from the labels' own class shares
  ``f`` (over the batch), normalised to mean 1 over the valid pixels;
  ignored pixels weigh 1. ``power=1`` gives every class present the same
  total weight, ``0`` all pixels 1.

  For the source side of the cycle loss (``loss.cycle_class_balance``):
  a plain pixel mean lets a translator pair merge a small class into a
  large neighbour (cars into road on the demo) at almost no cost, since
  its pixels are few. Not CycleGAN's or the paper's.

  Args:
    labels: ``[N, H, W]`` integer class ids or ``ignore_label``.
  Returns:
    ``[N, H, W]`` float32 weights, no gradient.
  """
  valid = labels != ignore_label
  share = label_shares(labels, num_classes, ignore_label)
  per_class = jnp.where(share > 0, jnp.maximum(share, 1e-12) ** -power, 0.0)
  w = per_class[jnp.where(valid, labels, 0)]
  mean = jnp.sum(jnp.where(valid, w, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
  return jnp.where(valid, w / jnp.maximum(mean, 1e-12), 1.0)


def class_prior_loss(logits: Array, labels: Array, num_classes: int,
                     ignore_label: int = 255, eps: float = 1e-6) -> Array:
  """KL(prior || mean prediction): how far the share of each class in an
  unlabeled prediction has fallen below its share in the labels.

  A guard against the majority-class drift of unsupervised agreement terms
  (README, "Evidence"); not the paper's. ``prior`` is the class histogram of
  ``labels`` (the source batch's labels, with no gradient), ``m`` the mean
  softmax of ``logits`` over all pixels. The loss is ``sum_c prior_c *
  (log prior_c - log m_c)``: 0 when the shares match and growing like
  ``-log m_c`` as a class present in the labels vanishes from the
  prediction. Since it is linear in ``prior``, its gradient from a noisy
  per-batch histogram is unbiased for the expected one.

  Args:
    logits: ``[N, H, W, C]`` logits of the unlabeled prediction.
    labels: ``[M, H', W']`` integer class ids (any spatial size) or
      ``ignore_label``.
  Returns:
    Scalar float32 (0 if ``labels`` holds no valid pixel).
  """
  prior = label_shares(labels, num_classes, ignore_label)
  m = jnp.mean(jax.nn.softmax(_f32(logits), -1),
               axis=tuple(range(logits.ndim - 1)))
  return jnp.sum(prior * (jnp.log(prior + eps) - jnp.log(m + eps)))


def regression_consistency(pred_a: Array, pred_b: Array,
                           mask: Optional[Array] = None,
                           stop_gradient_a: bool = False,
                           stop_gradient_b: bool = False
                           ) -> Tuple[Array, Array]:
  """Consistency for regression tasks (depth, flow): masked L1 between two
  predictions ``[N, H, W, D]`` of the same scene; see :func:`l1_loss`."""
  if stop_gradient_a:
    pred_a = jax.lax.stop_gradient(pred_a)
  if stop_gradient_b:
    pred_b = jax.lax.stop_gradient(pred_b)
  return l1_loss(pred_a, pred_b, mask)


# --------------------------------------------------------------- adversarial
def lsgan_loss(pred: Array, target: float) -> Array:
  """Least-squares GAN loss ``mean((D(x) - target)^2)`` (CycleGAN default).

  Args:
    pred: discriminator outputs of any shape (e.g. ``[N, h, w, 1]`` patches).
    target: the label the outputs are pushed to (e.g. 1 real, 0 fake).
  Returns:
    Scalar mean over all entries.
  """
  return jnp.mean((_f32(pred) - target) ** 2)


def sigmoid_bce_loss(logits: Array, target: float) -> Array:
  """Sigmoid cross-entropy with logits against a constant label
  (AdaptSegNet's output-space GAN loss); stable for logits of any size.

  Args:
    logits: discriminator logits of any shape. target: label in [0, 1].
  Returns:
    Scalar mean over all entries.
  """
  logits = _f32(logits)
  # -[t log s(x) + (1-t) log(1-s(x))] = softplus(x) - t x, stably.
  return jnp.mean(jax.nn.softplus(logits) - target * logits)


GAN_LOSSES = {"lsgan": lsgan_loss, "bce": sigmoid_bce_loss}


def gan_loss_fn(name: str) -> Callable[[Array, float], Array]:
  """Looks up a GAN loss by name ('lsgan' or 'bce')."""
  if name not in GAN_LOSSES:
    raise ValueError(f"Unknown GAN loss {name!r}; choose from "
                     f"{sorted(GAN_LOSSES)}.")
  return GAN_LOSSES[name]


def generator_adversarial_loss(fake_pred: Array, gan_loss: str = "lsgan",
                               target: float = 1.0) -> Array:
  """Generator side: push D's outputs on generated inputs towards ``target``
  (the label D gives real samples of the domain being imitated)."""
  return gan_loss_fn(gan_loss)(fake_pred, target)


def discriminator_loss(real_pred: Array, fake_pred: Array,
                       gan_loss: str = "lsgan", real_target: float = 1.0,
                       fake_target: float = 0.0) -> Array:
  """Discriminator side: ``0.5 * (L(D(real), real_target) + L(D(fake),
  fake_target))``, the CycleGAN/AdaptSegNet halving. Pass detached fakes."""
  fn = gan_loss_fn(gan_loss)
  return 0.5 * (fn(real_pred, real_target) + fn(fake_pred, fake_target))


# ------------------------------------------------------------ reconstruction
def cycle_loss(image: Array, reconstruction: Array, pool: int = 1,
               weights: Optional[Array] = None) -> Array:
  """Cycle reconstruction ``mean|x - G_B(G_A(x))|`` over ``[N, H, W, C]``.

  ``weights`` (``[N, H, W]``, mean 1; e.g. ``label_balance_weights``)
  weigh each pixel's error; with ``pool > 1`` they are pooled alike.

  ``pool > 1`` (not CycleGAN's): the L1 between ``pool x pool`` means of
  both images, so the cycle asks for the layout and colours back but not
  for the realisation of a texture or noise that the translation dropped
  (which no translator can recover; penalising it pulls the translator
  that must invent them towards their mean). ``H`` and ``W`` must be
  multiples of ``pool``.
  """
  if weights is not None and weights.shape != image.shape[:3]:
    raise ValueError(f"cycle weights of shape {weights.shape} do not match "
                     f"the images' {image.shape[:3]}: loss.cycle_class_balance "
                     "needs source labels at the source images' size.")
  if pool > 1:
    n, h, w, c = image.shape
    if h % pool or w % pool:
      raise ValueError(f"loss.cycle_pool={pool} must divide the image size "
                       f"{h}x{w}.")
    mean = lambda x: _f32(x).reshape(n, h // pool, pool, w // pool, pool,
                                     -1).mean((2, 4))
    image, reconstruction = mean(image), mean(reconstruction)
    if weights is not None:
      weights = mean(weights[..., None])[..., 0]
  if weights is None:
    return l1_loss(reconstruction, image)[0]
  diff = jnp.mean(jnp.abs(_f32(reconstruction) - _f32(image)), axis=-1)
  return jnp.mean(jax.lax.stop_gradient(_f32(weights)) * diff)


def identity_loss(image: Array, same_domain_translation: Array) -> Array:
  """CycleGAN identity loss ``mean|y - G_{X->Y}(y)|`` for ``y`` already in
  the output domain; keeps colours when the translator is not needed."""
  return l1_loss(same_domain_translation, image)[0]
