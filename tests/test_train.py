"""Training system: pmapped step equivalence, learning, checkpoints, resume."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import seg
from crdoco_jax import checkpointing, models, optim, parallel, train
from crdoco_jax import state as state_lib
from crdoco_jax import train_step as step_lib
from crdoco_jax.data import input_pipeline
from tests import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stack(tree, n):
  return jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * n), tree)


def test_pmapped_step_on_4_devices_equals_one_device_global_batch(tiny_config):
  config = tiny_config
  # Adam's first update is lr * sign(g) for tiny g: rounding can flip it.
  # Plain SGD keeps parameter differences proportional to gradient ones.
  for name in ("translator", "task_net", "d_img", "d_feat"):
    config.optim[name].update(name="sgd", lr=0.01, weight_decay=0.0)
  n = jax.local_device_count()
  assert n == 4
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  batch = input_pipeline.TrainBatches(config, num_local_devices=n).batch(0)
  # Per-device means equal the global mean only with equal valid-pixel
  # counts per device; the demo labels every pixel.
  assert not np.any(batch["source_label"] == config.data.ignore_label)
  nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
  step = step_lib.make_train_step(config, nets)
  devices = jax.local_devices()
  p4 = jax.pmap(step, axis_name=parallel.AXIS, devices=devices)
  p1 = jax.pmap(step, axis_name=parallel.AXIS, devices=devices[:1])
  s4, m4 = p4(stack(host_state, n), batch)
  whole = jax.tree_util.tree_map(
      lambda x: x.reshape((1, -1) + x.shape[2:]), batch)
  s1, m1 = p1(stack(host_state, 1), whole)
  for k in m1:
    np.testing.assert_allclose(m4[k][0], m1[k][0], rtol=2e-4, atol=1e-5,
                               err_msg=k)
  leaves4 = jax.tree_util.tree_leaves_with_path(s4)
  leaves1 = jax.tree_util.tree_leaves(s1)
  init = jax.tree_util.tree_leaves(host_state)
  diff, norm = 0.0, 0.0
  for (path, a), b, a_init in zip(leaves4, leaves1, init):
    # Relative error of each leaf's update as a whole: single elements of
    # early BN-bias gradients are sums with heavy cancellation (f32 noise of
    # a few 1e-2 relative there, 1e-7 elsewhere).
    a0, b0 = (np.asarray(x[0], np.float64) - np.asarray(a_init, np.float64)
              for x in (a, b))
    # Leaves with no true gradient (a conv bias right before instance norm)
    # move by rounding noise only.
    if np.linalg.norm(b0) > 1e-5:
      err = np.linalg.norm(a0 - b0) / np.linalg.norm(b0)
      assert err < 5e-2, (jax.tree_util.keystr(path), err)
    diff, norm = diff + np.sum((a0 - b0) ** 2), norm + np.sum(b0 ** 2)
    # Every device holds the same copy after the step.
    np.testing.assert_array_equal(a[0], a[-1])
  assert np.sqrt(diff / norm) < 1e-3
  # The step changed every network.
  for group in ("task", "translator", "d_img", "d_feat"):
    before = jax.tree_util.tree_leaves(getattr(host_state, group).params)
    after = jax.tree_util.tree_leaves(getattr(s4, group).params)
    assert any(not np.allclose(a, b[0]) for a, b in zip(before, after)), group


def test_a_few_steps_lower_the_task_loss(tiny_config):
  config = tiny_config
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  state = parallel.replicate(host_state)
  batches = input_pipeline.TrainBatches(config)
  task = []
  for i in range(8):
    state, m = steps.one_step(config, state,
                              parallel.shard(batches.batch(i % 2)))
    task.append(float(m["loss_task"][0]))
  assert all(np.isfinite(task)), task
  assert np.mean(task[-2:]) < 0.8 * np.mean(task[:2]), task


def test_source_only_and_frozen_translator_steps_run(tiny_config):
  for variant in ("source_only", "frozen_translator"):
    config = seg.get_config(f"tiny,{variant}")
    config.data.tfds_data_dir = tiny_config.data.tfds_data_dir
    host_state = state_lib.create_train_state(
        config, models.build_networks(config), jax.random.PRNGKey(0))
    assert (host_state.translator is None) == (variant == "source_only")
    nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
    batch = input_pipeline.TrainBatches(config).batch(0)
    new, m = steps.one_step(config, parallel.replicate(host_state),
                            parallel.shard(batch))
    assert np.isfinite(m["loss_total"][0])
    images = jax.pmap(step_lib.make_visualize_step(config, nets),
                      axis_name=parallel.AXIS)(new, parallel.shard(batch))
    grid = train.summary_image(jax.device_get(images), config)
    assert grid.dtype == np.uint8 and grid.shape[-1] == 3
    if variant == "frozen_translator":
      same = jax.tree_util.tree_map(
          lambda a, b: np.array_equal(a, b[0]),
          host_state.translator.params, new.translator.params)
      assert all(jax.tree_util.tree_leaves(same))
      assert "loss_img_adv" not in m and "loss_consistency" in m


def _one_step(config, host_state):
  batch = parallel.shard(input_pipeline.TrainBatches(config).batch(0))
  new, m = steps.one_step(config, parallel.replicate(host_state), batch)
  return new, jax.tree_util.tree_map(lambda x: float(x[0]), m)


def assert_term_enters_with_its_weight(config, m, term, weight):
  assert m[f"loss_{term}"] > 0
  weights = step_lib.loss_weights(config, 0)
  assert float(weights[term]) == weight
  total = sum(float(weights[k]) * m[f"loss_{k}"] for k in weights
              if f"loss_{k}" in m)
  np.testing.assert_allclose(m["loss_total"], total, rtol=1e-5)


def _without_task_gradients(tiny_config):
  """A fresh tiny config (same data) whose translators learn from the
  image-level terms only, as the demo's."""
  config = seg.get_config("tiny")
  config.data.tfds_data_dir = tiny_config.data.tfds_data_dir
  config.translator.task_gradients = False
  return config


