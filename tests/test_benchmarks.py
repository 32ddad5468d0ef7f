"""benchmarks/ on tiny sizes: each runs and prints valid JSON."""
import argparse
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "32", "--batch", "1", "--ngf", "4", "--gen-blocks",
        "1", "--task-net", "resnet10", "--width", "8", "--disc-ndf", "4",
        "--num-classes", "3"]


def _run(*flags):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "step_time.py"),
       *TINY, *flags], capture_output=True, text=True, check=True,
      timeout=900, cwd=ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_step_time_runs_and_prints_json(tmp_path):
  r = _run("--steps", "1", "--warmup", "0", "--batch-passes",
           "--time-lock", str(tmp_path / "lock"))
  assert r["median_step_s"] > 0 and len(r["step_seconds"]) == 1
  assert r["batch_passes"]
  assert r["cpu_user_s_per_step"] + r["cpu_sys_s_per_step"] > 0
  assert r["cores_busy"] > 0
  assert r["peak_bytes_compiled"] > 0 and r["params_total"] > 0
  assert r["source_size"] == r["target_size"] == [32, 32]


def test_time_lock_excludes_other_processes(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import step_time  # pylint: disable=g-import-not-at-top
  lock = str(tmp_path / "lock")
  try_lock = ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
              "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
  held = lambda: subprocess.run([sys.executable, "-c", try_lock, lock],
                                capture_output=True).returncode != 0
  with step_time.exclusive(lock):
    assert held()
  assert not held()


def test_step_time_compile_only_with_memory_options():
  r = _run("--compile-only", "--share-encoder", "--share-last", "2",
           "--remat", "--remat-networks", "--source-size", "32x48")
  assert "median_step_s" not in r
  assert r["source_size"] == [32, 48] and r["share_last"] == 2
  assert r["remat"] and r["remat_networks"]
  assert r["memory_analysis"]["temp_bytes"] > 0


def test_input_pipeline_benchmark_prints_json(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "input_pipeline.py"),
       "--images", "2", "--steps", "2", "--workers", "1,2", "--downscale",
       "16", "--random-scale", "0.5,1.5", "--step-preset", "",
       "--root", str(tmp_path)],
      capture_output=True, text=True, check=True, timeout=600, cwd=ROOT)
  lines = [json.loads(l) for l in out.stdout.splitlines()
           if l.startswith("{")]
  assert [l["kind"] for l in lines] == ["setup", "alone", "alone"]
  assert [l["workers"] for l in lines[1:]] == [1, 2]
  for l in lines[1:]:
    assert l["pairs_per_s"] > 0 and l["source_size"] == [45, 80]
    assert l["random_scale"] == [0.5, 1.5]


def test_small_conv_threads_prints_json():
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks",
                                    "small_conv_threads.py"), "--calls", "3"],
      capture_output=True, text=True, check=True, timeout=300, cwd=ROOT)
  lines = [json.loads(l) for l in out.stdout.splitlines()
           if l.startswith("{")]
  assert [l["batch"] for l in lines if l["framework"] == "jax"] == [1, 2]
  assert all(l["ms"] > 0 and l["cores"] >= 1 for l in lines)


def test_torch_flops_counts_convolutions_linear_in_batch():
  pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import step_time  # pylint: disable=g-import-not-at-top
  import torch_flops  # pylint: disable=g-import-not-at-top
  if not os.path.exists(step_time.TORCH_REFERENCE):
    pytest.skip(f"no PyTorch reference at {step_time.TORCH_REFERENCE}")
  count = lambda batch: torch_flops.count_step_flops(argparse.Namespace(
      image_size=32, batch=batch, ngf=4, gen_blocks=1, task_net="resnet18",
      num_classes=3))
  one, two = count(1), count(2)
  assert one["flops_per_step"] > 0
  assert set(one["flops_by_op"]) == {"aten.convolution",
                                     "aten.convolution_backward"}
  # Every counted op is a convolution: its FLOPs scale with the batch.
  assert two["flops_per_step"] == 2 * one["flops_per_step"]


