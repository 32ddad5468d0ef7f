"""Readers of the public depth / flow datasets, on tiny fake layouts."""
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from crdoco_jax.data import dense_datasets, depth_io, flow_io
from crdoco_jax.data.input_pipeline import open_source


def _image(path, h=6, w=8, value=100):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _domain(name, root, config=""):
  return ml_collections.ConfigDict(dict(name=name, dir=str(root),
                                        builder_config=config))


def test_kitti_flow_and_missing_second_frame(tmp_path):
  train = tmp_path / "training"
  for pair in ("000000", "000001"):
    _image(f"{train}/image_2/{pair}_10.png")
    _image(f"{train}/image_2/{pair}_11.png")
    flow_io.write_kitti_png(f"{train}/flow_occ/{pair}_10.png",
                            np.full((6, 8, 2), 1.5),
                            np.eye(6, 8, dtype=bool))
  source = open_source(_domain("kitti_flow", tmp_path), "val", "", None,
                       "flow")
  example = source[1]
  assert example["id"] == "000001" and example["image2"].shape == (6, 8, 3)
  assert example["valid"].sum() == 6 and example["label"][0, 0, 0] == 1.5
  os.remove(f"{train}/image_2/000001_11.png")
  with pytest.raises(ValueError, match="000001_10.png.*second frame.*"
                     "000001_11.png is missing"):
    open_source(_domain("kitti_flow", tmp_path), "val", "", None, "flow")
  with pytest.raises(ValueError, match="flow dataset"):
    open_source(_domain("kitti_flow", tmp_path), "val", "", None, "depth")


def test_sintel_with_invalid_masks_and_flying_chairs(tmp_path):
  train = tmp_path / "sintel" / "training"
  for n in (1, 2, 3):
    _image(f"{train}/final/alley_1/frame_{n:04d}.png")
  for n in (1, 2):
    flow_io.write_flo(f"{train}/flow/alley_1/frame_{n:04d}.flo",
                      np.full((6, 8, 2), n, np.float32))
  mask = np.zeros((6, 8), np.uint8)
  mask[0] = 255
  os.makedirs(f"{train}/invalid/alley_1")
  Image.fromarray(mask).save(f"{train}/invalid/alley_1/frame_0002.png")
  source = open_source(_domain("sintel", tmp_path / "sintel", "final"),
                       "train", "", None, "flow")
  assert len(source) == 2
  assert "valid" not in source[0] and source[0]["label"][0, 0, 0] == 1.0
  assert source[1]["valid"].sum() == 40  # row 0 is invalid

  data = tmp_path / "chairs" / "data"
  for i in (1, 2, 3):
    for k in (1, 2):
      os.makedirs(data, exist_ok=True)
      Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(
          f"{data}/{i:05d}_img{k}.ppm")
    flow_io.write_flo(f"{data}/{i:05d}_flow.flo", np.zeros((6, 8, 2)))
  np.savetxt(tmp_path / "chairs" / "FlyingChairs_train_val.txt", [1, 2, 1],
             fmt="%d")
  chairs = lambda split: open_source(
      _domain("flying_chairs", tmp_path / "chairs"), split, "", None, "flow")
  assert len(chairs("train")) == 2 and chairs("val")[0]["id"] == "00002"


def test_depth_readers_vkitti2_kitti_and_nyu(tmp_path):
  root = tmp_path / "vkitti"
  frames = "Scene01/clone/frames"
  _image(f"{root}/vkitti_2.0.3_rgb/{frames}/rgb/Camera_0/rgb_00000.jpg")
  depth_cm = np.full((6, 8), 250.0)
  depth_cm[0] = 65535.0  # sky: 655.35 m
  depth_io.write_depth_png(
      f"{root}/vkitti_2.0.3_depth/{frames}/depth/Camera_0/depth_00000.png",
      depth_cm / 100, scale=100)
  example = open_source(_domain("vkitti2", root), "train", "", None,
                        "depth")[0]
  np.testing.assert_allclose(example["label"][1:], 2.5)
  assert not example["valid"][0].any() and example["valid"][1:].all()

  root = tmp_path / "kitti"
  drive = "2011_09_26_drive_0001_sync"
  gt = (f"{root}/data_depth_annotated/train/{drive}/proj_depth/groundtruth/"
        "image_02/0000000005.png")
  depth_io.write_depth_png(gt, np.full((6, 8), 12.5), scale=256)
  with pytest.raises(ValueError, match="raw image .*0000000005.png"):
    open_source(_domain("kitti_depth", root), "train", "", None, "depth")
  _image(f"{root}/2011_09_26/{drive}/image_02/data/0000000005.png")
  example = open_source(_domain("kitti_depth", root), "train", "", None,
                        "depth")[0]
  np.testing.assert_allclose(example["label"], 12.5)

  import h5py  # pylint: disable=g-import-not-at-top
  import scipy.io  # pylint: disable=g-import-not-at-top
  root = tmp_path / "nyu"
  os.makedirs(root)
  with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
    # MATLAB's column-major layout: [N, C, W, H] and [N, W, H].
    f["images"] = np.full((3, 3, 640, 480), 7, np.uint8)
    depths = np.zeros((3, 640, 480), np.float32)
    depths[2] = 3.0
    f["depths"] = depths
  scipy.io.savemat(root / "splits.mat", {"trainNdxs": [[1], [2]],
                                         "testNdxs": [[3]]})
  source = open_source(_domain("nyu_depth_v2", root), "test", "", None,
                       "depth")
  example = source[0]
  assert len(source) == 1 and example["image"].shape == (480, 640, 3)
  assert example["label"].shape == (480, 640) and example["id"] == "nyu_0002"
  assert example["valid"].sum() == 456 * 608  # the Eigen crop only
  assert len(dense_datasets.NYUv2Source(str(root), "train")) == 2
