"""The CrDoCo train step: pure functions, pmapped over ``AXIS``.

One adaptation step minimises, over translators G and task nets F,

  L_G,F = w_task * [L_task(F_S(I_S), Y_S) + L_task(F_T(I_{S->T}), Y_S)]
        + w_consistency * L_con(F_T(I_T), F_S(I_{T->S}))
        [+ w_class_prior * (KL(pi_S || <F_T(I_T)>) + KL(pi_S || <F_S(I_{T->S})>))]
        [+ w_semantic * CE(F_S(I_{T->S}), argmax F(I_T)), F fixed]
        + w_feat_adv * [L_adv(D^feat_T(F_T(I_{S->T}))) + L_adv(D^feat_S(F_S(I_{T->S})))]
        + w_img_adv * [L_adv(D^img_T(I_{S->T})) + L_adv(D^img_S(I_{T->S}))]
        + w_rec * [|G_{T->S}(I_{S->T}) - I_S| + |G_{S->T}(I_{T->S}) - I_T|]

(the bracketed terms are options, off by default and not the paper's:
pi_S is the source batch's class histogram, <.> a mean softmax; the
semantic term is CyCADA's and trains G_{T->S} only),
then updates the discriminators on the same (detached) translations and
predictions. L_task, L_con and what D^feat sees depend on ``config.task``
(``tasks.py``): CE, bidirectional KL and softmax for segmentation; masked
L1/berHu/EPE, L1 and the normalised output for depth and flow. With
``disc.feat_input='features'`` D^feat sees the backbone features each head
reads instead (DeepLab only).

Batches are dicts of ``[B, H, W, ...]`` arrays per device:
``source_image``, ``source_label``, ``target_image`` (and ``target_label``
for the oracle); regression tasks add ``*_valid`` masks. Images are in
[-1, 1] (flow: both frames on the channel axis, ``[B, H, W, 6]``, each
translated by the same translator); labels are int32 class ids, or float
depth (metres) / flow (pixels).
"""
import functools
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from crdoco_jax import augment, image_pool, losses, tasks
from crdoco_jax.models import (FEATURES, Networks, feature_level,
                               sown_features)
from crdoco_jax.parallel import AXIS
from crdoco_jax.state import CrDoCoState, head_names, uses_translator

# Labels of the output-space discriminators (AdaptSegNet / released code).
SOURCE, TARGET = 0.0, 1.0
PHASES = ("translator", "adapt")
Batch = Dict[str, jax.Array]


class _TaskNets:
  """Applies F_S / F_T in train mode, threading BatchNorm statistics through
  successive calls (each input keeps its own batch statistics, as separate
  PyTorch forward passes do). With ``features``, each output dict also
  holds ``'features'``: ``{head: backbone features}`` (for D_feat)."""

  def __init__(self, nets: Networks, params, batch_stats, remat=False,
               batched=False, features=False):
    mutable = ["batch_stats"] + ([FEATURES] if features else [])
    make = lambda module: _checkpointed(
        lambda variables, x, domain: module.apply(
            variables, x, domain, train=True, mutable=mutable),
        remat)
    self._apply = make(nets.task)
    # Two stacked inputs, each with its own BatchNorm statistics.
    self._apply_two = make(nets.task.clone(bn_groups=2)) if batched else None
    self.params, self.batch_stats = params, batch_stats

  def _run(self, apply, x, domain):
    out, mutated = apply(
        {"params": self.params, "batch_stats": self.batch_stats}, x, domain)
    self.batch_stats = mutated["batch_stats"]
    if FEATURES in mutated:
      out = dict(out, features=sown_features(mutated))
    return out

  def __call__(self, x, domain):
    return self._run(self._apply, x, domain)

  def two(self, a, b, domain):
    """``(F(a), F(b))``: as two calls, in one pass when batched."""
    if self._apply_two is None:
      return self(a, domain), self(b, domain)
    return _stacked(lambda x: self._run(self._apply_two, x, domain), a, b)