def test_interleaved_torch_child_runs_one_reference_step_per_request():
  pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import step_time  # pylint: disable=g-import-not-at-top
  if not os.path.exists(step_time.TORCH_REFERENCE):
    pytest.skip(f"no PyTorch reference at {step_time.TORCH_REFERENCE}")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks",
                                    "interleaved_vs_torch.py"),
       "--torch-child", "--image-size", "32", "--batch", "1", "--ngf", "4",
       "--gen-blocks", "1", "--task-net", "resnet18", "--num-classes", "3"],
      input="step\nstep\nstop\nstep\n", capture_output=True, text=True,
      check=True, timeout=300, cwd=ROOT).stdout.splitlines()
  # Two steps, then the child stops at the first other line.
  assert out[0] == "ready" and len(out) == 3, out
  for line in out[1:]:
    r = json.loads(line)
    assert r["wall"] > 0 and r["finite"]
    # The reference's step is all compute: it used some CPU time.
    assert r["user"] + r["sys"] > 0


def test_swap_translators_splices_two_checkpoints(tmp_path):
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from configs import seg
  from crdoco_jax import checkpointing, train
  config = seg.get_config("tiny")
  for seed in (0, 1):
    config.unlock()
    config.seed = seed
    state, manager = train.initial_state(config, str(tmp_path / f"s{seed}"))
    checkpointing.save(manager, 7, state)
  step = lambda seed: str(tmp_path / f"s{seed}" / "checkpoints" / "7")
  run = tmp_path / "run"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "swap_translators.py"),
       f"--translators={step(0)}", f"--rest={step(1)}",
       f"--out={run / 'checkpoints' / '7'}"],
      capture_output=True, text=True, check=True, timeout=300, cwd=ROOT)
  spliced, spliced_manager = train.initial_state(config, str(run))
  fresh = {s: train.initial_state(config, str(tmp_path / f"s{s}"))[0]
           for s in (0, 1)}
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert spliced_manager.latest_step() == 7
  assert same(spliced.translator, fresh[0].translator)
  assert same(spliced.d_img, fresh[0].d_img)
  assert same(spliced.task, fresh[1].task)
  assert same(spliced.d_feat, fresh[1].d_feat)
  assert not same(spliced.task, fresh[0].task)  # the seeds differ
  # Existing output folders are never overwritten.
  again = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "swap_translators.py"),
       f"--translators={step(0)}", f"--rest={step(1)}",
       f"--out={run / 'checkpoints' / '7'}"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert again.returncode != 0 and "exists" in again.stderr


def test_copy_bound_stand_in_changes_only_the_gemm_gradients_inside_it():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import copy_bound  # pylint: disable=g-import-not-at-top
  from crdoco_jax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
  k = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  def grads(conv):
    loss = lambda x_, k_: (conv(x_, k_, (1, 1), ((1, 1), (1, 1)),
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
                           ** 2).sum()
    return jax.grad(loss, argnums=(0, 1))(x, k)
  def close(a, b):
    return all(np.allclose(u, v, rtol=1e-4, atol=1e-4) for u, v in zip(a, b))
  exact = grads(jax.lax.conv_general_dilated)
  assert close(grads(layers.conv_general_dilated_gemm), exact)
  with copy_bound.stand_in():
    assert not close(grads(layers.conv_general_dilated_gemm), exact)
  assert close(grads(layers.conv_general_dilated_gemm), exact)


def test_translation_confusion_class_colour_sums_skip_ignored_pixels():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import translation_confusion  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 5, 4, 3))
  labels = rng.integers(0, 3, (2, 5, 4))
  labels[0, 0, :] = 255
  sums = translation_confusion.class_colour_sums(images, labels, 3, 255)
  for k in range(3):
    pixels = images[labels == k]
    np.testing.assert_allclose(sums[k, :3], pixels.sum(0), rtol=1e-6)
    assert sums[k, 3] == len(pixels)
  assert sums[:, 3].sum() == labels.size - 4


