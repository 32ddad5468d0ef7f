"""Optimisers and learning-rate schedules built from config sections."""
from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
  """``constant``; ``poly`` (DeepLab/AdaptSegNet: lr (1 - t/T)^power);
  ``linear_decay`` (CycleGAN: constant for T/2 steps, then linear to 0)."""
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.lr)
  if cfg.schedule == "poly":
    return optax.polynomial_schedule(cfg.lr, 0.0, cfg.power, total_steps)
  if cfg.schedule == "linear_decay":
    half = total_steps // 2
    return optax.join_schedules(
        [optax.constant_schedule(cfg.lr),
         optax.linear_schedule(cfg.lr, 0.0, total_steps - half)], [half])
  raise ValueError(f"schedule={cfg.schedule!r}; use constant, poly or "
                   "linear_decay.")


def _base_optimizer(cfg, lr) -> optax.GradientTransformation:
  if cfg.name == "adam":
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.adam(lr, b1=cfg.b1, b2=cfg.b2))
  if cfg.name == "sgd":
    # PyTorch SGD semantics: weight decay is added to the gradient before
    # momentum (coupled L2), as DeepLab/AdaptSegNet train.
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(lr, momentum=cfg.momentum))
  raise ValueError(f"name={cfg.name!r}; use adam or sgd.")


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Optimizer for one network group. ``head_lr_mult`` (task nets) gives
  every parameter under a ``heads`` subtree that multiple of the rate, as
  DeepLab-v2 / AdaptSegNet train their classifiers at 10x."""
  schedule = learning_rate_schedule(cfg, total_steps)
  mult = cfg.head_lr_mult
  if mult == 1.0:
    return _base_optimizer(cfg, schedule)
  head_schedule = lambda step: mult * schedule(step)
  return optax.multi_transform(
      {"body": _base_optimizer(cfg, schedule),
       "head": _base_optimizer(cfg, head_schedule)},
      head_labels)


def head_labels(params: Any) -> Any:
  """'head' for leaves under a top-level ``heads*`` module, else 'body'."""
  def label(path, _):
    top = getattr(path[0], "key", str(path[0]))
    return "head" if str(top).startswith("heads") else "body"
  return jax.tree_util.tree_map_with_path(label, params)
