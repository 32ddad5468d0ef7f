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


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                   freeze_norm: bool = False) -> optax.GradientTransformation:
  """Optimizer for one network group. ``head_lr_mult`` (task nets) gives
  every parameter under a ``heads`` subtree that multiple of the rate, as
  DeepLab-v2 / AdaptSegNet train their classifiers at 10x. ``freeze_norm``
  leaves normalisation scales and offsets as they are (no update, no weight
  decay), as AdaptSegNet does with its BatchNorm layers."""
  schedule = learning_rate_schedule(cfg, total_steps)
  transforms = {"body": _base_optimizer(cfg, schedule)}
  mult = cfg.head_lr_mult
  if mult != 1.0:
    transforms["head"] = _base_optimizer(cfg, lambda step: mult * schedule(step))
  if freeze_norm:
    transforms["frozen"] = optax.set_to_zero()
  if len(transforms) == 1:
    return transforms["body"]
  return optax.multi_transform(
      transforms,
      lambda params: param_labels(params, "head" in transforms, freeze_norm))


def param_labels(params: Any, heads: bool = True,
                 freeze_norm: bool = False) -> Any:
  """With ``heads``, 'head' for leaves under a top-level ``heads*`` module;
  with ``freeze_norm``, 'frozen' for a normalisation layer's scale and
  offset (a module holding a ``scale`` and no ``kernel``); else 'body'."""
  def label(path, _):
    if freeze_norm and _is_norm(params, path[:-1]):
      return "frozen"
    top = str(getattr(path[0], "key", path[0]))
    return "head" if heads and top.startswith("heads") else "body"
  return jax.tree_util.tree_map_with_path(label, params)


def _is_norm(params: Any, module_path) -> bool:
  module = params
  for key in module_path:
    module = module[key.key]
  return "scale" in module and "kernel" not in module