def test_translation_colours_helpers():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import translation_colours  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  flat = np.full((1, 6, 5, 3), 0.25, np.float32)
  np.testing.assert_allclose(translation_colours.box_mean(flat, 3), flat)
  assert translation_colours.high_frequency(flat) < 1e-7
  noisy = flat + rng.normal(scale=0.1, size=flat.shape).astype(np.float32)
  assert translation_colours.high_frequency(noisy) > 0.03
  # An interior 3x3 mean, by hand.
  x = rng.normal(size=(1, 5, 5, 1)).astype(np.float32)
  np.testing.assert_allclose(translation_colours.box_mean(x, 3)[0, 2, 2, 0],
                             x[0, 1:4, 1:4, 0].mean(), rtol=1e-5)
  labels = rng.integers(0, 3, (2, 4, 4))
  labels[1, 0, :] = 255
  error = rng.uniform(size=labels.shape)
  got = translation_colours.per_class_l1(error, labels, 3, 255)
  for k in range(3):
    np.testing.assert_allclose(got[k], [error[labels == k].sum(),
                                        (labels == k).sum()], rtol=1e-6)


def test_translation_colours_bands():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import translation_colours as tc  # pylint: disable=g-import-not-at-top
  rows = tc.band_rows(10, 3)
  assert rows[0][0] == 0 and rows[-1][1] == 10
  assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 10, 4, 3)).astype(np.float32)
  target = np.array([[0.5, 0.1], [-0.2, 0.3], [0.0, 0.05]])
  matched = tc.match_bands(x, rows, target)
  # Each image's bands now have the target's mean and contrast, so the
  # dataset profile is the target.
  np.testing.assert_allclose(tc.band_profile(matched, rows), target,
                             atol=1e-5)
  labels = rng.integers(0, 3, (3, 10, 4))
  labels[0, 0] = 255
  pred = labels.copy()
  pred[:, -2:] = (pred[:, -2:] + 1) % 3  # last two rows all wrong
  hits = tc.band_accuracy(pred, labels, rows, 255)
  assert hits[0, 1] == (labels[:, :rows[0][1]] != 255).sum()
  assert hits[0, 0] == hits[0, 1]
  r0 = rows[-1][0]
  assert hits[-1, 0] == (labels[:, r0:-2] != 255).sum()


def test_translation_colours_spatial_trend():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import translation_colours as tc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, (2, 8, 10))
  labels[0, 0, 0] = 255
  colours = rng.uniform(-1, 1, (3, 3))
  cols = np.linspace(-0.5, 0.5, 10)[None, None, :, None]
  rows = np.linspace(-0.5, 0.5, 8)[None, :, None, None]
  # Flat class colours give no slope, whatever the layout...
  flat = colours[labels % 3].astype(np.float32)  # 255: some colour
  np.testing.assert_allclose(tc.spatial_trend(flat, labels, 3, 255), 0,
                             atol=1e-6)
  # ...a light ramp over them is found, channel by channel...
  slopes = np.array([[[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]],
                     [[-0.6, 0.0, 0.2], [0.1, 0.1, 0.1]]])
  lit = (flat + cols * slopes[:, None, None, 0] + rows *
         slopes[:, None, None, 1]).astype(np.float32)
  got = tc.spatial_trend(lit, labels, 3, 255)
  np.testing.assert_allclose(got, slopes, atol=1e-5)
  # ...and removing it gives back the flat colours.
  np.testing.assert_allclose(tc.remove_trend(lit, got), flat, atol=1e-5)
  only_rows = tc.remove_trend(lit, got, (0,))
  np.testing.assert_allclose(tc.spatial_trend(only_rows, labels, 3, 255)[:, 1],
                             slopes[:, 1], atol=1e-5)


