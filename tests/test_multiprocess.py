"""Multi-process training: 2 processes x 2 CPU devices (real ``launch.py``
processes, gloo collectives, coordinator and peers on 127.0.0.1 only) end
with the parameters of 1 process x 4 devices at the same global batch.

The run uses the tiny config's ``source_only`` method (the task net with its
cross-device batch norm, gradient means, metric means, the evaluation's
confusion-matrix sums, checkpoints, images, results): process 1 compiles
every step itself, since JAX keys its persistent compilation cache on the
CPU topology, which differs between the processes, and only process 0
writes entries; the full CrDoCo step takes XLA:CPU minutes to compile on
2 shared cores, the task net alone well under one.

Bounded in time: the processes run in their own process groups with their
output in files (no pipe to fill up), a process that fails has its peer
killed at once (it would wait in a collective), and whatever still runs at
the deadline or when the test fails is killed with its whole group.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import seg
from crdoco_jax import checkpointing, models, train
from crdoco_jax import state as state_lib
from crdoco_jax.data import input_pipeline
from tests.subprocesses import env_with_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANT = "tiny,source_only"
TIMEOUT = 420  # for the 2-process run, whose process 1 compiles everything
STEPS = 4
NETS = ("translator", "task_net", "d_img", "d_feat")


def make_config(tfds_dir):
  """Plain SGD everywhere: Adam's first steps are lr * sign(g), which turns
  f32 reduction-order noise in a near-zero gradient into a full step."""
  config = seg.get_config(VARIANT)
  config.data.tfds_data_dir = tfds_dir
  for name in NETS:
    config.optim[name].update(name="sgd", lr=0.01, weight_decay=0.0)
  config.train.update(num_steps=STEPS, log_every=1, checkpoint_every=2,
                      eval_every=STEPS, image_every=STEPS)
  return config


def overrides(config):
  flags = [f"--config.optim.{n}.{k}={config.optim[n][k]}"
           for n in NETS for k in ("name", "lr", "weight_decay")]
  return flags + [f"--config.train.{k}={config.train[k]}" for k in
                  ("num_steps", "log_every", "checkpoint_every", "eval_every",
                   "image_every")]


def free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def kill_group(proc):
  if proc.poll() is None:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  proc.wait(timeout=60)


def start_processes(workdir, config, logdir, n=2, devices=2):
  port = free_port()
  env = env_with_devices(devices)
  procs, logs = [], []
  try:
    for i in range(n):
      logs.append(open(os.path.join(logdir, f"process_{i}.log"), "w"))
      procs.append(subprocess.Popen(
          [sys.executable, "launch.py", f"--config=configs/seg.py:{VARIANT}",
           f"--workdir={workdir}",
           f"--config.data.tfds_data_dir={config.data.tfds_data_dir}",
           *overrides(config),
           f"--coordinator_address=127.0.0.1:{port}",
           f"--coordinator_bind_address=127.0.0.1:{port}",
           f"--num_processes={n}", f"--process_id={i}"],
          cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
          start_new_session=True))  # own process group, killed as one
  except BaseException:
    for p in procs:
      kill_group(p)
    raise
  finally:
    for log in logs:
      log.close()
  return procs


def wait_all(procs, deadline):
  """Waits until all exit, one fails (its peers are then killed: they would
  wait for it in a collective) or the deadline passes (all killed)."""
  try:
    while any(p.poll() is None for p in procs):
      if any(p.returncode not in (None, 0) for p in procs):
        break
      if time.monotonic() > deadline:
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      kill_group(p)
  return [p.returncode for p in procs]


def tree(state):
  groups = {g: getattr(state, g).params for g in
            ("task", "translator", "d_img", "d_feat")
            if getattr(state, g) is not None}
  return jax.tree_util.tree_leaves_with_path(
      (groups, state.task.batch_stats))


def test_processes_share_global_batches_like_one_process(tiny_config):
  """Process p of 2 (2 devices each) reads exactly the second half p of
  each global batch of 1 process x 4 devices."""
  one = input_pipeline.TrainBatches(tiny_config, num_local_devices=4,
                                    process_index=0, process_count=1)
  two = [input_pipeline.TrainBatches(tiny_config, num_local_devices=2,
                                     process_index=p, process_count=2)
         for p in range(2)]
  for step in (0, 5):
    whole = one.batch(step)
    halves = [b.batch(step) for b in two]
    assert not np.array_equal(halves[0]["source_image"],
                              halves[1]["source_image"])
    for key in whole:
      np.testing.assert_array_equal(
          whole[key], np.concatenate([h[key] for h in halves]), err_msg=key)


def test_two_processes_match_one_process(tfds_dir, tmp_path):
  config = make_config(tfds_dir)
  multi = str(tmp_path / "2x2")
  logdir = str(tmp_path)
  deadline = time.monotonic() + TIMEOUT
  procs = start_processes(multi, config, logdir)
  try:
    # Meanwhile the reference in this process (1 x 4 devices).
    assert jax.process_count() == 1 and jax.device_count() == 4
    reference = str(tmp_path / "1x4")
    train.train_and_evaluate(config, reference)
    returncodes = wait_all(procs, deadline)
  finally:
    for p in procs:
      kill_group(p)
  logs = []
  for i in range(len(procs)):
    with open(os.path.join(logdir, f"process_{i}.log")) as f:
      logs.append(f.read())
  detail = "\n".join(f"--- process {i} (exit {rc}), end of log:\n"
                     f"{log[-4000:]}" for i, (rc, log)
                     in enumerate(zip(returncodes, logs)))
  assert returncodes == [0, 0], (
      f"2-process run failed or passed {TIMEOUT} s:\n{detail}")
  for i, log in enumerate(logs):
    assert f"JAX process {i}/2" in log and "4 global devices" in log, detail

  # Checkpoints written by both processes, read back here by 1 process.
  manager = checkpointing.make_manager(multi, 3)
  assert sorted(manager.all_steps()) == [2, STEPS]
  state_multi, _ = train.initial_state(config, multi)
  state_ref, _ = train.initial_state(config, reference)
  init = state_lib.create_train_state(config, models.build_networks(config),
                                      jax.random.PRNGKey(config.seed))
  assert int(state_multi.step) == int(state_ref.step) == STEPS
  assert int(state_multi.nonfinite_steps) == 0
  # Updates compared leaf by leaf as a whole (single elements of BN-bias
  # updates are sums with heavy cancellation), as in test_train.py. Seen:
  # 6e-6 for the worst leaf, 2e-7 for all, most leaves bit-equal; reading
  # the wrong shards would change the updates at order 1.
  diff = norm = 0.0
  for (path, a), (_, b), (_, a0) in zip(tree(state_multi), tree(state_ref),
                                        tree(init)):
    da, db = (np.asarray(x, np.float64) - np.asarray(a0, np.float64)
              for x in (a, b))
    if np.linalg.norm(db) > 1e-5:
      err = np.linalg.norm(da - db) / np.linalg.norm(db)
      assert err < 1e-3, (jax.tree_util.keystr(path), err)
    diff, norm = diff + np.sum((da - db) ** 2), norm + np.sum(db ** 2)
  assert norm > 0
  assert np.sqrt(diff / norm) < 1e-5, np.sqrt(diff / norm)

  # Only process 0 writes logs (one TensorBoard file, named after its pid),
  # images and results.
  events = [f for f in os.listdir(multi) if f.startswith("events.out")]
  assert len(events) == 1 and f".{procs[0].pid}." in events[0], events
  assert os.listdir(os.path.join(multi, "images")) == [
      f"step_{STEPS:07d}.png"]
  assert os.path.exists(os.path.join(multi, train.RESULTS_FILE))


def test_sigterm_to_one_process_stops_both_at_one_checkpoint(tfds_dir,
                                                             tmp_path):
  """A preemption notice to process 1 alone: JAX's preemption service makes
  both processes stop after the same step, save that checkpoint together and
  exit cleanly."""
  config = make_config(tfds_dir)
  config.train.update(num_steps=200, checkpoint_every=1000, eval_every=1000,
                      image_every=1000)
  workdir, logdir = str(tmp_path / "run"), str(tmp_path)
  deadline = time.monotonic() + TIMEOUT
  procs = start_processes(workdir, config, logdir)
  log1 = os.path.join(logdir, "process_1.log")
  try:
    # Process 1 logs its metrics every step (log_every=1) once training.
    while "train/loss_task" not in open(log1).read():
      assert all(p.poll() is None for p in procs), open(log1).read()[-4000:]
      assert time.monotonic() < deadline, "no training step before deadline"
      time.sleep(0.5)
    os.kill(procs[1].pid, signal.SIGTERM)
    returncodes = wait_all(procs, deadline)
  finally:
    for p in procs:
      kill_group(p)
  logs = [open(os.path.join(logdir, f"process_{i}.log")).read()
          for i in range(2)]
  detail = "\n".join(f"--- process {i}:\n{log[-3000:]}"
                     for i, log in enumerate(logs))
  assert returncodes == [0, 0], detail
  steps = [int(log.split("Preempted: checkpoint saved at step ")[1].split(
      ".")[0]) for log in logs]
  assert steps[0] == steps[1] < config.train.num_steps, detail
  manager = checkpointing.make_manager(workdir, 3)
  assert manager.all_steps() == [steps[0]]
