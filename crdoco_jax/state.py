"""The CrDoCo train state: one pytree holding every network's variables,
optimizer states, step and RNG key (what Orbax checkpoints)."""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from flax.training import train_state

from crdoco_jax import image_pool, optim, tasks
from crdoco_jax.models import (FEATURES, Networks, feature_level,
                               sown_features)

# Parameters do not depend on the spatial size: initialise on small inputs.
_INIT_SIZE = 64
ADAPTATION_METHODS_WITHOUT_TRANSLATOR = ("source_only", "oracle")


class TaskState(train_state.TrainState):
  """F_S / F_T: parameters, optimizer state and BatchNorm statistics."""
  batch_stats: Any = None


@struct.dataclass
class CrDoCoState:
  """``translator``, ``d_img`` and ``d_feat`` are None for methods that do
  not use them (source-only, oracle). ``d_feat.params`` maps each task-net
  head ('main', 'aux') to the parameters of its D_S / D_T pair."""
  step: jax.Array
  rng: jax.Array
  task: TaskState
  # Steps whose loss or gradient was not finite (their update was skipped).
  nonfinite_steps: jax.Array = None
  translator: Optional[train_state.TrainState] = None
  d_img: Optional[train_state.TrainState] = None
  d_feat: Optional[train_state.TrainState] = None
  # CycleGAN's histories of translations for D_img (disc.img_pool > 0):
  # 't' holds I_{S->T} (what D_T judges), 's' holds I_{T->S}.
  img_pool: Optional[dict] = None


def uses_translator(config: ml_collections.ConfigDict) -> bool:
  return config.method not in ADAPTATION_METHODS_WITHOUT_TRANSLATOR


def head_names(config: ml_collections.ConfigDict):
  return ("main", "aux") if config.task_net.multi_level else ("main",)


# Groups that the translator pretraining phase leaves untouched.
_ADAPTATION_ONLY_GROUPS = ("task_net", "d_feat")


def schedule_horizons(config: ml_collections.ConfigDict) -> dict:
  """Steps over which each optimizer group's learning-rate schedule runs.

  An optax schedule reads its group's own update count. The task nets and
  output-space discriminators first update when the adaptation phase starts,
  after ``translator.pretrain_steps`` of CycleGAN pretraining, so their
  horizon is what is left of ``train.schedule_steps`` then; the translators
  and image discriminators train through both phases."""
  total = config.train.schedule_steps
  pretrain = (config.translator.pretrain_steps if uses_translator(config)
              else 0)
  if pretrain and config.train.num_steps > pretrain and total <= pretrain:
    raise ValueError(
        f"train.schedule_steps={total} <= translator.pretrain_steps="
        f"{pretrain}: the task nets' schedule would end before they first "
        "update. Set train.schedule_steps to the pretraining plus the "
        "adaptation steps (usually train.num_steps).")
  # (At least 1: a run that only pretrains never reads the others.)
  adapt = max(total - pretrain, 1)
  return {name: adapt if name in _ADAPTATION_ONLY_GROUPS else total
          for name in config.optim}


def _frozen_norm(config: ml_collections.ConfigDict) -> bool:
  choice = config.task_net.get("bn_affine", "train")
  if choice not in ("train", "frozen"):
    raise ValueError(f"task_net.bn_affine={choice!r}; use 'train' or "
                     "'frozen' (AdaptSegNet).")
  return choice == "frozen"


def _optimizer(config: ml_collections.ConfigDict, name: str, horizon: int):
  try:
    return optim.make_optimizer(config.optim[name], horizon,
                                freeze_norm=name == "task_net"
                                and _frozen_norm(config))
  except ValueError as e:  # say which config section holds the bad value
    raise ValueError(f"optim.{name}: {e}") from e