def test_translation_colours_segments():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import translation_colours as tc  # pylint: disable=g-import-not-at-top
  colours = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
  labels = np.zeros((2, 8, 8), np.int64)
  labels[:, :, 4:] = 1
  labels[1, :, :1] = 2  # class 2: 8 pixels, under MIN_SEGMENT
  images = colours[labels].astype(np.float32)
  images[1][labels[1] == 1] = [0.1, 0.9, 0.1]  # nearer class 2's colour
  got = tc.segment_colours(images, labels, 3, 255, colours)
  assert 8 < tc.MIN_SEGMENT <= 24
  np.testing.assert_array_equal(got[:, 0], [2, 2, 0])  # segments
  np.testing.assert_array_equal(got[:, 1], [2, 1, 0])  # nearest own class
  np.testing.assert_allclose(got[1, 2], 0.9 + 0.1 + 0.9)


def test_profile_step_source_groups():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import profile_step  # pylint: disable=g-import-not-at-top
  hlo = "\n".join([
      'ENTRY %main {',
      '  %a.1 = f32[2] fusion(%p), kind=kLoop, metadata={op_name='
      '"jit(step)/transpose(jvp(G))/Block_3/Conv_0/slice"}',
      '  %a.2 = f32[2] fusion(%p), kind=kLoop, metadata={op_name='
      '"jit(step)/transpose(jvp(G))/Block_12/Conv_0/slice"}',
      '  %d.1 = f32[2] dot(%p, %q), metadata={op_name='
      '"jit(step)/jvp(G)/Block_3/Conv_0/dot_general"}',
      '  %c.1 = f32[2] copy(%p)',
      '}'])
  kinds = {"a.1": "elementwise fusion", "a.2": "elementwise fusion",
           "d.1": "dot/custom-call", "c.1": "copy/transpose"}
  groups = profile_step.source_groups(
      hlo, {"a.1": 1.5, "a.2": 2.0, "d.1": 9.0, "c.1": 0.25}, kinds)
  assert groups == {"transpose(jvp(G))/Block_i/Conv_i/slice": 3.5,
                    "(no op_name)": 0.25}


def test_ab_step_parses_layers_constants():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import ab_step  # pylint: disable=g-import-not-at-top
  assert ab_step._constants("KERNEL_GRAD_ROWS=False,TAP_MATMUL_MIN=64") == {
      "KERNEL_GRAD_ROWS": False, "TAP_MATMUL_MIN": 64}
  with pytest.raises(SystemExit, match="no 'KERNEL_ROWS'"):
    ab_step._constants("KERNEL_ROWS=False")


def test_translator_stages_compare_identical_work(capsys):
  """Each stage's JAX and PyTorch modules hold the same parameters (as the
  full generators do), and the report sums the stages, the residual block
  counted --gen-blocks times."""
  pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import step_time  # pylint: disable=g-import-not-at-top
  import translator_stages  # pylint: disable=g-import-not-at-top
  from crdoco_jax.models import layers  # pylint: disable=g-import-not-at-top
  flags = ["--image-size", "16", "--batch", "1", "--ngf", "4",
           "--gen-blocks", "2", "--subpixel", "--conv", "gemm"]
  stages = translator_stages.stages(step_time.parse_args(flags))
  assert [s[-1] for s in stages] == [1, 1, 1, 2, 1, 1, 1]
  for name, module, net, shape, _ in stages:
    params = module.init(jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
    assert layers.count_params(params) == sum(
        p.numel() for p in net.parameters()), name
  translator_stages.main(flags)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 8 and lines[-1].startswith("sum")
  ms = lambda line, lib: float(line.split(f"{lib} ")[1].split(" ms")[0])
  for lib in ("JAX", "PyTorch"):
    total = sum((2 if line.startswith("residual") else 1) * ms(line, lib)
                for line in lines[:-1])
    assert abs(ms(lines[-1], lib) - total) < 0.05, lib  # 2-decimal rounding