def _stacked(fn: Callable, a: jax.Array, b: jax.Array):
  """``(fn(a), fn(b))`` from one call of ``fn`` on ``a`` and ``b`` stacked on
  the batch axis: for networks that treat the samples of a batch
  independently (or, as ``_TaskNets.two``, normalise each half alone)."""
  if a.shape != b.shape:
    raise ValueError(f"stacked passes need equal shapes, got {a.shape} and "
                     f"{b.shape} (compute.batch_passes needs equal source "
                     "and target batches and image sizes).")
  out = fn(jnp.concatenate([a, b]))
  n = a.shape[0]
  return (jax.tree_util.tree_map(lambda y: y[:n], out),
          jax.tree_util.tree_map(lambda y: y[n:], out))


def _checkpointed(apply: Callable, remat: bool) -> Callable:
  """``apply(variables, x, name)``, under ``jax.checkpoint`` when ``remat``
  (``compute.remat_networks``): the backward pass recomputes the network's
  forward instead of keeping its activations, so only each pass's input and
  output stay live between the forward and the backward pass."""
  return jax.checkpoint(apply, static_argnums=(2,)) if remat else apply


def _per_head(fn: Callable, heads, aux_weight: float, *outputs) -> jax.Array:
  """``sum_h weight_h * fn(outputs[0][h], outputs[1][h], ...)``."""
  return sum((1.0 if h == "main" else aux_weight) * fn(*(o[h] for o in outputs))
             for h in heads)


def loss_weights(config: ml_collections.ConfigDict, step) -> Dict[str, Any]:
  """Weight of every generator-side term at global ``step``.

  The unsupervised terms on the task nets (consistency, output-space
  adversarial) are off for the first ``loss.adapt_start`` adaptation steps
  and then ramp up linearly over ``loss.adapt_ramp`` steps: from scratch,
  both task nets can agree perfectly by predicting one class everywhere on
  target-style images, so they first learn the source task
  (../shared/FINDINGS.md; the paper starts from pretrained task nets).
  """
  w = config.loss
  t = jnp.asarray(step) - config.translator.pretrain_steps - w.adapt_start
  if w.adapt_ramp > 0:
    ramp = jnp.clip((t + 1) / w.adapt_ramp, 0.0, 1.0)
  else:
    ramp = (t >= 0).astype(jnp.float32)
  return dict(task=w.task, task_reconstructed=w.get("task_reconstructed", 0.0),
              consistency=w.consistency * ramp,
              class_prior=w.get("class_prior", 0.0) * ramp,
              semantic=w.get("semantic", 0.0) * ramp,
              feat_adv=w.feat_adv * ramp, img_adv=w.img_adv, rec=w.rec,
              identity=w.identity)