def test_optional_terms_and_task_on_reconstructions_training_f_s_only(
    tiny_config):
  """loss.class_prior and loss.task_reconstructed enter the objective with
  their weights; without task gradients the reconstruction term reaches F_S,
  not the translators or F_T; task_net.source_jitter changes what F_S's
  task term sees and nothing F_T or the translators learn from. (All in
  one pair of steps: each step compile is most of a test's time.)"""
  config = _without_task_gradients(tiny_config)
  config.loss.class_prior = 0.5
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  base, base_m = _one_step(config, host_state)
  config.loss.task_reconstructed = 0.5
  config.task_net.source_jitter = 1.0
  new, m = _one_step(config, host_state)
  assert not np.allclose(m["loss_task"], base_m["loss_task"])
  for term in ("rec", "img_adv", "class_prior", "consistency"):
    np.testing.assert_allclose(m[f"loss_{term}"], base_m[f"loss_{term}"],
                               rtol=1e-5)
  assert_term_enters_with_its_weight(config, m, "class_prior", 0.5)
  assert_term_enters_with_its_weight(config, m, "task_reconstructed", 0.5)
  close = lambda a, b: all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: np.allclose(x, y, atol=1e-6), a, b)))
  assert close(base.translator.params, new.translator.params)
  part = lambda p, d: {k: v for k, v in p.items() if k.endswith(d)}
  assert close(part(base.task.params, "_T"), part(new.task.params, "_T"))
  assert not close(part(base.task.params, "_S"), part(new.task.params, "_S"))


def test_semantic_loss_trains_g_t2s_only(tiny_config):
  """loss.semantic (CyCADA's, F_S fixed): enters with its weight, moves the
  translators' T2S parameters and no task-net parameter. (One label source,
  F_S's own: the labels are an argmax, with no gradient whoever makes them;
  losses.ensemble_labels has its own test, and each further choice here
  would cost a step compile.)"""
  config = _without_task_gradients(tiny_config)
  config.loss.semantic_labels = "source_net"
  # SGD: Adam's first update is lr * sign(g), blind to a small added term.
  config.optim.translator.update(name="sgd", lr=0.01, weight_decay=0.0)
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  base, _ = _one_step(config, host_state)
  config.loss.semantic = 0.5
  new, m = _one_step(config, host_state)
  assert_term_enters_with_its_weight(config, m, "semantic", 0.5)
  # Leaves whose update differs beyond float noise (other fusions).
  moved = lambda a, b: [
      jax.tree_util.keystr(p) for (p, x), y in zip(
          jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b))
      if not np.allclose(x, y, rtol=1e-5, atol=1e-7)]
  assert not moved(base.task.params, new.task.params)
  changed = moved(base.translator.params, new.translator.params)
  assert changed and all("T2S" in k for k in changed), changed
  config.loss.semantic_labels = "target"
  with pytest.raises(ValueError, match="semantic_labels='target'"):
    step_lib.make_train_step(config, models.build_networks(config))


