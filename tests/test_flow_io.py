"""Flow and depth files: round trips, folder domains and bad input."""
import os
import struct

import numpy as np
import pytest
from PIL import Image

from crdoco_jax.data import dense_sources, depth_io, flow_io


def _flow(rng, h=7, w=9, scale=30.0):
  return (rng.normal(0, scale, (h, w, 2))).astype(np.float32)


def test_flo_round_trip_is_exact(tmp_path):
  flow = _flow(np.random.default_rng(0))
  path = str(tmp_path / "a" / "x.flo")
  flow_io.write_flo(path, flow)
  assert os.path.getsize(path) == 12 + 8 * flow.size // 2
  np.testing.assert_array_equal(flow_io.read_flo(path), flow)
  back, valid = flow_io.read_flow(path)
  np.testing.assert_array_equal(back, flow)
  assert valid.all()


def test_kitti_png_round_trip_at_one_64th_pixel(tmp_path):
  rng = np.random.default_rng(1)
  flow = np.round(_flow(rng) * 64) / 64
  valid = rng.random(flow.shape[:2]) > 0.3
  path = str(tmp_path / "x.png")
  flow_io.write_kitti_png(path, flow, valid)
  with open(path, "rb") as f:
    assert f.read(26)[24:26] == bytes([16, 2])  # 16-bit RGB
  back, back_valid = flow_io.read_flow(path)
  np.testing.assert_array_equal(back_valid, valid)
  np.testing.assert_array_equal(back, np.where(valid[..., None], flow, 0))
  # Unquantised flow comes back within half a step.
  fine = _flow(rng)
  flow_io.write_kitti_png(path, fine)
  np.testing.assert_allclose(flow_io.read_kitti_png(path)[0], fine,
                             atol=0.5 / 64 + 1e-6)
  with pytest.raises(ValueError, match="beyond KITTI"):
    flow_io.write_kitti_png(path, fine * 100)


def test_bad_flow_files_name_the_file(tmp_path):
  flow = _flow(np.random.default_rng(2))
  good = str(tmp_path / "good.flo")
  flow_io.write_flo(good, flow)
  data = open(good, "rb").read()
  cases = {
      "tag.flo": (b"XXXX" + data[4:], "tag"),
      "short.flo": (data[:-8], "truncated"),
      "size.flo": (data[:4] + struct.pack("<ii", -3, 7) + data[12:],
                   "implausible"),
  }
  nan = flow.copy()
  nan[1, 2, 0] = np.nan
  cases["nan.flo"] = (data[:12] + nan.astype("<f4").tobytes(), "NaN")
  for name, (content, message) in cases.items():
    path = str(tmp_path / name)
    with open(path, "wb") as f:
      f.write(content)
    with pytest.raises(ValueError, match=message) as e:
      flow_io.read_flo(path)
    assert path in str(e.value)
  rgb8 = str(tmp_path / "rgb8.png")
  Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(rgb8)
  with pytest.raises(ValueError, match="16-bit RGB PNG.*8-bit RGB") as e:
    flow_io.read_kitti_png(rgb8)
  assert rgb8 in str(e.value)
  with pytest.raises(ValueError, match="refusing"):
    flow_io.write_flo(str(tmp_path / "n.flo"), nan)


def test_depth_png_round_trip_and_bad_files(tmp_path):
  depth = np.array([[0.0, 1.5, 10.25], [80.0, 0.004, 255.99]], np.float32)
  path = str(tmp_path / "d.png")
  depth_io.write_depth_png(path, depth, scale=256)
  np.testing.assert_allclose(depth_io.read_depth_png(path, 256),
                             np.round(depth * 256) / 256)
  with pytest.raises(ValueError, match="outside"):
    depth_io.write_depth_png(path, depth, scale=1000)
  rgb = str(tmp_path / "rgb.png")
  Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(rgb)
  grey8 = str(tmp_path / "grey8.png")
  Image.fromarray(np.zeros((2, 3), np.uint8)).save(grey8)
  jpg = str(tmp_path / "d.jpg")
  Image.fromarray(np.zeros((2, 3), np.uint8)).save(jpg)
  for bad, message in ((rgb, "8-bit PNG of colour type 2"),
                       (grey8, "8-bit PNG of colour type 0"),
                       (jpg, "not a PNG")):
    with pytest.raises(ValueError, match=message) as e:
      depth_io.read_depth_png(bad)
    assert bad in str(e.value)


def _image(path, h=6, w=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)


def test_folder_domains_read_and_reject_bad_layouts(tmp_path):
  root = str(tmp_path / "depth")
  _image(f"{root}/train/images/a.png")
  depth_io.write_depth_png(f"{root}/train/depth/a.png",
                           np.full((6, 8), 2.0), scale=100)
  source = dense_sources.DenseFolderSource(root, "train", "depth", 100)
  assert len(source) == 1
  np.testing.assert_allclose(source[0]["label"], 2.0)
  # Ground truth of another size: an error naming that file.
  depth_io.write_depth_png(f"{root}/train/depth/a.png", np.ones((5, 8)))
  with pytest.raises(ValueError, match="a.png: size 8x5 differs"):
    dense_sources.DenseFolderSource(root, "train", "depth")[0]

  root = str(tmp_path / "flow")
  for stem in ("a", "b"):
    _image(f"{root}/train/frame1/{stem}.png")
  _image(f"{root}/train/frame2/a.png")
  flow_io.write_flo(f"{root}/train/flow/a.flo", np.ones((6, 8, 2)))
  flow_io.write_kitti_png(f"{root}/train/flow/b.png", np.ones((6, 8, 2)))
  with pytest.raises(ValueError, match="no second frame.*frame1/b.png"):
    dense_sources.DenseFolderSource(root, "train", "flow")
  _image(f"{root}/train/frame2/b.png", h=5)
  source = dense_sources.DenseFolderSource(root, "train", "flow")
  example = source[0]
  assert example["image2"].shape == (6, 8, 3) and example["valid"].all()
  with pytest.raises(ValueError, match="frame2/b.png: size 8x5 differs"):
    source[1]