def all_finite(tree) -> jax.Array:
  """True iff every leaf of ``tree`` is free of NaN and Inf."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


CONSISTENCY_GRADS = ("both", "target_net", "source_net")
SEMANTIC_LABELS = ("source_net", "target_net", "ensemble")


def _check_choices(config: ml_collections.ConfigDict) -> None:
  """Fails on a misspelt choice now, not as a silent default."""
  choices = {"loss.consistency_grad": (config.loss.consistency_grad,
                                       CONSISTENCY_GRADS),
             "loss.semantic_labels": (
                 config.loss.get("semantic_labels", "source_net"),
                 SEMANTIC_LABELS),
             "loss.img_gan": (config.loss.img_gan, tuple(losses.GAN_LOSSES)),
             "loss.feat_gan": (config.loss.feat_gan,
                               tuple(losses.GAN_LOSSES))}
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise ValueError(f"{key}={value!r}; use one of {allowed}.")


def make_train_step(config: ml_collections.ConfigDict, nets: Networks,
                    phase: str = "adapt") -> Callable:
  """Returns ``train_step(state, batch) -> (state, metrics)``, to be pmapped
  with ``axis_name=AXIS``. ``phase='translator'`` trains translators and
  image discriminators only (CycleGAN pretraining)."""
  if phase not in PHASES:
    raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
  if phase == "translator" and not uses_translator(config):
    raise ValueError(f"method {config.method!r} has no translator to train.")
  w = config.loss
  _check_choices(config)
  heads = head_names(config)
  method = config.method
  adapt = phase == "adapt"
  train_translator = uses_translator(config) and (
      not adapt or not config.translator.frozen)
  img_adv = functools.partial(losses.generator_adversarial_loss,
                              gan_loss=w.img_gan, target=1.0)
  feat_adv = functools.partial(losses.generator_adversarial_loss,
                               gan_loss=w.feat_gan)
  task = tasks.get_task(config)
  # What D_feat sees: each head's output (softmax for segmentation), or the
  # backbone features the head reads (disc.feat_input='features').
  features = feature_level(config)
  if features:
    d_view = lambda outputs: outputs["features"]
  else:
    d_view = lambda outputs: {h: task.disc_input(outputs[h]) for h in heads}
  # Translators and image discriminators see each frame as an RGB image.
  frames = lambda x: tasks.to_frames(x, task.frames)
  remat = config.compute.get("remat_networks", False)
  apply_g = _checkpointed(nets.translator.apply, remat)
  apply_d_img = _checkpointed(nets.d_img.apply, remat)
  apply_d_feat = _checkpointed(nets.d_feat.apply, remat)
  # One pass per network over the inputs it sees in the same round (fewer,
  # larger convolutions); else one pass per input. Same maths.
  batched = config.compute.get("batch_passes", False)
  if batched and (tuple(config.source.image_size)
                  != tuple(config.target.image_size)):
    raise ValueError(
        "compute.batch_passes stacks source and target inputs, so it needs "
        f"equal image sizes; source.image_size={config.source.image_size}, "
        f"target.image_size={config.target.image_size}. Set "
        "compute.batch_passes=False or resize both domains alike.")
  two = _stacked if batched else lambda fn, a, b: (fn(a), fn(b))

  def generator_terms(params, state: CrDoCoState, batch: Batch):
    """Generator-side loss terms and what the discriminator update reuses."""
    x_s, y_s, x_t = (batch["source_image"], task.labels(batch, "source"),
                     batch["target_image"])
    terms, cache = {}, {}
    F = _TaskNets(nets, params.get("task"), state.task.batch_stats, remat,
                  batched, features and adapt and w.feat_adv > 0)
    if method == "source_only":
      terms["task"] = _per_head(task.supervised, heads, w.aux.task,
                                F(x_s, "T"), {h: y_s for h in heads})
      return terms, cache, F.batch_stats
    if method == "oracle":
      y_t = task.labels(batch, "target")
      terms["task"] = _per_head(task.supervised, heads, w.aux.task,
                                F(x_t, "T"), {h: y_t for h in heads})
      return terms, cache, F.batch_stats

    g_params = params.get("translator", state.translator.params)
    G = lambda x, direction: tasks.from_frames(apply_g(
        {"params": g_params}, frames(x), direction), task.frames)
    x_st = G(x_s, "S2T")
    if batched and train_translator:
      # G_T->S sees I_T and, for the cycle, I_{S->T}: one pass.
      x_ts, x_sts = _stacked(lambda x: G(x, "T2S"), x_t, x_st)
    else:
      x_ts, x_sts = G(x_t, "T2S"), None
    cache.update(x_st=jax.lax.stop_gradient(x_st),
                 x_ts=jax.lax.stop_gradient(x_ts))
    # What the task nets see; without task gradients the translators learn
    # from the image-level terms only (as pretrained, frozen CycleGANs do).
    seen = (lambda x: x) if config.translator.task_gradients else (
        jax.lax.stop_gradient)
    f_st, f_ts = seen(x_st), seen(x_ts)
    if train_translator:
      D_img = lambda x, domain: apply_d_img(
          {"params": state.d_img.params}, x, domain)
      terms["img_adv"] = (img_adv(D_img(frames(x_st), "T"))
                          + img_adv(D_img(frames(x_ts), "S")))
      if x_sts is None:
        x_sts = G(x_st, "T2S")
      cycle = functools.partial(losses.cycle_loss,
                                pool=w.get("cycle_pool", 1))
      # Not CycleGAN's: source pixels weighed by their label's class share.
      balance = w.get("cycle_class_balance", 0.0)
      w_s = task.cycle_weights(y_s, balance) if balance else None
      terms["rec"] = (cycle(x_s, x_sts, weights=w_s)
                      + cycle(x_t, G(x_ts, "S2T")))
      if w.identity > 0:
        terms["identity"] = (losses.identity_loss(x_t, G(x_t, "S2T"))
                             + losses.identity_loss(x_s, G(x_s, "T2S")))
    if not adapt:
      return terms, cache, F.batch_stats

    if config.translator.get("ideal_t2s", False):
      # F_S's view of the target through a perfect translator (diagnostic).
      f_ts = batch["target_as_source"]
    jitter = config.task_net.get("source_jitter", 0.0)
    f_s = x_s
    if jitter:
      # Not the paper's: F_S learns the source task under colour changes.
      key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                               jax.lax.axis_index(AXIS))
      # (Stream 2: the image pools draw from streams 0 and 1 of the step.)
      f_s = augment.colour_jitter(x_s, jax.random.fold_in(key, 2), jitter)
    out_s, out_ts = F.two(f_s, f_ts, "S")
    out_st, out_t = F.two(f_st, x_t, "T")
    labels = {h: y_s for h in heads}
    terms["task"] = (
        _per_head(task.supervised, heads, w.aux.task, out_s, labels)
        + _per_head(task.supervised, heads, w.aux.task, out_st, labels))
    if w.get("task_reconstructed", 0.0) > 0:
      # Not the paper's: F_S learns the source labels on the cycle's
      # reconstruction, an output of G_T->S like those of the consistency.
      x_sts = G(x_st, "T2S") if x_sts is None else x_sts
      terms["task_reconstructed"] = _per_head(
          task.supervised, heads, w.aux.task, F(seen(x_sts), "S"), labels)
    if w.consistency > 0:
      # 'target_net': F_S's view is a fixed target that only F_T moves to.
      fixed = lambda out, net: (jax.lax.stop_gradient(out)
                                if w.consistency_grad == net else out)
      terms["consistency"] = _per_head(
          task.consistency, heads, w.aux.consistency,
          fixed(out_t, "source_net"), fixed(out_ts, "target_net"))
    if w.get("class_prior", 0.0) > 0:
      # Not the paper's: keeps the classes of the source labels from
      # vanishing from the two unlabeled predictions (losses.class_prior_loss).
      prior = lambda a, b: (task.class_prior(a, y_s)
                            + task.class_prior(b, y_s))
      terms["class_prior"] = _per_head(prior, heads, w.aux.consistency,
                                       out_t, out_ts)
    if w.get("semantic", 0.0) > 0 and train_translator:
      terms["semantic"] = semantic_term(params["task"], state, x_t, x_ts,
                                        out_t)
    if w.feat_adv > 0:
      p_st, p_ts = d_view(out_st), d_view(out_ts)
      D_feat = lambda h, x, domain: apply_d_feat(
          {"params": state.d_feat.params[h]}, x, domain)
      terms["feat_adv"] = sum(
          (1.0 if h == "main" else w.aux.feat_adv)
          * (feat_adv(D_feat(h, p_st[h], "T"), target=TARGET)
             + feat_adv(D_feat(h, p_ts[h], "S"), target=SOURCE))
          for h in heads)
      cache["probs"] = jax.lax.stop_gradient(dict(
          s=d_view(out_s), ts=p_ts, st=p_st, t=d_view(out_t)))
    return terms, cache, F.batch_stats

  def semantic_term(task_params, state: CrDoCoState, x_t, x_ts, out_t):
    """CyCADA's semantic loss on G_T->S (``loss.semantic``): F_S, fixed,
    scores G_T->S(I_T) ``[B, H, W, 3]`` against labels of I_T, so that
    G_T->S keeps each object's class. Only G_T->S gets its gradient."""
    fixed = {"params": jax.lax.stop_gradient(task_params),
             "batch_stats": state.task.batch_stats}
    F_S = lambda x: nets.task.apply(fixed, x, "S", train=False)
    scored = F_S(x_ts)
    if w.semantic_labels == "ensemble":
      # F_T's view and F_S's view through G_T->S together, so that G_T->S
      # is not pulled to F_T's labels where its own view is surer.
      y = losses.ensemble_labels(out_t["main"], scored["main"])
    else:
      by = out_t if w.semantic_labels == "target_net" else F_S(x_t)
      y = task.predict(by["main"])
    y = jax.lax.stop_gradient(y)
    return _per_head(task.supervised, heads, w.aux.task, scored,
                     {h: y for h in heads})

  def generator_objective(params, state, batch):
    terms, cache, batch_stats = generator_terms(params, state, batch)
    weights = loss_weights(config, state.step)
    total = sum(weights[k] * v for k, v in terms.items())
    return total, (terms, cache, batch_stats)

  def discriminator_objective(d_params, batch: Batch, cache):
    """Image- and output-space discriminators on detached inputs."""
    terms = {}
    if train_translator:
      D = lambda x, domain: apply_d_img({"params": d_params["d_img"]}, x,
                                        domain)
      disc = functools.partial(losses.discriminator_loss, gan_loss=w.img_gan)
      real_t = frames(batch["target_image"])
      real_s = frames(batch["source_image"])
      terms["d_img"] = (
          disc(*two(lambda x: D(x, "T"), real_t, frames(cache["x_st"])))
          + disc(*two(lambda x: D(x, "S"), real_s, frames(cache["x_ts"]))))
    if "probs" in cache:
      p = cache["probs"]
      disc = functools.partial(losses.discriminator_loss, gan_loss=w.feat_gan)
      D = lambda h, x, domain: apply_d_feat(
          {"params": d_params["d_feat"][h]}, x, domain)
      terms["d_feat"] = sum(
          disc(*two(lambda x: D(h, x, "S"), p["s"][h], p["ts"][h]),
               real_target=SOURCE, fake_target=TARGET)
          + disc(*two(lambda x: D(h, x, "T"), p["t"][h], p["st"][h]),
                 real_target=TARGET, fake_target=SOURCE)
          for h in heads)
    return sum(terms.values()), terms

  def train_step(state: CrDoCoState, batch: Batch
                 ) -> Tuple[CrDoCoState, Dict[str, jax.Array]]:
    params = {}
    if adapt:
      params["task"] = state.task.params
    if train_translator:
      params["translator"] = state.translator.params
    (total, (terms, cache, batch_stats)), grads = jax.value_and_grad(
        generator_objective, has_aux=True)(params, state, batch)
    grads = jax.lax.pmean(grads, AXIS)

    d_params, new_pools = {}, {}
    if train_translator:
      d_params["d_img"] = state.d_img.params
      if state.img_pool is not None:
        # D_img judges translations from CycleGAN's history, not only these.
        key = jax.random.fold_in(state.rng, state.step)
        for i, (name, fake) in enumerate((("t", "x_st"), ("s", "x_ts"))):
          new_pools[name], cache[fake] = image_pool.query_global(
              state.img_pool[name], cache[fake], jax.random.fold_in(key, i),
              AXIS)
    if "probs" in cache:
      d_params["d_feat"] = state.d_feat.params
    d_terms, d_grads = {}, {}
    if d_params:
      (_, d_terms), d_grads = jax.value_and_grad(
          discriminator_objective, has_aux=True)(d_params, batch, cache)
      d_grads = jax.lax.pmean(d_grads, AXIS)

    metrics = {f"loss_{k}": v for k, v in {**terms, **d_terms}.items()}
    metrics["loss_total"] = total
    metrics = jax.lax.pmean(metrics, AXIS)
    # Gradients are pmean-ed and metrics too, so every device agrees.
    finite = all_finite((metrics, grads, d_grads))
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    # A non-finite step leaves every network as it was (its batch is
    # skipped); the host decides whether to stop (config.train.nonfinite).
    # A conditional, not a jnp.where per leaf: XLA fuses the chain of
    # per-leaf finiteness checks into every consumer, one copy per state leaf
    # (about 180,000 HLO instructions and minutes of XLA:CPU compile time at
    # the demo sizes), but never into a conditional's predicate.
    # The updates run inside the taken branch, so they write the state's
    # new buffers directly; computed outside, every leaf of the state (and
    # its optimizer state) was copied once more into the conditional's
    # result.
    extra = {"task": dict(batch_stats=batch_stats)}
    def update():
      new = {name: getattr(state, name).apply_gradients(
                 grads=g, **extra.get(name, {}))
             for name, g in {**grads, **d_grads}.items()}
      if new_pools:  # (a skipped step leaves the pools as they were too)
        new["img_pool"] = new_pools
      return state.replace(**new)
    state = jax.lax.cond(finite, update, lambda: state)
    return state.replace(
        step=state.step + 1,
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32)
    ), metrics

  return train_step


