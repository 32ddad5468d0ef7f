"""F_T alone, to deploy: its parameters and BatchNorm statistics plus the
config that rebuilds it, as one Orbax checkpoint (``--mode=export``).

  apply_fn, variables = export.load("/tmp/f_t")
  logits = apply_fn(variables, images)  # [N, H, W, 3] in [-1, 1] -> [N, H, W, C]

The checkpoint has three items: ``variables`` (F_T's units of the
``TaskNetPair``, i.e. ``stem_T`` ... ``heads_T``, or the unsuffixed shared
ones), ``config`` (the training config as JSON) and ``info`` (step, image
size, class names).
"""
import json
import os
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from crdoco_jax import predict
from crdoco_jax.models import build_networks


def f_t_variables(params: Dict[str, Any], batch_stats: Dict[str, Any]
                  ) -> Dict[str, Any]:
  """F_T's part of ``TaskNetPair`` variables (F_S's units dropped)."""
  keep = lambda tree: {k: v for k, v in tree.items() if not k.endswith("_S")}
  return {"params": keep(params), "batch_stats": keep(batch_stats)}


def export(config: ml_collections.ConfigDict, workdir: str, output: str
           ) -> str:
  """Writes F_T of the workdir's newest checkpoint to ``output``."""
  path = os.path.abspath(output)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new --output or delete "
                          "it first.")
  state, step = predict.restore_state(config, workdir)
  variables = f_t_variables(state.task.params, state.task.batch_stats)
  # JSON-safe copy (tuples become lists; ConfigDict takes them back).
  config_json = json.loads(json.dumps(config.to_dict(), default=str))
  info = dict(step=step, image_size=list(config.target.image_size),
              class_names=list(config.data.class_names),
              input="RGB in [-1, 1], [N, H, W, 3]")
  ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
      path, args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables),
          config=ocp.args.JsonSave(config_json),
          info=ocp.args.JsonSave(info)))
  logging.info("Exported F_T of step %d to %s.", step, path)
  return path


def load_config(directory: str) -> ml_collections.ConfigDict:
  """The training config stored with an export."""
  restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
      os.path.abspath(directory),
      args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(restored["config"])


def load(directory: str) -> Tuple[Callable, Dict[str, Any]]:
  """``(apply_fn, variables)`` of an exported F_T.

  ``apply_fn(variables, images)`` is jitted: images ``[N, H, W, 3]`` RGB in
  [-1, 1] (any size; the training size is ``config.target.image_size``)
  -> main-head logits ``[N, H, W, num_classes]`` float32.
  """
  config = load_config(directory)
  net = build_networks(config).task
  size = (1, 64, 64, 3)
  abstract = f_t_variables(**jax.eval_shape(
      lambda: net.init(jax.random.PRNGKey(0), jnp.zeros(size))))
  restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
      os.path.abspath(directory), args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(abstract)))

  @jax.jit
  def apply_fn(variables, images):
    return net.apply(variables, images, "T", train=False)["main"]

  return apply_fn, restored["variables"]
