"""Depth and flow: regression losses and metrics against NumPy, the task
dispatch, decoding (resize, mirror), demos, and the pmapped step."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import depth as depth_configs
from configs import flow as flow_configs
from crdoco_jax import evaluate, losses, models, tasks, train
from crdoco_jax.data import dense, demo_depth, demo_flow
from tests.demo_data import build_small_demo


@pytest.fixture(scope="module")
def dense_tfds_dir(tmp_path_factory):
  """A tfds data dir holding both demo pairs with small splits."""
  root = str(tmp_path_factory.mktemp("dense_tfds"))
  for module in (demo_depth, demo_flow):
    build_small_demo(module, root, train=8, val=4)
  return root


def _config(module, arg, tfds_dir):
  config = module.get_config(arg)
  config.data.tfds_data_dir = tfds_dir
  return config


# -------------------------------------------------------- losses, metrics
def test_endpoint_error_loss_matches_numpy():
  rng = np.random.default_rng(0)
  p, t = rng.normal(size=(2, 5, 6, 2)), rng.normal(size=(2, 5, 6, 2))
  mask = rng.random((2, 5, 6)) > 0.4
  epe = np.sqrt(np.sum((p - t) ** 2, -1) + 1e-6)
  loss, per_pixel = losses.endpoint_error_loss(p, t, mask[..., None])
  np.testing.assert_allclose(loss, epe[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(per_pixel, np.where(mask, epe, 0), rtol=1e-5)
  assert float(losses.endpoint_error_loss(p, t, mask * 0)[0]) == 0.0
  # Finite gradient at a perfect match (the eps inside the root).
  g = jax.grad(lambda x: losses.endpoint_error_loss(x, t)[0])(t)
  assert np.all(np.isfinite(g))


def test_depth_task_losses_in_log_space_and_masked():
  config = depth_configs.get_config("tiny")
  task = tasks.get_task(config)
  rng = np.random.default_rng(1)
  out = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
  gt = rng.uniform(0.5, 8, size=(2, 4, 4, 1)).astype(np.float32)
  valid = rng.random((2, 4, 4)) > 0.3
  # Targets below the depth cap (1 m in the demo) are clamped to it.
  ref = np.abs(out - np.log(np.maximum(gt, 1.0)))[..., 0][valid].mean()
  np.testing.assert_allclose(task.supervised(out, (gt, valid)), ref,
                             rtol=1e-5)
  other = rng.normal(size=out.shape).astype(np.float32)
  np.testing.assert_allclose(task.consistency(out, other),
                             np.abs(out - other).mean(), rtol=1e-5)
  np.testing.assert_allclose(task.predict(out),
                             np.clip(np.exp(out), 1.0, 10.0), rtol=1e-5)
  config.unlock()
  config.depth.log_depth = False
  np.testing.assert_allclose(tasks.get_task(config).disc_input(out),
                             out / 10.0, rtol=1e-6)


def _numpy_depth_metrics(pred, gt, valid, lo, hi):
  rows = []
  for p, g, v in zip(pred, gt, valid):
    m = v & (g > lo) & (g < hi)
    if not m.any():
      continue
    p, g = np.clip(p[m], lo, hi).astype(np.float64), g[m].astype(np.float64)
    ratio = np.maximum(p / g, g / p)
    rows.append([np.mean(np.abs(p - g) / g), np.mean((p - g) ** 2 / g),
                 np.sqrt(np.mean((p - g) ** 2)),
                 np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)),
                 np.mean(ratio < 1.25), np.mean(ratio < 1.25 ** 2),
                 np.mean(ratio < 1.25 ** 3)])
  return dict(zip(evaluate.DEPTH_METRICS, np.mean(rows, 0)))


def test_depth_metrics_match_numpy_with_caps_and_empty_images():
  rng = np.random.default_rng(2)
  gt = rng.uniform(0.0, 12.0, (4, 6, 7)).astype(np.float32)
  pred = (gt * rng.uniform(0.6, 1.5, gt.shape)).astype(np.float32)
  pred[0, 0, 0] = 50.0  # clipped to the cap
  valid = rng.random(gt.shape) > 0.2
  valid[3] = False  # e.g. an evaluation padding image: does not count
  ref = _numpy_depth_metrics(pred, gt, valid, 0.5, 10.0)
  # Two "devices" summed on the host, as train.evaluate_target does.
  halves = [jax.device_get(evaluate.depth_metric_sums(
      pred[s], gt[s], valid[s], 0.5, 10.0)) for s in (slice(0, 2),
                                                       slice(2, 4))]
  sums = {k: np.float64(halves[0][k]) + halves[1][k] for k in halves[0]}
  assert int(sums["images"]) == 3
  got = evaluate.depth_metrics(sums)
  for k in evaluate.DEPTH_METRICS:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, err_msg=k)
  # A perfect prediction: zero errors, all deltas 1.
  perfect = evaluate.depth_metrics(jax.device_get(evaluate.depth_metric_sums(
      np.clip(gt, 0.5, 10), gt, valid, 0.5, 10.0)))
  assert perfect["abs_rel"] < 1e-6 and perfect["delta1"] == 1.0


def test_depth_eval_crop_masks_match_numpy_slicing():
  h, w = 375, 1242  # KITTI's ground truth
  bounds = dict(garg=(int(0.40810811 * h), int(0.99189189 * h),
                      int(0.03594771 * w), int(0.96405229 * w)),
                eigen=(int(0.3324324 * h), int(0.91351351 * h),
                       int(0.0359477 * w), int(0.96405229 * w)))
  assert bounds["garg"] == (153, 371, 44, 1197)
  for crop, (t, b, l, r) in bounds.items():
    ref = np.zeros((h, w), bool)
    ref[t:b, l:r] = True
    np.testing.assert_array_equal(evaluate.depth_eval_crop_mask(h, w, crop),
                                  ref, err_msg=crop)
  assert evaluate.depth_eval_crop_mask(h, w, "").all()
  with pytest.raises(ValueError, match="garg"):
    evaluate.depth_eval_crop_mask(h, w, "monodepth")
  config = depth_configs.get_config("kitti")
  assert config.depth.eval_crop == "garg" and config.depth.max_depth == 80.0
  config.depth.eval_crop = "eigne"
  with pytest.raises(ValueError, match="eigen"):
    tasks.get_task(config)  # at set-up, not at the first evaluation
  config.depth.eval_crop = "garg"
  config.loss.consistency_balance = 1.0  # classes only exist in segmentation
  with pytest.raises(ValueError, match="consistency_balance=1.0"):
    tasks.get_task(config)
  config.loss.update(consistency_balance=0.0, consistency_form="hard")
  with pytest.raises(ValueError, match="consistency_form='hard'"):
    tasks.get_task(config)
  config.loss.update(consistency_form="kl", consistency_mask="agree")
  with pytest.raises(ValueError, match="consistency_mask='agree'"):
    tasks.get_task(config)
  config.loss.update(consistency_mask="all", consistency_mean="element")
  with pytest.raises(ValueError, match="consistency_mean='element'"):
    tasks.get_task(config)
  config.loss.update(consistency_mean="pixel", class_prior=0.1)
  with pytest.raises(ValueError, match="class_prior=0.1"):
    tasks.get_task(config)
  config.loss.update(class_prior=0.0, cycle_class_balance=0.5)
  with pytest.raises(ValueError, match="cycle_class_balance=0.5"):
    tasks.get_task(config)


def test_depth_task_eval_counts_only_the_crop():
  config = depth_configs.get_config("kitti")  # Garg crop, 1e-3 - 80 m
  task = tasks.get_task(config)
  rng = np.random.default_rng(4)
  h, w = 375, 1242
  gt = rng.uniform(0.0, 90.0, (2, h, w)).astype(np.float32)
  valid = rng.random(gt.shape) > 0.3
  pred = (gt * rng.uniform(0.7, 1.4, gt.shape) + 0.5).astype(np.float32)
  crop = evaluate.depth_eval_crop_mask(h, w, "garg")
  wild = np.where(crop, pred, 1e-3 + 1000.0 * gt).astype(np.float32)
  eval_sums = jax.jit(task.eval_sums)
  got = [evaluate.depth_metrics(jax.device_get(eval_sums(
      np.log(p)[..., None], dict(label=gt[..., None], valid=valid))))
         for p in (pred, wild)]
  t, b, l, r = (int(0.40810811 * h), int(0.99189189 * h),
                int(0.03594771 * w), int(0.96405229 * w))
  ref = _numpy_depth_metrics(pred[:, t:b, l:r], gt[:, t:b, l:r],
                             valid[:, t:b, l:r], 1e-3, 80.0)
  for k in evaluate.DEPTH_METRICS:
    np.testing.assert_allclose(got[0][k], ref[k], rtol=1e-4, err_msg=k)
    assert got[1][k] == got[0][k], k  # outside the crop: no effect
  # Without the crop the wrong outside pixels do count.
  config.depth.eval_crop = ""
  uncropped = evaluate.depth_metrics(jax.device_get(
      tasks.get_task(config).eval_sums(np.log(wild)[..., None],
                                       dict(label=gt[..., None],
                                            valid=valid))))
  assert uncropped["abs_rel"] > 10 * got[0]["abs_rel"]


def test_flow_metrics_match_numpy():
  rng = np.random.default_rng(3)
  gt = rng.normal(0, 20, (2, 5, 6, 2)).astype(np.float32)
  pred = gt + rng.normal(0, 3, gt.shape).astype(np.float32)
  valid = rng.random((2, 5, 6)) > 0.3
  gt[0, 0, 0] = np.nan  # non-finite ground truth never counts
  valid[0, 0, 0] = True
  got = evaluate.flow_metrics(jax.device_get(
      evaluate.flow_metric_sums(pred, gt, valid)))
  ok = valid & np.all(np.isfinite(gt), -1)
  epe = np.linalg.norm(pred - gt, axis=-1)[ok]
  mag = np.linalg.norm(gt, axis=-1)[ok]
  np.testing.assert_allclose(got["epe"], epe.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      got["fl"], 100 * np.mean((epe > 3) & (epe > 0.05 * mag)), rtol=1e-5)
  assert 0 < got["fl"] < 100


# ----------------------------------------------------------- frames, data
def test_frames_round_trip():
  x = jnp.arange(2 * 3 * 4 * 6, dtype=jnp.float32).reshape(2, 3, 4, 6)
  f = tasks.to_frames(x, 2)
  assert f.shape == (4, 3, 4, 3)
  np.testing.assert_array_equal(f[1], x[1, ..., :3])
  np.testing.assert_array_equal(f[2], x[0, ..., 3:])
  np.testing.assert_array_equal(tasks.from_frames(f, 2), x)
  assert tasks.to_frames(x, 1) is x


def test_flow_decode_mirror_negates_u_and_resize_scales():
  rng = np.random.default_rng(4)
  image = rng.integers(0, 255, (8, 10, 3), np.uint8)
  flow = rng.normal(size=(8, 10, 2)).astype(np.float32)
  example = {"image": image, "image2": image[::-1].copy(), "label": flow,
             "id": "x"}
  out = dense.decode_dense_example(example, (8, 10), True, "flow")
  assert out["image"].shape == (8, 10, 6)
  np.testing.assert_allclose(out["label"][:, ::-1, 0], -flow[..., 0])
  np.testing.assert_allclose(out["label"][:, ::-1, 1], flow[..., 1])
  half = dense.decode_dense_example(example, (4, 5), False, "flow")
  # Nearest neighbour at pixel centres keeps the odd rows and columns.
  np.testing.assert_allclose(half["label"], flow[1::2, 1::2] / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="x: flow example without its second"):
    dense.decode_dense_example({"image": image, "id": "x"}, (8, 10), False,
                               "flow")
  with pytest.raises(ValueError, match="depth label of shape"):
    dense.decode_dense_example({"image": image, "label": flow, "id": "y"},
                               (8, 10), False, "depth")


def test_depth_decode_masks_holes_and_non_finite():
  image = np.zeros((4, 4, 3), np.uint8)
  depth = np.full((4, 4), 2.0, np.float32)
  depth[0, 0], depth[1, 1] = 0.0, np.inf
  out = dense.decode_dense_example({"image": image, "label": depth},
                                   (4, 4), False, "depth")
  assert out["valid"].sum() == 14 and not out["valid"][0, 0]
  assert not out["valid"][1, 1] and out["label"][1, 1, 0] == 0.0


def test_demo_pairs_have_exact_labels_and_differ_in_appearance():
  a = demo_depth.make_example("source", "train", 3)
  b = demo_depth.make_example("source", "train", 3)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["label"].shape == (64, 64, 1) and a["label"].min() > 1.0
  t = demo_depth.make_example("target", "train", 3)
  assert 0 < np.mean(t["label"] == 0) < 0.2  # Kinect-like holes
  # Same sampler, other look: the mean colours differ clearly.
  means = [np.mean([demo_depth.make_example(d, "train", i)["image"].mean(
      (0, 1)) for i in range(8)], 0) for d in demo_depth.DOMAINS]
  assert np.abs(means[0] - means[1]).max() > 15
  # Flow: frame 2 at p + flow(p) shows what frame 1 shows at p.
  f = demo_flow.make_example("source", "train", 5)
  assert f["image"].shape == f["image2"].shape == (64, 64, 3)
  assert np.abs(f["label"]).max() > 1.0
  err = demo_flow.warp_error(f)
  assert err < 0.5 * demo_flow.warp_error({**f, "label": 0 * f["label"]})


# ------------------------------------------------------- training system
# One compiled step per task (XLA:CPU compiles are the slow part): each demo
# runs through train_and_evaluate, and the flow run's pmapped step reports
# the regression consistency loss.
@pytest.mark.parametrize("module,metric", [(depth_configs, "target_abs_rel"),
                                           (flow_configs, "target_epe")])
def test_tiny_demo_runs_through_train_and_evaluate(module, metric,
                                                   dense_tfds_dir, tmp_path,
                                                   monkeypatch):
  config = _config(module, "tiny", dense_tfds_dir)
  # Images (one more compile) for flow only: its frames path is the new one.
  config.train.update(num_steps=2, checkpoint_every=2, eval_every=2,
                      image_every=2 if config.task == "flow" else 0)
  # Flow runs the stacked passes (frame pairs through the stacking).
  config.compute.batch_passes = config.task == "flow"
  logged = []
  mean_metrics = train.mean_metrics
  monkeypatch.setattr(train, "mean_metrics",
                      lambda h: logged.append(mean_metrics(h)) or logged[-1])
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and np.isfinite(result[metric])
  with open(tmp_path / train.RESULTS_FILE) as f:
    assert json.load(f)["task"] == config.task
  consistency = [m["train/loss_consistency"] for m in logged]
  assert consistency and all(np.isfinite(c) and c > 0 for c in consistency)
  if config.task == "flow":
    assert os.listdir(tmp_path / "images")


def test_regression_consistency_gradient_reaches_both_task_nets():
  # L_con(F_T(I_T), F_S(I_T->S)) as the train step forms it, alone.
  config = flow_configs.get_config("tiny")
  nets, task = models.build_networks(config), tasks.get_task(config)
  rng = np.random.default_rng(5)
  x_t, x_ts = (jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 6)), jnp.float32)
               for _ in range(2))
  # Jitted: one compile instead of one per eager op.
  variables = jax.jit(nets.task.init)(jax.random.PRNGKey(0), x_t)

  def consistency(params):
    apply = lambda x, d: nets.task.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, d,
        train=True, mutable=["batch_stats"])[0]["main"]
    return task.consistency(apply(x_t, "T"), apply(x_ts, "S"))

  loss, grads = jax.jit(jax.value_and_grad(consistency))(variables["params"])
  assert np.isfinite(loss) and loss > 0
  for net in ("net_S", "net_T"):
    norm = sum(float(jnp.sum(g ** 2))
               for g in jax.tree_util.tree_leaves(grads[net]))
    assert np.isfinite(norm) and norm > 0, net


@pytest.mark.parametrize("module", [depth_configs, flow_configs])
def test_summary_image_draws_depth_and_flow(module):
  config = module.get_config("tiny")
  frames, d = tasks.num_frames(config), config.data.out_channels
  rng = np.random.default_rng(6)
  images = dict(  # [devices, batch, ...] as the visualize step returns
      source=rng.uniform(-1, 1, (1, 2, 8, 8, 3 * frames)),
      target=rng.uniform(-1, 1, (1, 2, 8, 8, 3 * frames)),
      source_label=rng.uniform(1, 5, (1, 2, 8, 8, d)),
      source_valid=rng.random((1, 2, 8, 8)) > 0.5,
      pred_source=rng.uniform(1, 5, (1, 2, 8, 8, d)),
      pred_target=rng.uniform(1, 5, (1, 2, 8, 8, d)))
  grid = train.summary_image(images, config)
  assert grid.dtype == np.uint8 and grid.shape[-1] == 3
  # Rows: source, target per example; no target label: a black tile.
  assert grid.shape[0] > 4 * 8 and grid.shape[1] > 4 * 8


@pytest.mark.parametrize("module", [demo_depth, demo_flow])
def test_demo_build_names_its_own_domains(module, tmp_path):
  # 'fog' is a segmentation-only domain: the depth and flow builders refuse
  # it by name, listing the domains they have.
  with pytest.raises(ValueError, match=r"'fog'.*\('source', 'target'\)"):
    module.build("fog", str(tmp_path))