def test_ideal_translation_replaces_f_s_view_only(tiny_config):
  """translator.ideal_t2s: F_S's view of the target (the consistency term)
  is the batch's rendering, while G_T->S's own terms (cycle, image
  adversarial) still see G_T->S(I_T)."""
  config = tiny_config
  config.translator.ideal_t2s = True
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  state = parallel.replicate(host_state)
  batch = input_pipeline.TrainBatches(config).batch(0)
  other = dict(batch, target_as_source=batch["target_as_source"][..., ::-1])
  metrics = [jax.tree_util.tree_map(lambda x: float(x[0]), steps.one_step(
      config, state, parallel.shard(b))[1]) for b in (batch, other)]
  assert metrics[0]["loss_consistency"] != metrics[1]["loss_consistency"]
  for term in ("rec", "img_adv", "identity"):
    if f"loss_{term}" in metrics[0]:
      assert metrics[0][f"loss_{term}"] == metrics[1][f"loss_{term}"], term


def test_cycle_options_change_only_the_cycle_term(tiny_config):
  """loss.cycle_pool: the cycle term compares pooled images (never more than
  the pixel L1: the mean of |d| >= |mean of d|). loss.cycle_class_balance:
  the source side weighs pixels by class (another value). Every other term
  stays."""
  host_state = state_lib.create_train_state(
      tiny_config, models.build_networks(tiny_config), jax.random.PRNGKey(0))
  batch = parallel.shard(input_pipeline.TrainBatches(tiny_config).batch(0))
  configs = [tiny_config]
  for key, value in (("cycle_pool", 4), ("cycle_class_balance", 1.0)):
    configs.append(seg.get_config("tiny"))
    configs[-1].data.tfds_data_dir = tiny_config.data.tfds_data_dir
    configs[-1].loss[key] = value
  # The translators' pretraining step has the cycle and compiles fastest.
  base, pooled, balanced = (
      steps.one_step(config, parallel.replicate(host_state), batch,
                     "translator")[1] for config in configs)
  assert 0 < float(pooled["loss_rec"][0]) < float(base["loss_rec"][0])
  assert float(balanced["loss_rec"][0]) > 0
  assert abs(float(balanced["loss_rec"][0]) - float(base["loss_rec"][0])) > 1e-4
  for new in (pooled, balanced):
    for k in base:
      if k not in ("loss_rec", "loss_total"):
        np.testing.assert_allclose(new[k], base[k], rtol=1e-6, err_msg=k)


