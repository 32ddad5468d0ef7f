"""Training and evaluation loops: ``train_and_evaluate(config, workdir)``.

Side effects live here (data, checkpoints, logs, images); the maths lives in
``train_step.py``. Every process runs this loop; process 0 alone writes
logs, images and results, all processes take part in checkpointing.
"""
import json
import os
import signal
import time
from typing import Any, Dict

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from jax.experimental import multihost_utils

from crdoco_jax import checkpointing, parallel, visualize
from crdoco_jax import pretrained, tasks
from crdoco_jax import state as state_lib
from crdoco_jax import train_step as step_lib
from crdoco_jax.data import input_pipeline
from crdoco_jax.models import build_networks

RESULTS_FILE = "results.json"
NONFINITE_POLICIES = ("skip", "stop")  # train.nonfinite


def configure_jax(config: ml_collections.ConfigDict) -> None:
  """Process-wide JAX settings the config asks for (call before tracing)."""
  jax.config.update("jax_threefry_partitionable",
                    config.compute.threefry_partitionable)


def initial_state(config: ml_collections.ConfigDict, workdir: str
                  ) -> Any:
  """Fresh state, replaced by the workdir's newest checkpoint if any."""
  nets = build_networks(config)
  create = lambda: state_lib.create_train_state(
      config, nets, jax.random.PRNGKey(config.seed))
  manager = checkpointing.make_manager(workdir,
                                       config.train.keep_checkpoints)
  # Shapes only: initialising (and compiling the inits) is skipped on resume.
  restored, step = checkpointing.restore_latest(manager, jax.eval_shape(create),
                                                workdir, config)
  if restored is None:  # a new run: config.init's pretrained weights
    return pretrained.initialize(config, create()), manager
  logging.info("Resuming from the checkpoint of step %d in %s.", step, workdir)
  return restored, manager


class NonFiniteLossError(FloatingPointError):
  """A step produced a NaN/Inf loss or gradient (``train.nonfinite='stop'``)."""


def mean_metrics(history: Dict[int, Dict[str, np.ndarray]]
                 ) -> Dict[str, float]:
  """Averages host copies of the pmapped metrics of a window of steps with a
  clu ``Average`` per key, over the steps whose losses were finite; adds the
  window's count of non-finite (skipped) steps."""
  finite = [m for m in history.values() if m["nonfinite"][0] == 0]
  out = {"train/nonfinite_steps": float(len(history) - len(finite))}
  if not finite:
    return out
  names = sorted(k for k in finite[0] if k != "nonfinite")
  collection = metrics.Collection.create(
      **{n: metrics.Average.from_output(n) for n in names})
  total = None
  for m in finite:
    update = collection.single_from_model_output(
        **{n: np.asarray(m[n][0]) for n in names})
    total = update if total is None else total.merge(update)
  out.update({f"train/{k}": float(v) for k, v in total.compute().items()})
  return out


def check_finite(history: Dict[int, Dict[str, np.ndarray]],
                 config: ml_collections.ConfigDict, manager) -> None:
  """Logs every skipped non-finite step; raises in ``'stop'`` mode."""
  for step, m in sorted(history.items()):
    if m["nonfinite"][0] == 0:
      continue
    bad = [k for k, v in m.items()
           if k != "nonfinite" and not np.isfinite(v[0])] or ["a gradient"]
    message = (f"Non-finite loss or gradient at step {step} (in "
               f"{', '.join(bad)}); that step's update was not applied.")
    if config.train.nonfinite == "stop":
      raise NonFiniteLossError(
          f"{message} Stopping (train.nonfinite='stop'); the newest good "
          f"checkpoint is step {manager.latest_step()}.")
    logging.warning("%s Skipped (train.nonfinite='skip').", message)