def create_train_state(config: ml_collections.ConfigDict, nets: Networks,
                       rng: jax.Array) -> CrDoCoState:
  """Initialises every network and optimizer (on the default device)."""
  k_task, k_gen, k_dimg, k_dfeat, k_state = jax.random.split(rng, 5)
  image = jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3), jnp.float32)
  # The task nets see every frame of an example at once (flow: 6 channels).
  task_input = jnp.tile(image, (1, 1, 1, tasks.num_frames(config)))
  horizons = schedule_horizons(config)
  make_tx = lambda name: _optimizer(config, name, horizons[name])

  task_vars = jax.jit(nets.task.init)(k_task, task_input)
  task = TaskState.create(apply_fn=nets.task.apply, params=task_vars["params"],
                          batch_stats=task_vars["batch_stats"],
                          tx=make_tx("task_net"))
  state = CrDoCoState(step=jnp.zeros((), jnp.int32), rng=k_state, task=task,
                      nonfinite_steps=jnp.zeros((), jnp.int32))
  if not uses_translator(config):
    return _strong_types(state)

  gen_params = jax.jit(nets.translator.init)(k_gen, image)["params"]
  dimg_params = jax.jit(nets.d_img.init)(k_dimg, image)["params"]
  # Only the shapes of what D_feat judges matter: each head's output, or the
  # backbone features it reads.
  if feature_level(config):
    out = jax.eval_shape(lambda v, x: task_features(nets, v, x, "S"),
                         task_vars, task_input)
  else:
    out = jax.eval_shape(lambda v, x: nets.task.apply(v, x, "S"), task_vars,
                         task_input)
  feat_init = jax.jit(nets.d_feat.init)
  dfeat_params = {
      head: feat_init(jax.random.fold_in(k_dfeat, i),
                      jnp.zeros(out[head].shape, out[head].dtype))["params"]
      for i, head in enumerate(head_names(config))}
  new = lambda apply_fn, params, name: train_state.TrainState.create(
      apply_fn=apply_fn, params=params, tx=make_tx(name))
  return _strong_types(state.replace(
      translator=new(nets.translator.apply, gen_params, "translator"),
      d_img=new(nets.d_img.apply, dimg_params, "d_img"),
      d_feat=new(nets.d_feat.apply, dfeat_params, "d_feat"),
      img_pool=init_image_pools(config)))


def task_features(nets: Networks, variables, x: jax.Array, domain: str
                  ) -> dict:
  """``{head: [N, H/8, W/8, channels]}``: the backbone features each head of
  F_S or F_T reads, in eval mode (the shapes D_feat is built for)."""
  _, mutated = nets.task.apply(variables, x, domain, mutable=[FEATURES])
  return sown_features(mutated)


def init_image_pools(config: ml_collections.ConfigDict) -> Optional[dict]:
  """Empty D_img pools of ``disc.img_pool`` translations (None when 0):
  I_{S->T} has the source's size, I_{T->S} the target's."""
  size = config.disc.get("img_pool", 0)
  if size < 0:
    raise ValueError(f"disc.img_pool={size}; use 0 (off) or the number of "
                     "translations to keep (CycleGAN: 50).")
  if not size:
    return None
  channels = 3 * tasks.num_frames(config)
  shape = lambda domain: tuple(config[domain].image_size) + (channels,)
  return dict(t=image_pool.init(size, shape("source")),
              s=image_pool.init(size, shape("target")))


def _strong_types(state: CrDoCoState) -> CrDoCoState:
  """TrainState.create's Python-int steps are weakly typed, and a weak input
  that comes back strong from the first step would retrace the step."""
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype),
                                state)


def parameter_counts(state: CrDoCoState) -> dict:
  """Number of parameters per network group (for logs and benchmarks)."""
  count = lambda t: int(sum(x.size for x in jax.tree_util.tree_leaves(t)))
  groups = dict(task=state.task, translator=state.translator,
                d_img=state.d_img, d_feat=state.d_feat)
  return {k: count(v.params) for k, v in groups.items() if v is not None}
