"""One compiled pmapped train step per (config, phase, shapes) per test
process.

Tracing the tiny step costs seconds and compiling it tens of seconds on CI's
cold cache, and JAX's in-memory caches key on the function object, which
``make_train_step`` makes anew each call. Tests that need the same step share
one here; its StableHLO text comes with it, for tests that count ops.
"""
import jax

from crdoco_jax import models, parallel
from crdoco_jax import train_step as step_lib

_COMPILED = {}


def compiled_step(config, state, batch, phase="adapt"):
  """(callable step, StableHLO text) for replicated ``state`` and sharded
  ``batch`` (leading axis: local devices)."""
  shapes = tuple(jax.tree_util.tree_map(lambda x: x.shape,
                                        jax.tree_util.tree_leaves(
                                            (state, batch))))
  key = (config.to_json_best_effort(sort_keys=True), phase, shapes)
  if key not in _COMPILED:
    nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
    lowered = jax.pmap(step_lib.make_train_step(config, nets, phase),
                       axis_name=parallel.AXIS).lower(state, batch)
    compiled = lowered.compile()
    treedef = jax.tree_util.tree_structure(state)
    # A TrainState's tree carries its optimizer and apply_fn; every
    # create_train_state makes new ones, which the compiled step would
    # reject. The same config gives the same leaves.
    step = lambda s, b: compiled(
        jax.tree_util.tree_unflatten(treedef, jax.tree_util.tree_leaves(s)),
        b)
    _COMPILED[key] = (step, lowered.as_text())
  return _COMPILED[key]


def one_step(config, state, batch, phase="adapt"):
  """Runs the shared compiled step once: (new state, metrics)."""
  step, _ = compiled_step(config, state, batch, phase)
  return step(state, batch)