class PreemptionWatcher:
  """Turns a preemption notice into a request to checkpoint and stop after
  the current step.

  One process: SIGTERM and SIGINT set a flag. Several processes
  (``jax.distributed``): JAX's preemption service catches SIGTERM in any
  process and agrees on the step at which all of them stop, through the
  coordination service rather than a device collective every step; SIGINT
  keeps its default (an interrupt, no checkpoint), since a lone process
  stopping to save would wait for the others forever.
  """

  def __init__(self):
    self.signal = None
    self._multiprocess = jax.process_count() > 1
    self._signals = () if self._multiprocess else (signal.SIGTERM,
                                                   signal.SIGINT)
    for sig in self._signals:
      signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.signal = signum

  def requested(self, step: int) -> bool:
    """Call once per step with increasing ``step`` in every process."""
    if self._multiprocess and multihost_utils.reached_preemption_sync_point(
        step):
      self.signal = signal.SIGTERM
    return self.signal is not None

  def restore(self):
    for sig in self._signals:
      signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM
                    else signal.default_int_handler)


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
  """A barrier through jax.distributed's coordination service: no device
  collective, so no 30-second rendezvous deadline."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


def _host_sum(x) -> np.ndarray:
  # int64 / float64 on the host: whole splits overflow int32 / lose float32.
  x = np.asarray(x[0])
  return x.astype(np.int64 if np.issubdtype(x.dtype, np.integer)
                  else np.float64)


def evaluate_target(p_eval, state, config) -> Dict[str, Any]:
  """F_T on the target evaluation split: the task's metrics (mIoU and
  per-class IoU, or the depth / flow metrics; ``tasks.py``)."""
  total = None
  for batch in input_pipeline.eval_batches(config):
    sums = jax.tree_util.tree_map(_host_sum,
                                  p_eval(state, parallel.shard(batch)))
    total = sums if total is None else jax.tree_util.tree_map(np.add, total,
                                                              sums)
  return tasks.get_task(config).metrics(total)


def eval_scalars(scores: Dict[str, Any]) -> Dict[str, float]:
  """``Task.scores`` as TensorBoard scalars: ``eval/target_*`` and
  ``eval_iou/<class>`` (classes absent from the split are left out)."""
  out = {f"eval/{k}": v for k, v in scores.items() if k.startswith("target_")}
  out.update({f"eval_iou/{n}": v
              for n, v in scores.get("per_class_iou", {}).items()
              if np.isfinite(v)})
  return out


def write_eval(writer, step: int, result: Dict[str, Any],
               config: ml_collections.ConfigDict) -> None:
  task = tasks.get_task(config)
  writer.write_scalars(step, eval_scalars(task.scores(result)))
  logging.info("Target-domain evaluation at step %d: %s", step,
               task.describe(result))


def summary_image(images: Dict[str, np.ndarray], config,
                  max_rows: int = 4) -> np.ndarray:
  """Grid: per example, I_S | I_S->T | Y_S | F_S(I_S) and
  I_T | I_T->S | Y_T (if known) | F_T(I_T). Depth and flow are drawn in
  colour (``visualize.py``); flow rows show the first frame."""
  images = {k: np.asarray(v).reshape((-1,) + v.shape[2:])
            for k, v in images.items()}
  img = lambda x: visualize.to_uint8_image(x[..., :3])
  draw = tasks.get_task(config).draw
  # Methods without translator / target labels show black tiles there.
  black = -np.ones_like(images["source"])

  def label(domain, i):
    if f"{domain}_label" in images:
      valid = images.get(f"{domain}_valid")
      return draw(images[f"{domain}_label"][i],
                  None if valid is None else valid[i])
    return np.zeros(images["source"].shape[1:3] + (3,), np.uint8)

  rows = []
  for i in range(min(max_rows, len(images["source"]))):
    rows.append([img(images["source"][i]),
                 img(images.get("source_to_target", black)[i]),
                 label("source", i),
                 draw(images["pred_source"][i], None)])
    rows.append([img(images["target"][i]),
                 img(images.get("target_to_source", black)[i]),
                 label("target", i),
                 draw(images["pred_target"][i], None)])
  return visualize.image_grid(rows)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> Dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates
  on the target split every ``eval_every`` steps and at the end; returns
  and writes the final evaluation to ``workdir/results.json``."""
  configure_jax(config)
  if config.train.nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f"train.nonfinite={config.train.nonfinite!r}; use one "
                     f"of {NONFINITE_POLICIES}.")
  # Missing or unprepared data fails here, before minutes of model set-up.
  train_data = input_pipeline.TrainBatches(config,
                                           workers=config.data.workers)
  input_pipeline.open_eval_source(config)
  is_chief = jax.process_index() == 0
  if is_chief:
    checkpointing.write_config(workdir, config)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_chief, asynchronous=False)
  logging.info("Processes: %d, local devices: %d, global devices: %d",
               jax.process_count(), jax.local_device_count(),
               jax.device_count())

  host_state, manager = initial_state(config, workdir)
  start = int(host_state.step)
  logging.info("Parameters per network group: %s",
               state_lib.parameter_counts(host_state))
  if start == 0:
    writer.write_hparams(checkpointing.flat_config(config.to_dict()))
  state = parallel.replicate(host_state)
  del host_state

  nets = build_networks(config, bn_axis_name=parallel.AXIS)
  pmap = lambda f, **kw: jax.pmap(f, axis_name=parallel.AXIS, **kw)
  # Methods without translators have nothing to pretrain.
  pretrain = (config.translator.pretrain_steps
              if state_lib.uses_translator(config) else 0)
  phases = (["translator"] if pretrain > 0 else []) + ["adapt"]
  p_train = {p: pmap(step_lib.make_train_step(config, nets, p),
                     donate_argnums=(0,)) for p in phases}
  p_eval = pmap(step_lib.make_eval_step(config, nets))
  p_visualize = pmap(step_lib.make_visualize_step(config, nets))

  tc = config.train
  hooks = []
  if is_chief:
    hooks.append(periodic_actions.ReportProgress(num_train_steps=tc.num_steps,
                                                 writer=writer))
    if tc.profile_steps > 0:
      hooks.append(periodic_actions.Profile(num_profile_steps=tc.profile_steps,
                                            logdir=workdir))
  batches = parallel.prefetch_to_device(train_data.iterate(start))
  if jax.process_count() > 1:
    # XLA:CPU's gloo collectives give peers 30 s to meet when they set up a
    # communicator, and JAX's persistent compilation cache serves only
    # process 0 on CPU: process 0 would set one up in the first step's
    # collective while process 1 still compiles that step, and fail. So the
    # processes set it up together here, with one tiny collective.
    wait_for_all_processes("crdoco_collectives")
    jax.block_until_ready(pmap(lambda x: jax.lax.psum(x, parallel.AXIS))(
        np.ones(jax.local_device_count(), np.float32)))

  history, result, preempted = {}, None, False
  watcher = PreemptionWatcher()
  t0 = window_start = time.time()
  input_wait = 0.0  # seconds the loop waited for input in this log window
  # Default signal handlers again however the loop ends (a NaN stop,
  # an error, or the last step).
  try:
    for step in range(start, tc.num_steps):
      phase = "translator" if step < pretrain else "adapt"
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        t = time.time()
        batch = next(batches)
        input_wait += time.time() - t
        state, history[step] = p_train[phase](state, batch)
      for hook in hooks:
        hook(step + 1)
      preempted = watcher.requested(step)
      is_last = step + 1 == tc.num_steps or preempted
      checkpoint_now = (step + 1) % tc.checkpoint_every == 0 or is_last
      if (step + 1) % tc.log_every == 0 or checkpoint_now:
        # One host transfer per window; a bad step is reported before any
        # checkpoint after it is written.
        history = jax.device_get(history)
        check_finite(history, config, manager)
        now = time.time()
        # Near 0 when the input pipeline keeps ahead of the devices.
        writer.write_scalars(step + 1, {
            **mean_metrics(history),
            "perf/input_wait_fraction": input_wait / max(now - window_start,
                                                         1e-9)})
        history, input_wait, window_start = {}, 0.0, now
      if preempted:
        checkpointing.save(manager, step + 1, parallel.unreplicate(state))
        logging.warning("Received signal %s: saved the checkpoint of step "
                        "%d and stopped; rerun the same command to resume.",
                        watcher.signal, step + 1)
        break
      if tc.image_every and ((step + 1) % tc.image_every == 0 or is_last):
        grid = summary_image(jax.device_get(p_visualize(state, batch)),
                             config)
        writer.write_images(step + 1,
                            {"translations_predictions": grid[None]})
        if is_chief:
          visualize.save_png(os.path.join(workdir, "images",
                                          f"step_{step + 1:07d}.png"), grid)
      # F_T does not change while only the translators train.
      if ((step + 1) % tc.eval_every == 0 and step >= pretrain) or is_last:
        result = evaluate_target(p_eval, state, config)
        write_eval(writer, step + 1, result, config)
      if checkpoint_now:
        checkpointing.save(manager, step + 1, parallel.unreplicate(state))
  finally:
    watcher.restore()
  writer.flush()
  if preempted:
    return dict(method=config.method, step=int(step + 1), preempted=True)

  if result is None:  # resumed at the end: evaluate the restored state
    result = evaluate_target(p_eval, state, config)
  # target_miou, per_class_iou / target_abs_rel, ... / target_epe, ...
  result = dict(method=config.method, step=tc.num_steps, task=config.task,
                **tasks.get_task(config).scores(result),
                train_seconds_this_run=time.time() - t0)
  if is_chief:
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(result, f, indent=1)
  logging.info(format_result(result))
  return result