def make_eval_step(config: ml_collections.ConfigDict, nets: Networks
                   ) -> Callable:
  """``eval_step(state, batch) -> sums`` of F_T's main head on
  ``batch['image']`` vs ``batch['label']`` (and ``batch['valid']``), summed
  over ``AXIS``: the confusion matrix ``[C, C]`` for segmentation, a dict of
  metric sums for depth and flow (``evaluate.py``)."""
  task = tasks.get_task(config)

  def eval_step(state: CrDoCoState, batch: Batch):
    out = nets.task.apply({"params": state.task.params,
                           "batch_stats": state.task.batch_stats},
                          batch["image"], "T", train=False)["main"]
    return jax.lax.psum(task.eval_sums(out, batch), AXIS)
  return eval_step


def make_visualize_step(config: ml_collections.ConfigDict, nets: Networks
                        ) -> Callable:
  """``(state, batch) -> dict`` of translations and predictions (class ids,
  metres or pixels) for image summaries: I_S, I_{S->T}, I_T, I_{T->S},
  F_S(I_S), F_T(I_T), labels (and ``*_valid`` masks for regression)."""
  task = tasks.get_task(config)

  def visualize_step(state: CrDoCoState, batch: Batch) -> Batch:
    task_vars = {"params": state.task.params,
                 "batch_stats": state.task.batch_stats}
    predict = lambda x, domain: task.predict(nets.task.apply(
        task_vars, x, domain, train=False)["main"])
    x_s, x_t = batch["source_image"], batch["target_image"]
    out = dict(source=x_s, target=x_t, pred_source=predict(x_s, "S"),
               pred_target=predict(x_t, "T"))
    out.update({k: v for k, v in batch.items()
                if k.endswith("_label") or k.endswith("_valid")})
    if state.translator is not None:
      G = lambda x, d: tasks.from_frames(nets.translator.apply(
          {"params": state.translator.params},
          tasks.to_frames(x, task.frames), d), task.frames)
      out.update(source_to_target=G(x_s, "S2T"), target_to_source=G(x_t, "T2S"))
    return out
  return visualize_step
