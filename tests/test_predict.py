"""Predict / translate / export modes on a tiny checkpoint (4 CPU devices)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import seg
from crdoco_jax import checkpointing, export, predict, visualize
from crdoco_jax import state as state_lib
from crdoco_jax.models import build_networks, layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"a.png": (40, 48), "b.jpg": (40, 48), "city/c.png": (40, 48),
         "city/d.png": (24, 20), "e.png": (40, 48), "f.png": (40, 48)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """``(config, workdir, state)``: a tiny config's state saved at step 4."""
  config = seg.get_config("tiny")
  workdir = str(tmp_path_factory.mktemp("work"))
  state = state_lib.create_train_state(config, build_networks(config),
                                       jax.random.PRNGKey(3))
  checkpointing.write_config(workdir, config)
  manager = checkpointing.make_manager(workdir, 1)
  checkpointing.save(manager, 4, state.replace(step=np.int32(4)))
  return config, workdir, jax.device_get(state)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A folder of images of two sizes (one in a subfolder, one JPEG)."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.RandomState(0)
  for name, (h, w) in SIZES.items():
    os.makedirs(os.path.dirname(root / name), exist_ok=True)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(root / name)
  (root / "notes.txt").write_text("not an image")
  return str(root)


def _f_t_labels(config, state, image):
  """F_T's labels of one image at its own size, computed directly."""
  x = predict.to_model_input(image, config.target.image_size)[None]
  logits = build_networks(config).task.apply(
      {"params": state.task.params, "batch_stats": state.task.batch_stats},
      x, "T")["main"]
  logits = layers.resize_bilinear_align_corners(logits, image.shape[:2])
  return np.asarray(logits[0]).argmax(-1)


def test_predict_writes_labels_and_overlays(trained, images, tmp_path):
  config, workdir, state = trained
  out = str(tmp_path / "out")
  # 6 images, batches of 4 devices x 4: one padded batch per image size.
  written = predict.predict(config, workdir, images, out)
  names = sorted(os.path.splitext(n)[0] + ".png" for n in SIZES)
  assert sorted(os.path.relpath(p, f"{out}/labels") for p in written) == names
  palette = visualize.palette_for(config.data.num_classes,
                                  config.data.class_names)
  for name, size in SIZES.items():
    png = os.path.splitext(name)[0] + ".png"
    label = np.asarray(Image.open(f"{out}/labels/{png}"))
    over = np.asarray(Image.open(f"{out}/overlays/{png}"))
    assert label.shape == size and over.shape == size + (3,)
    image = predict.load_image(os.path.join(images, name))
    np.testing.assert_array_equal(label, _f_t_labels(config, state, image))
    np.testing.assert_array_equal(
        over, predict.overlay(image, visualize.colorize(label, palette)))


def test_cityscapes_ids():
  np.testing.assert_array_equal(
      predict.to_cityscapes_ids(np.array([0, 13, 18, 255]), 19),
      [7, 26, 33, 0])
  # 16-class protocol id 15 is train id 18 (bicycle), label id 33.
  np.testing.assert_array_equal(predict.to_cityscapes_ids(np.array([15]), 16),
                                [33])
  with pytest.raises(ValueError, match="data.num_classes=8"):
    predict.to_cityscapes_ids(np.array([0]), 8)


@pytest.mark.parametrize("direction", ["S2T", "T2S"])
def test_translate(trained, images, tmp_path, direction):
  config, workdir, state = trained
  written = predict.translate(config, workdir, f"{images}/*.png",
                              str(tmp_path), direction)
  assert sorted(os.path.basename(p) for p in written) == [
      "a.png", "e.png", "f.png"]
  image = predict.load_image(os.path.join(images, "e.png"))
  size = (config.source if direction == "S2T" else config.target).image_size
  expected = build_networks(config).translator.apply(
      {"params": state.translator.params},
      predict.to_model_input(image, size)[None], direction)
  # Compiled (pmap) and eager float results may round to neighbouring
  # grey levels.
  diff = (np.asarray(Image.open(tmp_path / "e.png")).astype(int)
          - visualize.to_uint8_image(expected)[0])
  assert diff.shape == tuple(size) + (3,) and np.abs(diff).max() <= 1


def test_export_reloads_and_predicts_identically(trained, tmp_path):
  config, workdir, state = trained
  path = export.export(config, workdir, str(tmp_path / "f_t"))
  apply_fn, variables = export.load(path)
  assert not [k for k in variables["params"] if k.endswith("_S")]
  assert export.load_config(path).task_net.arch == config.task_net.arch
  x = np.random.RandomState(1).uniform(-1, 1, (2, 32, 32, 3)).astype(
      np.float32)
  full = build_networks(config).task.apply(
      {"params": state.task.params, "batch_stats": state.task.batch_stats},
      x, "T")["main"]
  np.testing.assert_allclose(apply_fn(variables, x), full, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(apply_fn(variables, x), -1),
                                np.argmax(full, -1))


def test_launch_predict_mode_and_errors(trained, images, tmp_path):
  config, workdir, _ = trained
  out = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/seg.py:tiny",
       f"--workdir={workdir}", "--mode=predict",
       f"--input={images}/city/*.png", f"--output={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "Wrote 2 label maps" in out.stdout
  assert sorted(os.listdir(tmp_path / "labels")) == ["c.png", "d.png"]
  with pytest.raises(FileNotFoundError, match="No checkpoints under"):
    predict.predict(config, str(tmp_path / "nothing"), images,
                    str(tmp_path / "x"))
  with pytest.raises(FileNotFoundError, match="No images"):
    predict.find_images(str(tmp_path / "nothing"))
  for sub in ("x", "y"):
    os.makedirs(tmp_path / sub)
    Image.new("RGB", (8, 8)).save(tmp_path / sub / "a.png")
  with pytest.raises(ValueError, match=r"several images named \['a.png'\]"):
    predict.find_images(f"{tmp_path}/*/a.png")