def format_metrics(metrics: Dict[str, float]) -> str:
  """``'abs_rel 0.1234, rmse 0.5678'`` for logs."""
  return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def format_result(result: Dict[str, Any]) -> str:
  """One line summing up ``train_and_evaluate``'s result."""
  if "target_miou" in result:
    return (f"Final target mIoU ({result['method']}): "
            f"{result['target_miou']:.2f}")
  metrics = {k[len("target_"):]: v for k, v in result.items()
             if k.startswith("target_")}
  return (f"Final target {result['task']} metrics ({result['method']}): "
          f"{format_metrics(metrics)}")


def format_eval(config: ml_collections.ConfigDict,
                result: Dict[str, Any]) -> str:
  """One line summing up ``evaluate_checkpoint``'s result."""
  scores = tasks.get_task(config).scores(result)
  return f"Target {config.task} metrics: " + format_metrics(
      {k[len("target_"):]: v for k, v in scores.items()
       if k.startswith("target_")})


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str
                        ) -> Dict[str, Any]:
  """``--mode=eval``: evaluates the workdir's newest checkpoint."""
  configure_jax(config)
  host_state, manager = initial_state(config, workdir)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints to "
                            "evaluate; train first (--mode=train).")
  nets = build_networks(config, bn_axis_name=parallel.AXIS)
  p_eval = jax.pmap(step_lib.make_eval_step(config, nets),
                    axis_name=parallel.AXIS)
  result = evaluate_target(p_eval, parallel.replicate(host_state), config)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)
  write_eval(writer, int(host_state.step), result, config)
  writer.flush()
  return result
