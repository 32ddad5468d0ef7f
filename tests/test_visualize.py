"""Tests for crdoco_jax.visualize."""
import numpy as np
import pytest
from PIL import Image

from crdoco_jax import visualize


def test_cityscapes_palette_values():
  p = visualize.CITYSCAPES_PALETTE
  assert p.shape == (256, 3) and p.dtype == np.uint8
  assert len(visualize.CITYSCAPES_CLASSES) == 19
  names = visualize.CITYSCAPES_CLASSES
  assert tuple(p[names.index("road")]) == (128, 64, 128)
  assert tuple(p[names.index("sky")]) == (70, 130, 180)
  assert tuple(p[names.index("car")]) == (0, 0, 142)
  assert tuple(p[names.index("bicycle")]) == (119, 11, 32)
  assert tuple(p[18]) == (119, 11, 32)
  assert not p[19:].any()  # unused ids and 255 are black
  assert len({tuple(c) for c in p[:19]}) == 19


def test_palette_for_cityscapes_names_and_default():
  np.testing.assert_array_equal(
      visualize.palette_for(19, visualize.CITYSCAPES_CLASSES),
      visualize.CITYSCAPES_PALETTE)
  np.testing.assert_array_equal(visualize.palette_for(19),
                                visualize.CITYSCAPES_PALETTE)
  # A subset in another order (SYNTHIA-style) keeps the Cityscapes colours.
  p = visualize.palette_for(3, ["Car", "traffic_light", "road"])
  assert tuple(p[0]) == (0, 0, 142)
  assert tuple(p[1]) == (250, 170, 30)
  assert tuple(p[2]) == (128, 64, 128)
  assert not p[3:].any()


def test_palette_for_other_classes_is_voc_and_distinct():
  p = visualize.palette_for(21, [f"c{i}" for i in range(21)])
  assert p.shape == (256, 3) and p.dtype == np.uint8
  assert tuple(p[1]) == (128, 0, 0)  # classic VOC colours
  assert tuple(p[2]) == (0, 128, 0)
  assert tuple(p[15]) == (192, 128, 128)
  assert len({tuple(c) for c in p[:21]}) == 21
  assert not p[21:].any() and tuple(p[255]) == (0, 0, 0)
  np.testing.assert_array_equal(p, visualize.palette_for(21, None))
  with pytest.raises(ValueError):
    visualize.palette_for(3, ["a", "b"])


def test_colorize():
  palette = visualize.CITYSCAPES_PALETTE
  labels = np.array([[[0, 13], [255, 10]],
                     [[-1, 300], [1, 18]]], np.int32)  # [N=2, H=2, W=2]
  out = visualize.colorize(labels, palette)
  assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
  assert tuple(out[0, 0, 0]) == (128, 64, 128)
  assert tuple(out[0, 0, 1]) == (0, 0, 142)
  assert tuple(out[0, 1, 0]) == (0, 0, 0)  # ignore
  assert tuple(out[0, 1, 1]) == (70, 130, 180)
  assert not out[1, 0].any()  # out of palette range -> black
  assert tuple(out[1, 1, 1]) == (119, 11, 32)
  with pytest.raises(TypeError):
    visualize.colorize(labels.astype(np.float32), palette)


def test_to_uint8_image():
  x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, np.nan], np.float32)
  np.testing.assert_array_equal(visualize.to_uint8_image(x),
                                [0, 0, 128, 255, 255, 0])
  assert visualize.to_uint8_image(np.zeros((2, 4, 4, 3))).dtype == np.uint8


def test_image_grid_size_and_placement():
  h, w, pad = 4, 5, 2
  imgs = [np.full((h, w, 3), v, np.uint8) for v in (10, 20, 30, 40, 50)]
  grid = visualize.image_grid([imgs[:3], imgs[3:]], pad=pad)
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * h + 3 * pad, 3 * w + 4 * pad, 3)
  assert (grid[pad:pad + h, pad:pad + w] == 10).all()
  y, x = pad + (h + pad), pad + (w + pad)  # row 1, column 1
  assert (grid[y:y + h, x:x + w] == 50).all()
  assert (grid[:pad] == 255).all()  # border padding
  x2 = pad + 2 * (w + pad)  # missing tile in the short second row
  assert (grid[y:y + h, x2:x2 + w] == 255).all()
  assert visualize.image_grid([[imgs[0]]], pad=0).shape == (h, w, 3)


def test_image_grid_mismatched_sizes():
  a = np.zeros((4, 5, 3), np.uint8)
  b = np.zeros((4, 6, 3), np.uint8)
  with pytest.raises(ValueError, match=r"row 1, column 0.*\(4, 6, 3\)"):
    visualize.image_grid([[a, a], [b]])
  with pytest.raises(TypeError, match="uint8"):
    visualize.image_grid([[a, a.astype(np.float32)]])
  with pytest.raises(ValueError):
    visualize.image_grid([])


def test_save_png_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
  path = tmp_path / "a" / "b" / "grid.png"  # parents do not exist yet
  visualize.save_png(str(path), image)
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(im), image)
  with pytest.raises(TypeError):
    visualize.save_png(str(path), image.astype(np.float32))
