r"""Entry point: ``python launch.py --config=configs/seg.py --workdir=DIR``.

  python launch.py --config=configs/seg.py:demo --workdir=/tmp/crdoco_demo
  python launch.py --config=configs/seg.py:demo --config.train.num_steps=100 \
      --workdir=/tmp/crdoco_demo
  python launch.py --config=configs/seg.py --workdir=DIR --mode=eval
  python launch.py --config=configs/seg.py --workdir=DIR --mode=predict \
      --input=IMAGES_DIR_OR_GLOB --output=OUT [--cityscapes_ids]
  python launch.py --config=configs/seg.py --workdir=DIR --mode=translate \
      --input=IMAGES_DIR_OR_GLOB --output=OUT --direction=S2T
  python launch.py --config=configs/seg.py --workdir=DIR --mode=export \
      --output=F_T_DIR

Multi-process (one process per host): on TPU pods and SLURM pass
``--distributed`` and JAX finds its peers; elsewhere give
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``
(README, "Reliability and determinism", has a two-process example).
"""
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from crdoco_jax import host_allocator

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/seg.py:demo.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, results.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "predict", "translate", "export"],
    "train (evaluating periodically), eval, or with the newest checkpoint: "
    "predict (F_T labels), translate, export (F_T alone).")
_INPUT = flags.DEFINE_string("input", None, "predict / translate: a folder "
                             "(searched recursively) or glob of images.")
_OUTPUT = flags.DEFINE_string("output", None, "predict / translate / export: "
                              "output folder.")
_CITYSCAPES_IDS = flags.DEFINE_bool(
    "cityscapes_ids", False, "predict: write Cityscapes label ids (for the "
    "official evaluation server) instead of train ids.")
_DIRECTION = flags.DEFINE_enum("direction", "S2T", ["S2T", "T2S"],
                               "translate: G_S->T or G_T->S.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with cluster "
    "auto-detection (TPU pods, SLURM, ...).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id.")
_COORDINATOR_BIND = flags.DEFINE_string(
    "coordinator_bind_address", None, "HOST:PORT process 0's coordinator "
    "listens on (default: all interfaces, the port of --coordinator_address); "
    "e.g. 127.0.0.1:PORT for processes on one machine.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietCheckpointer(std_logging.Filter):
  """Drops Orbax's per-save INFO chatter (dozens of lines per checkpoint);
  its warnings and errors still show."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or "/orbax/" not in record.pathname)


def _infer(config, workdir):
  """--mode=predict / translate / export (crdoco_jax/predict.py, export.py)."""
  # pylint: disable-next=g-import-not-at-top
  from crdoco_jax import export, predict
  if _OUTPUT.value is None or (_MODE.value != "export"
                               and _INPUT.value is None):
    raise app.UsageError(f"--mode={_MODE.value} needs --output"
                         + ("" if _MODE.value == "export" else " and --input"))
  if _MODE.value == "predict":
    files = predict.predict(config, workdir, _INPUT.value, _OUTPUT.value,
                            _CITYSCAPES_IDS.value)
    print(f"Wrote {len(files)} label maps and overlays to {_OUTPUT.value}.")
  elif _MODE.value == "translate":
    files = predict.translate(config, workdir, _INPUT.value, _OUTPUT.value,
                              _DIRECTION.value)
    print(f"Wrote {len(files)} translations to {_OUTPUT.value}.")
  else:
    print(f"Exported F_T to {export.export(config, workdir, _OUTPUT.value)}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietCheckpointer())
  # TensorFlow (tfds) must not take accelerator memory from JAX.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import jax  # pylint: disable=g-import-not-at-top
  # Cross-process collectives for CPU devices (tests, CPU clusters); the
  # GPU and TPU backends use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if _COORDINATOR.value is not None:
    jax.distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        coordinator_bind_address=_COORDINATOR_BIND.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX process %d/%d, local devices %s, %d global devices",
               jax.process_index(), jax.process_count(), jax.local_devices(),
               jax.device_count())

  from crdoco_jax import train  # pylint: disable=g-import-not-at-top
  if _MODE.value in ("predict", "translate", "export"):
    _infer(_CONFIG.value, _WORKDIR.value)
    return
  from crdoco_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  if _MODE.value == "train":
    try:
      result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except input_pipeline.DatasetNotFoundError as e:
      sys.exit(f"error: {e}")
    if result.get("preempted"):
      print(f"Preempted: checkpoint saved at step {result['step']}.")
    else:
      print(train.format_result(result))
  else:
    result = train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    print(train.format_eval(_CONFIG.value, result))


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  app.run(main)