def test_remat_options_leave_the_step_unchanged(tiny_config):
  # Rematerialisation trades memory for recomputation; the maths and the
  # parameter names (so checkpoints) are the same.
  host_state = state_lib.create_train_state(
      tiny_config, models.build_networks(tiny_config), jax.random.PRNGKey(0))
  batch = parallel.shard(input_pipeline.TrainBatches(tiny_config).batch(0))
  remat = seg.get_config("tiny")
  remat.data.tfds_data_dir = tiny_config.data.tfds_data_dir
  remat.compute.remat_networks = True
  remat.translator.remat = remat.task_net.remat = True
  outputs, barriers = [], []
  for config in (tiny_config, remat):
    state = parallel.replicate(host_state)
    p_step, text = steps.compiled_step(config, state, batch)
    barriers.append(text.count("optimization_barrier"))
    outputs.append(p_step(state, batch))
  # Every network pass (11 here) and every block is checkpointed.
  assert barriers[0] == 0 and barriers[1] > 11, barriers
  for a, b in zip(*(jax.tree_util.tree_leaves(o) for o in outputs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("option,value,phase", [
    ("conv", "gemm", "adapt"),
    ("batch_passes", True, "adapt"),
    ("batch_passes", True, "translator"),
])
def test_compute_options_give_the_same_step(tiny_config, option, value,
                                            phase):
  """compute.conv='gemm' (every network) and compute.batch_passes (stacked
  passes, per-half BatchNorm statistics): the same loss terms and BatchNorm
  running statistics. (Gradients are checked network by network in
  test_conv_gemm.py and test_models.py; after one Adam step, float noise in
  a near-zero gradient moves a parameter by up to the learning rate either
  way.)"""
  host_state = state_lib.create_train_state(
      tiny_config, models.build_networks(tiny_config), jax.random.PRNGKey(0))
  batch = parallel.shard(input_pipeline.TrainBatches(tiny_config).batch(0))
  other = seg.get_config("tiny")
  other.data.tfds_data_dir = tiny_config.data.tfds_data_dir
  other.compute[option] = value
  states, metrics, convs = [], [], []
  for config in (tiny_config, other):
    replicated = parallel.replicate(host_state)
    p_step, text = steps.compiled_step(config, replicated, batch, phase)
    convs.append(text.count("convolution("))
    state, m = p_step(replicated, batch)
    states.append(state)
    metrics.append(m)
  if option == "batch_passes":  # the stacked passes are fewer
    assert convs[1] < 0.8 * convs[0], convs
  assert metrics[0].keys() == metrics[1].keys()
  for k in metrics[0]:
    np.testing.assert_allclose(metrics[1][k], metrics[0][k], rtol=1e-4,
                               atol=1e-6, err_msg=k)
  stats = [s.task.batch_stats for s in states]
  assert jax.tree_util.tree_structure(stats[0]) == (
      jax.tree_util.tree_structure(stats[1]))
  moved = 0
  for a, b, old in zip(*(jax.tree_util.tree_leaves(t) for t in stats),
                       jax.tree_util.tree_leaves(host_state.task.batch_stats)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    moved += not np.allclose(a[0], old)
  # BatchNorm statistics move in adaptation steps only.
  assert (moved > 0) == (phase == "adapt")


def test_batch_passes_need_equal_image_sizes():
  config = seg.get_config("tiny")
  config.compute.batch_passes = True
  config.source.image_size = (32, 48)
  with pytest.raises(ValueError, match=r"equal image sizes.*\(32, 48\)"):
    step_lib.make_train_step(config, models.build_networks(config))


def test_save_restore_gives_identical_state(tiny_config, tmp_path):
  config = tiny_config
  state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(3))
  state = state.replace(step=np.int32(7))
  manager = checkpointing.make_manager(str(tmp_path), 2)
  checkpointing.save(manager, 7, state)
  restored, step = checkpointing.restore_latest(
      manager, jax.eval_shape(lambda: state), str(tmp_path), config)
  assert step == 7
  assert (jax.tree_util.tree_structure(restored)
          == jax.tree_util.tree_structure(state))
  for a, b in zip(jax.tree_util.tree_leaves(state),
                  jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_no_target_evaluation_while_only_translators_train(tiny_config,
                                                           tmp_path):
  """Also what a run leaves behind (checkpoints, images, events) and that a
  workdir refuses a config of other network shapes. Resuming is tested
  across processes in test_reliability.py."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.translator.pretrain_steps = 2
  config.train.update(num_steps=4, eval_every=1, checkpoint_every=2,
                      image_every=4)
  workdir = str(tmp_path)
  assert train.train_and_evaluate(config, workdir)["step"] == 4
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  state, manager = train.initial_state(config, workdir)
  assert int(state.step) == 4 and manager.latest_step() == 4
  assert os.listdir(os.path.join(workdir, "images"))
  config.task_net.width = 16
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"task_net\.width: 8 -> 16"):
    train.initial_state(config, workdir)
  steps = set()
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(workdir, name)):
        if any(v.tag == "eval/target_miou" for v in event.summary.value):
          steps.add(event.step)
  # F_T is unchanged by steps 1-2: its first evaluation follows step 3.
  assert steps == {3, 4}


def test_pipeline_is_deterministic_and_resumable(tiny_config):
  a = input_pipeline.TrainBatches(tiny_config)
  b = input_pipeline.TrainBatches(tiny_config)
  it = b.iterate(start_step=5)
  for k in range(5, 9):
    x, y = a.batch(k), next(it)
    assert set(x) == {"source_image", "source_label", "target_image"}
    assert x["source_image"].shape == (4, 1, 32, 32, 3)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a.batch(0)["target_image"],
                            a.batch(1)["target_image"])


def test_processes_read_disjoint_shards(tiny_config):
  idx = [input_pipeline.example_indices(3, 16, 8, 4, p, 0, 0)[0]
         for p in range(2)]
  assert not set(idx[0]) & set(idx[1])
  assert sorted(np.concatenate(idx)) == sorted(
      input_pipeline.example_indices(3, 16, 8, 8, 0, 0, 0)[0])


def test_missing_dataset_error_names_path_and_demo(tmp_path):
  config = seg.get_config()
  with pytest.raises(input_pipeline.DatasetNotFoundError) as e:
    input_pipeline.open_source(config.source, "train", str(tmp_path))
  assert str(tmp_path) in str(e.value) and "gta5" in str(e.value)
  assert "configs/seg.py:demo" in str(e.value)


def test_launch_without_data_fails_fast_naming_paths(tmp_path):
  out = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/seg.py",
       f"--workdir={tmp_path / 'run'}",
       f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  message = out.stderr[out.stderr.index("error: "):]
  assert "Traceback" not in message
  assert str(tmp_path / "tfds") in message and "crdoco_gta5" in message
  assert "images/00001.png" in message and "configs/seg.py:demo" in message


def test_config_variants_and_typos():
  config = seg.get_config("demo,source_only")
  assert config.method == "source_only" and config.task_net.arch == "resnet18"
  with pytest.raises(AttributeError, match="num_stepz"):
    config.train.num_stepz = 3
  with pytest.raises(ValueError, match="demoo"):
    seg.get_config("demoo")


def test_launch_rejects_misspelt_override(tmp_path):
  out = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/seg.py:tiny",
       f"--workdir={tmp_path}", "--config.train.num_stepz=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "num_stepz" in out.stderr


def test_translator_pretraining_phase_updates_only_translators(tiny_config):
  config = tiny_config
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
  batch = input_pipeline.TrainBatches(config).batch(0)
  new, m = steps.one_step(config, parallel.replicate(host_state),
                          parallel.shard(batch), "translator")
  # (tiny inherits the demo's identity term)
  assert config.loss.identity > 0
  assert set(m) == {"loss_img_adv", "loss_rec", "loss_identity", "loss_d_img",
                    "loss_total", "nonfinite"}
  changed = lambda group: any(
      not np.array_equal(a, b[0]) for a, b in zip(
          jax.tree_util.tree_leaves(getattr(host_state, group).params),
          jax.tree_util.tree_leaves(getattr(new, group).params)))
  assert changed("translator") and changed("d_img")
  assert not changed("task") and not changed("d_feat")
  # Their optimizer counts stay 0, so their schedules start at adaptation
  # (state_lib.schedule_horizons).
  for group in ("task", "d_feat"):
    for a, b in zip(
        jax.tree_util.tree_leaves(getattr(host_state, group).opt_state),
        jax.tree_util.tree_leaves(getattr(new, group).opt_state)):
      np.testing.assert_array_equal(a, b[0])
  with pytest.raises(ValueError, match="source_only"):
    step_lib.make_train_step(seg.get_config("tiny,source_only"), nets,
                             "translator")


def test_schedules_of_groups_that_skip_pretraining_start_at_adaptation():
  config = seg.get_config("demo")
  config.optim.task_net.schedule = "poly"
  total, pretrain = (config.train.schedule_steps,
                     config.translator.pretrain_steps)
  assert 0 < pretrain < total
  horizons = state_lib.schedule_horizons(config)
  assert horizons == dict(translator=total, d_img=total,
                          task_net=total - pretrain, d_feat=total - pretrain)
  # The task nets' poly rate reaches 0 at the run's last step, not after it.
  schedule = optim.learning_rate_schedule(config.optim.task_net,
                                          horizons["task_net"])
  assert float(schedule(total - pretrain - 1)) > 0
  assert float(schedule(total - pretrain)) == 0
  # No translators, no pretraining: the whole horizon.
  source_only = seg.get_config("demo,source_only")
  assert (state_lib.schedule_horizons(source_only)["task_net"]
          == source_only.train.schedule_steps)


def test_pretraining_phase_ignores_the_adaptation_only_keys(tiny_config):
  # The experiment runner shares one pretraining among methods that differ
  # only in experiments.ADAPT_ONLY_KEYS; change every one of them at once.
  from crdoco_jax import checkpointing, experiments  # pylint: disable=g-import-not-at-top
  tiny_config = seg.get_config("tiny")
  other = seg.get_config("tiny,consistency_only")
  with other.unlocked():
    other.loss.update(task=2.0, consistency=0.5, feat_adv=0.3, feat_gan="lsgan",
                      adapt_start=3, adapt_ramp=5, consistency_grad="target_net",
                      consistency_balance=1.0, consistency_form="hard",
                      consistency_mask="agree", consistency_mean="pixel",
                      semantic_labels="target_net")
    other.loss.aux.update(task=0.3, consistency=0.2, feat_adv=0.7)
    other.translator.task_gradients = False
    other.translator.ideal_t2s = True
    other.optim.task_net.update(name="sgd", lr=0.5, schedule="linear_decay")
    other.optim.d_feat.update(name="sgd", lr=0.5, schedule="constant")
    other.train.num_steps = 9
    flat = lambda c: checkpointing.flat_config(c.to_dict())
    adapt_only = {k for k in flat(other)
                  if k.startswith(experiments.ADAPT_ONLY_KEYS)}
    for key in adapt_only:  # every remaining number too
      section, leaf = key.rsplit(".", 1) if "." in key else ("", key)
      node = other
      for part in filter(None, section.split(".")):
        node = node[part]
      if (flat(other)[key] == flat(tiny_config)[key]
          and isinstance(node[leaf], (int, float))):
        node[leaf] = node[leaf] * 0.5 + 1  # ints: + 1 keeps them ints
  changed = {k for k, v in flat(other).items() if flat(tiny_config)[k] != v}
  assert changed == adapt_only, changed ^ adapt_only
  for config in (tiny_config, other):
    config.translator.pretrain_steps = 2
  assert (experiments.pretraining_key(tiny_config)
          == experiments.pretraining_key(other))
  host_state = state_lib.create_train_state(
      tiny_config, models.build_networks(tiny_config), jax.random.PRNGKey(0))
  batch = parallel.shard(input_pipeline.TrainBatches(tiny_config).batch(0))
  outputs = []
  for config in (tiny_config, other):
    outputs.append(steps.one_step(config, parallel.replicate(host_state),
                                  batch, "translator"))
  for a, b in zip(*(jax.tree_util.tree_leaves(o) for o in outputs)):
    np.testing.assert_array_equal(a, b)


def test_image_pool_feeds_d_img_and_stays_replicated(tiny_config):
  """disc.img_pool: the first step stores the global batch's translations
  in order (and D_img judges them, as without a pool); once full, D_img
  also gets older ones, and every device keeps the same pool."""
  config = seg.get_config("tiny")
  config.data.tfds_data_dir = tiny_config.data.tfds_data_dir
  nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
  host_state = state_lib.create_train_state(config, nets,
                                            jax.random.PRNGKey(0))
  _, base = _one_step(config, host_state)
  images = input_pipeline.TrainBatches(config).batch(0)["source_image"]
  images = images.reshape((-1,) + images.shape[-3:])  # the global batch
  n = len(images)
  config.disc.img_pool = n
  pooled = parallel.replicate(
      state_lib.create_train_state(config, nets, jax.random.PRNGKey(0)))
  p_step, _ = steps.compiled_step(config, pooled, parallel.shard(
      input_pipeline.TrainBatches(config).batch(0)))
  new, m = p_step(pooled, parallel.shard(
      input_pipeline.TrainBatches(config).batch(0)))
  m = jax.tree_util.tree_map(lambda x: float(x[0]), m)
  np.testing.assert_allclose(m["loss_d_img"], base["loss_d_img"], rtol=1e-5)
  pool = new.img_pool["t"]
  assert [int(c) for c in pool["count"]] == [n] * jax.local_device_count()
  want = nets.translator.apply({"params": host_state.translator.params},
                               images, "S2T")
  np.testing.assert_allclose(pool["images"][0], want, atol=1e-5)
  for leaf in jax.tree_util.tree_leaves(new.img_pool):
    assert all(np.array_equal(leaf[0], x) for x in leaf[1:])
  # Full now: the second step's answers mix this step's and older images.
  second, _ = p_step(new, parallel.shard(
      input_pipeline.TrainBatches(config).batch(1)))
  changed = [not np.array_equal(a, b) for a, b in
             zip(second.img_pool["t"]["images"][0], pool["images"][0])]
  assert any(changed) or n < 4  # each slot is swapped with probability 1/2


def test_feature_discriminators_judge_the_features_the_heads_read(
    tiny_config):
  """disc.feat_input='features': each D_feat is built on the backbone
  features its head reads (layer4 for 'main', layer3 for 'aux'), learns,
  and its adversarial term reaches the task nets' backbones, not their
  heads (with the task and consistency terms off, nothing else does)."""
  config = tiny_config
  for value, arch in (("feature", "resnet10"), ("features", "flownets")):
    bad = seg.get_config("tiny")
    bad.disc.feat_input, bad.task_net.arch = value, arch
    with pytest.raises(ValueError, match="feat_input"):
      models.build_networks(bad)
  config.disc.feat_input = "features"
  config.task_net.multi_level = True
  config.loss.update(task=0.0, consistency=0.0, feat_adv=1.0)
  config.optim.task_net.weight_decay = 0.0
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  task, d_feat = host_state.task.params, host_state.d_feat.params
  for head in ("main", "aux"):
    read = task["heads_S"][head]["Conv_0"]["kernel"].shape[2]
    for d in ("D_S", "D_T"):
      assert d_feat[head][d]["Conv_0"]["kernel"].shape[2] == read
  assert task["heads_S"]["main"]["Conv_0"]["kernel"].shape[2] != (
      task["heads_S"]["aux"]["Conv_0"]["kernel"].shape[2])
  new, m = _one_step(config, host_state)
  assert m["loss_feat_adv"] > 0 and m["loss_d_feat"] > 0
  moved = lambda a, b: not all(jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y[0]), a, b)))
  assert moved(d_feat, new.d_feat.params)
  for unit, params in task.items():
    assert moved(params, new.task.params[unit]) == (
        not unit.startswith("heads")), unit


@pytest.mark.parametrize("key,value", [
    ("loss.consistency_grad", "target"), ("loss.img_gan", "wgan"),
    ("loss.feat_gan", "ls"), ("optim.d_img.name", "adamw"),
    ("optim.task_net.schedule", "cosine"), ("train.schedule_steps", 3),
    ("train.nonfinite", "ignore")])
def test_misspelt_or_impossible_settings_fail_naming_the_key(tmp_path, key,
                                                             value):
  config = seg.get_config("tiny")
  config.translator.pretrain_steps = 3  # (the schedule case needs one)
  section, name = key.rsplit(".", 1)
  node = config
  for part in section.split("."):
    node = node[part]
  node[name] = value
  nets = models.build_networks(config)
  with pytest.raises(ValueError, match=key.split(".")[-1]) as error:
    if key == "train.nonfinite":
      train.train_and_evaluate(config, str(tmp_path))
    else:
      step_lib.make_train_step(config, nets)
      state_lib.create_train_state(config, nets, jax.random.PRNGKey(0))
  assert repr(value) in str(error.value) or str(value) in str(error.value)
  if key.startswith("optim."):
    assert f"optim.{section.split('.')[1]}:" in str(error.value)


def test_frozen_bn_affine_keeps_scales_and_offsets(tiny_config):
  """task_net.bn_affine='frozen' (AdaptSegNet): BatchNorm scales and
  offsets stay as initialised, everything else of the task nets learns."""
  config = seg.get_config("tiny")
  config.data.tfds_data_dir = tiny_config.data.tfds_data_dir
  config.task_net.bn_affine = "frozen"
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  new, _ = _one_step(config, host_state)
  labels = optim.param_labels(host_state.task.params, freeze_norm=True)
  flat = lambda t: jax.tree_util.tree_leaves_with_path(t)
  moved = {jax.tree_util.keystr(p): not np.allclose(a, b[0]) for (p, a), (_, b)
           in zip(flat(host_state.task.params), flat(new.task.params))}
  frozen = {jax.tree_util.keystr(p) for p, l in flat(labels) if l == "frozen"}
  assert frozen and all(k.endswith(("['scale']", "['bias']")) for k in frozen)
  assert not any(moved[k] for k in frozen)
  kernels = [k for k in moved if k.endswith("['kernel']")]
  assert kernels and all(moved[k] for k in kernels)
  config.task_net.bn_affine = "none"
  with pytest.raises(ValueError, match="task_net.bn_affine='none'"):
    state_lib.create_train_state(config, models.build_networks(config),
                                 jax.random.PRNGKey(0))
