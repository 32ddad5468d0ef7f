"""Reliability: NaN guard, preemption, exact resume, damaged checkpoints.
Subprocess tests run launch.py locally and clean up their processes."""
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import seg
from crdoco_jax import checkpointing, models, parallel, train
from crdoco_jax import state as state_lib
from crdoco_jax.data import input_pipeline
from tests import steps
from tests.subprocesses import env_with_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 400


def poisoned(batches_cls, bad_step):
  """A TrainBatches whose images at ``bad_step`` are NaN."""
  class Poisoned(batches_cls):
    def batch(self, step):
      out = super().batch(step)
      if step == bad_step:
        out["source_image"] = np.full_like(out["source_image"], np.nan)
      return out
  return Poisoned


def test_nonfinite_step_is_skipped_on_device(tiny_config):
  config = tiny_config
  host = state_lib.create_train_state(config, models.build_networks(config),
                                      jax.random.PRNGKey(0))
  batch = input_pipeline.TrainBatches(config).batch(0)
  batch["target_image"][1, 0, 3, 3, 0] = np.inf  # one device, one pixel
  new, m = steps.one_step(config, parallel.replicate(host),
                          parallel.shard(batch))
  assert float(m["nonfinite"][0]) == 1.0
  new = parallel.unreplicate(new)
  assert int(new.step) == 1 and int(new.nonfinite_steps) == 1
  # Every network and optimizer state is as it was (the updates run inside
  # the guard's conditional).
  for name in ("task", "translator", "d_img", "d_feat"):
    assert getattr(host, name) is not None, name
    for a, b in zip(jax.tree_util.tree_leaves(getattr(host, name)),
                    jax.tree_util.tree_leaves(getattr(new, name))):
      np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_injected_nan_is_caught_in_both_modes(tiny_config, tmp_path,
                                              monkeypatch, mode):
  config = tiny_config
  config.train.nonfinite = mode
  monkeypatch.setattr(input_pipeline, "TrainBatches",
                      poisoned(input_pipeline.TrainBatches, bad_step=2))
  workdir = str(tmp_path)
  if mode == "stop":
    with pytest.raises(train.NonFiniteLossError, match=r"step 2 .*loss_"):
      train.train_and_evaluate(config, workdir)
    # The preemption handlers are gone with the error.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    # The checkpoint of step 2 (before the bad step) is the newest kept.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  else:
    result = train.train_and_evaluate(config, workdir)
    assert result["step"] == 4
    state, _ = train.initial_state(config, workdir)
    assert int(state.nonfinite_steps) == 1
    assert all(np.all(np.isfinite(x)) for x in
               jax.tree_util.tree_leaves(state.task.params))


def test_truncated_latest_checkpoint_falls_back_to_previous(tiny_config,
                                                            tmp_path):
  workdir = str(tmp_path)
  state = state_lib.create_train_state(
      tiny_config, models.build_networks(tiny_config), jax.random.PRNGKey(0))
  manager = checkpointing.make_manager(workdir, 3)
  checkpointing.write_config(workdir, tiny_config)
  checkpointing.save(manager, 2, state.replace(step=np.int32(2)))
  checkpointing.save(manager, 4, state.replace(step=np.int32(4)))
  # Truncate every data file of step 4, as a kill during a save would.
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "4")):
    for f in files:
      if f not in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 3, 1))
  restored, step = checkpointing.restore_latest(
      checkpointing.make_manager(workdir, 3), jax.eval_shape(lambda: state),
      workdir, tiny_config)
  assert step == 2 and int(restored.step) == 2


# ---------------------------------------------------------------- processes
def launch_cmd(workdir, tfds_dir, steps, extra=()):
  return [sys.executable, "launch.py", "--config=configs/seg.py:tiny",
          f"--workdir={workdir}", f"--config.data.tfds_data_dir={tfds_dir}",
          f"--config.train.num_steps={steps}", "--config.train.log_every=1",
          "--config.train.image_every=0", "--config.train.eval_every=1000",
          *extra]


def final_params(workdir, config):
  config = config.copy_and_resolve_references()
  state, manager = train.initial_state(config, workdir)
  return manager.latest_step(), jax.tree_util.tree_leaves(
      (state.task.params, state.translator.params, state.d_img.params,
       state.d_feat.params, state.task.batch_stats))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tfds_dir):
  """An 8-step run on 4 devices, never stopped: the reference. In this
  process (launch.py's processes have the same devices and XLA flags, so
  the same compiled step), which saves a process start-up and a compile."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = seg.get_config("tiny")
  config.data.tfds_data_dir = tfds_dir
  config.train.update(num_steps=8, log_every=1, image_every=0,
                      eval_every=1000, checkpoint_every=2)
  train.train_and_evaluate(config, workdir)
  return workdir


def run_until_step(cmd, workdir, step, sig, env):
  """Starts ``cmd``, sends ``sig`` once it has logged step ``step`` (any
  step if None)."""
  log = open(os.path.join(workdir, "log.txt"), "w")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + TIMEOUT
  try:
    while time.time() < deadline and proc.poll() is None:
      with open(os.path.join(workdir, "log.txt")) as f:
        text = f.read()
        if re.search(r"\] \[" + (str(step) if step is not None else r"\d+")
                     + r"\] [^\n]*train/loss", text):
          proc.send_signal(sig)
          break
      time.sleep(0.2)
    proc.wait(timeout=max(deadline - time.time(), 1))
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  with open(os.path.join(workdir, "log.txt")) as f:
    return proc.returncode, f.read()


def assert_same_params(a, b):
  step_a, leaves_a = a
  step_b, leaves_b = b
  assert step_a == step_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def test_killed_and_preempted_run_resumes_to_identical_parameters(
    tiny_config, tmp_path, tfds_dir, uninterrupted):
  """SIGKILL between checkpoints, restart, SIGTERM mid-run, restart: the
  final parameters equal an uninterrupted run's, bit for bit."""
  workdir = str(tmp_path)
  cmd = launch_cmd(workdir, tfds_dir, 8, ["--config.train.checkpoint_every=2"])
  # Finished checkpoints only: a kill can leave Orbax's "4.orbax-checkpoint-
  # tmp" behind, which a restart must ignore.
  ckpts = lambda: sorted(int(s) for s in os.listdir(
      os.path.join(workdir, "checkpoints")) if s.isdigit())
  rc, log = run_until_step(cmd, workdir, 3, signal.SIGKILL,
                           env_with_devices(4))
  assert rc == -signal.SIGKILL and ckpts()[-1] <= 4, log[-3000:]
  # Preempted at the first step it logs after resuming (or the next one).
  rc, log = run_until_step(cmd, workdir, None, signal.SIGTERM,
                           env_with_devices(4))
  assert rc == 0, log[-3000:]
  assert "saved the checkpoint of step" in log and ckpts()[-1] < 8
  subprocess.run(cmd, cwd=REPO, env=env_with_devices(4), check=True,
                 capture_output=True, timeout=TIMEOUT)
  assert_same_params(final_params(workdir, tiny_config),
                     final_params(uninterrupted, tiny_config))
