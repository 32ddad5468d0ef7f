"""Flags and loading shared by the diagnostics of one finished runner run.

``--config`` and ``--workdir`` are the experiment runner's own flags
(crdoco_jax.experiments); this adds ``--method`` and ``--seed``.
"""
from absl import flags

from crdoco_jax import experiments

FLAGS = flags.FLAGS
flags.DEFINE_string("method", "no_consistency", "A method with translators.")
flags.DEFINE_integer("seed", 0, "Which seed's run.")


def load():
  """``(config, state, nets)`` of the run named by the flags; exits with a
  message when it has not finished or has no translators."""
  loaded = experiments.load_run(FLAGS.config, FLAGS.workdir, FLAGS.method,
                                FLAGS.seed)
  if loaded is None or loaded[1].translator is None:
    raise SystemExit(f"{FLAGS.workdir}: no finished {FLAGS.method} run of "
                     f"seed {FLAGS.seed} with translators.")
  return loaded


def load_translators():
  """``(config, task, t2s, s2t)`` of the run named by the flags: its task
  nets (``task(x, domain)``) and both jitted translators."""
  config, state, nets = load()
  task, t2s = experiments._apply(nets, state)  # pylint: disable=protected-access
  return config, task, t2s, experiments._translator(nets, state, "S2T")  # pylint: disable=protected-access
