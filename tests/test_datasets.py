"""Tests for the GTA5 / SYNTHIA / Cityscapes builders, the label maps, the
generic folder domain and the dataset checker, on tiny fixture files written
in the real layouts and encodings."""
import os
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from crdoco_jax.data import check
from crdoco_jax.data import cityscapes
from crdoco_jax.data import folder
from crdoco_jax.data import gta5
from crdoco_jax.data import input_pipeline
from crdoco_jax.data import labels
from crdoco_jax.data import synthia
from crdoco_jax.visualize import CITYSCAPES_CLASSES

H, W = 8, 12
# Independent copies of REFERENCE.md 4.2 / 4.3 (dataset id -> protocol id;
# every id not listed -> 255).
CITYSCAPES_TO_19 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                    21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                    28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_TO_16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                    21: 8, 23: 9, 24: 10, 25: 11, 26: 12, 28: 13, 32: 14,
                    33: 15}
CITYSCAPES_TO_13 = {7: 0, 8: 1, 11: 2, 19: 3, 20: 4, 21: 5, 23: 6, 24: 7,
                    25: 8, 26: 9, 28: 10, 32: 11, 33: 12}
SYNTHIA_TO_19 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8,
                 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16,
                 12: 17, 11: 18}
SYNTHIA_TO_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8,
                 1: 9, 10: 10, 17: 11, 8: 12, 19: 13, 12: 14, 11: 15}
SYNTHIA_TO_13 = {3: 0, 4: 1, 2: 2, 15: 3, 9: 4, 6: 5, 1: 6, 10: 7, 17: 8,
                 8: 9, 19: 10, 12: 11, 11: 12}
CITYSCAPES_MAPS = {19: CITYSCAPES_TO_19, 16: CITYSCAPES_TO_16,
                   13: CITYSCAPES_TO_13}
SYNTHIA_MAPS = {19: SYNTHIA_TO_19, 16: SYNTHIA_TO_16, 13: SYNTHIA_TO_13}
NAMES_16 = ("road", "sidewalk", "building", "wall", "fence", "pole",
            "traffic light", "traffic sign", "vegetation", "sky", "person",
            "rider", "car", "bus", "motorcycle", "bicycle")
NAMES_13 = ("road", "sidewalk", "building", "traffic light", "traffic sign",
            "vegetation", "sky", "person", "rider", "car", "bus",
            "motorcycle", "bicycle")


def _expected(ids: np.ndarray, mapping) -> np.ndarray:
  return np.vectorize(lambda v: mapping.get(int(v), 255))(ids).astype(
      np.uint8)


# ------------------------------------------------------------ file writers
def _save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path)


def _save_png16(path, array):
  """``uint16 [H, W, 3]`` -> 16-bit RGB PNG, as SYNTHIA's labels."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_png(tf.constant(array, tf.uint16)))


def _save_palette(path, ids):
  """Palette-index PNG, GTA5's label encoding (index = id)."""
  image = Image.fromarray(ids, "P")
  image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _image(rng, size=(H, W)):
  return rng.integers(0, 256, size + (3,), dtype=np.uint8)


def _ids(rng, valid, size=(H, W)):
  """Every valid id at least once (when it fits), then random ones."""
  flat = np.resize(np.array(valid), size[0] * size[1])
  return rng.permutation(flat).reshape(size).astype(np.uint8)


def write_gta5(root, n=3):
  """GTA5 layout; label ids 0..33 and 255, one palette PNG, one RGBA image.
  Returns ``{stem: (image uint8 [H, W, 3], ids [H, W])}``."""
  rng = np.random.default_rng(1)
  out = {}
  for i in range(n):
    stem = f"{i + 1:05d}"
    image, ids = _image(rng), _ids(rng, labels.CITYSCAPES_VALID_IDS)
    if i == 1:  # RGBA files are decoded and re-encoded, RGB ones copied.
      _save(f"{root}/images/{stem}.png", np.dstack([image, image[..., :1]]))
    else:
      _save(f"{root}/images/{stem}.png", image)
    if i == 0:
      _save_palette(f"{root}/labels/{stem}.png", ids)
    else:
      _save(f"{root}/labels/{stem}.png", ids)
    out[stem] = (image, ids)
  return out


def write_synthia(root, n=2):
  """SYNTHIA layout: 16-bit RGB labels, ids 0..22 in R, junk in G and B."""
  rng = np.random.default_rng(2)
  out = {}
  for i in range(n):
    stem = f"{i:07d}"
    image, ids = _image(rng), _ids(rng, range(23))
    junk = rng.integers(0, 65536, (H, W, 2))
    _save(f"{root}/RGB/{stem}.png", image)
    _save_png16(f"{root}/GT/LABELS/{stem}.png",
                np.dstack([ids.astype(np.uint16), junk]))
    out[stem] = (image, ids)
  return out


CITYSCAPES_FILES = {"train": ("aachen_000000_000019", "aachen_000001_000019",
                              "bochum_000000_000313"),
                    "val": ("frankfurt_000000_000294",)}


def write_cityscapes(root):
  """Extracted leftImg8bit / gtFine trees, with the gtFine files we skip."""
  rng = np.random.default_rng(3)
  out = {}
  for split, names in CITYSCAPES_FILES.items():
    for name in names:
      city = name.split("_")[0]
      image, ids = _image(rng), _ids(rng, labels.CITYSCAPES_VALID_IDS)
      _save(f"{root}/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png",
            image)
      base = f"{root}/gtFine/{split}/{city}/{name}_gtFine"
      _save(f"{base}_labelIds.png", ids)
      _save(f"{base}_color.png", _image(rng))
      _save(f"{base}_instanceIds.png", ids.astype(np.uint16) * 1000)
      with open(f"{base}_polygons.json", "w") as f:
        f.write("{}")
      out[name] = (image, ids)
  return out


def _build(builder_cls, config, manual_dir, data_dir):
  builder = builder_cls(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _domain(name, directory="", builder_config=""):
  return ml_collections.ConfigDict(dict(
      name=name, builder_config=builder_config, dir=str(directory),
      train_split="train", eval_split="", image_size=(H, W)))


# --------------------------------------------------------------- label maps
@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_cityscapes_id_maps(num_classes):
  mapping = CITYSCAPES_MAPS[num_classes]
  for i in list(range(34)) + [255]:
    got = labels.cityscapes_id_to_train_id(np.array([i], np.uint8),
                                           num_classes)
    assert got.tolist() == [mapping.get(i, 255)], i
  # -1 (license plate) in a signed array is ignored like its uint8 form 255.
  assert labels.cityscapes_id_to_train_id(np.array([-1, 7])).tolist() == [
      255, 0]
  assert labels.cityscapes_id_to_train_id(np.arange(34)).dtype == np.uint8
  with pytest.raises(ValueError, match="outside"):
    labels.cityscapes_id_to_train_id(np.array([256]))


def test_cityscapes_table_and_inverse():
  table = labels.CITYSCAPES_ID_TO_TRAIN_ID
  assert table.shape == (256,) and table.dtype == np.uint8
  assert not table.flags.writeable
  np.testing.assert_array_equal(table, _expected(np.arange(256),
                                                 CITYSCAPES_TO_19))
  ids = labels.train_id_to_cityscapes_id(np.arange(19))
  assert ids.tolist() == sorted(CITYSCAPES_TO_19)
  np.testing.assert_array_equal(labels.cityscapes_id_to_train_id(ids),
                                np.arange(19))
  assert labels.train_id_to_cityscapes_id(np.array([255])).tolist() == [0]


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_synthia_id_maps(num_classes):
  mapping = SYNTHIA_MAPS[num_classes]
  for i in range(23):
    got = labels.synthia_id_to_train_id(np.array([i], np.uint16),
                                        num_classes)
    assert got.tolist() == [mapping.get(i, 255)], i
  assert labels.SYNTHIA_ID_TO_PROTOCOL[num_classes][255] == 255


def test_protocol_names_and_train_id_maps():
  assert labels.CLASS_NAMES[19] == CITYSCAPES_CLASSES
  assert labels.CLASS_NAMES[16] == NAMES_16
  assert labels.CLASS_NAMES[13] == NAMES_13
  for n in (16, 13):
    # Train id -> protocol id keeps each class by name.
    got = labels.train_id_to_protocol(np.arange(19), n)
    for train_id, p in enumerate(got):
      name = CITYSCAPES_CLASSES[train_id]
      assert p == (labels.CLASS_NAMES[n].index(name)
                   if name in labels.CLASS_NAMES[n] else 255)
  with pytest.raises(ValueError, match="protocol 7"):
    labels.synthia_id_to_train_id(np.zeros(2, np.uint8), 7)


# ----------------------------------------------------------- tfds builders
@pytest.fixture(scope="module")
def gta5_built(tmp_path_factory):
  """GTA5 prepared through ``open_source`` with ``dir`` set."""
  root = tmp_path_factory.mktemp("gta5")
  files = write_gta5(root / "manual")
  data_dir = str(root / "tfds")
  source = input_pipeline.open_source(_domain(gta5.DATASET_NAME,
                                              root / "manual"),
                                      "train", data_dir)
  return files, source, data_dir


def test_gta5_builder(gta5_built):
  files, source, data_dir = gta5_built
  assert len(source) == 3
  for i, (stem, (image, ids)) in enumerate(sorted(files.items())):
    record = source[i]
    assert record["id"] == stem.encode()
    np.testing.assert_array_equal(record["image"], image)
    np.testing.assert_array_equal(record["label"][..., 0],
                                  _expected(ids, CITYSCAPES_TO_19))
  # Prepared: later opens need no dir, and read by registered name.
  again = input_pipeline.open_source(_domain(gta5.DATASET_NAME), "train",
                                     data_dir)
  assert len(again) == 3
  assert len(tfds.data_source(gta5.DATASET_NAME, split="train",
                              data_dir=data_dir)) == 3


def test_synthia_builder(tmp_path):
  files = write_synthia(tmp_path / "manual")
  builder = _build(synthia.CrdocoSynthia, "classes16", tmp_path / "manual",
                   tmp_path / "tfds")
  assert [c.name for c in builder.BUILDER_CONFIGS] == [
      "classes19", "classes16", "classes13"]
  source = builder.as_data_source(split="train")
  assert len(source) == 2
  for i, (stem, (image, ids)) in enumerate(sorted(files.items())):
    assert source[i]["id"] == stem.encode()
    np.testing.assert_array_equal(source[i]["image"], image)
    np.testing.assert_array_equal(source[i]["label"][..., 0],
                                  _expected(ids, SYNTHIA_TO_16))
  # The other protocols, without tfds.
  for n in (19, 13):
    got = dict(synthia.generate_examples(str(tmp_path / "manual"), n))
    for stem, (_, ids) in files.items():
      np.testing.assert_array_equal(got[stem]["label"][..., 0],
                                    _expected(ids, SYNTHIA_MAPS[n]))


def test_synthia_reads_16_and_8_bit_labels(tmp_path):
  ids = np.arange(H * W).reshape(H, W) % 23
  _save_png16(str(tmp_path / "a.png"),
              np.dstack([ids, ids * 1000, ids + 7]).astype(np.uint16))
  _save(str(tmp_path / "b.png"), np.dstack([ids] * 3).astype(np.uint8))
  for name in ("a.png", "b.png"):
    np.testing.assert_array_equal(synthia.read_label(str(tmp_path / name)),
                                  ids)


def test_cityscapes_builder(tmp_path):
  files = write_cityscapes(tmp_path / "manual")
  builder = _build(cityscapes.CrdocoCityscapes, None, tmp_path / "manual",
                   tmp_path / "tfds")
  assert builder.builder_config.name == "classes19"  # the default
  for split, names in (("train", CITYSCAPES_FILES["train"]),
                       ("validation", CITYSCAPES_FILES["val"])):
    source = builder.as_data_source(split=split)
    assert len(source) == len(names)
    for i, name in enumerate(names):  # city, then sequence, then frame
      image, ids = files[name]
      assert source[i]["id"] == name.encode()
      np.testing.assert_array_equal(source[i]["image"], image)
      np.testing.assert_array_equal(source[i]["label"][..., 0],
                                    _expected(ids, CITYSCAPES_TO_19))
  for n in (16, 13):
    got = dict(cityscapes.generate_examples(str(tmp_path / "manual"),
                                            "train", n))
    for name in CITYSCAPES_FILES["train"]:
      np.testing.assert_array_equal(got[name]["label"][..., 0],
                                    _expected(files[name][1],
                                              CITYSCAPES_MAPS[n]))


# ---------------------------------------------------------------- bad input
def _gta5_errors(root):
  return list(gta5.generate_examples(str(root)))


def _synthia_errors(root):
  return list(synthia.generate_examples(str(root), 16))


def _cityscapes_errors(root):
  return list(cityscapes.generate_examples(str(root), "train", 19))


DATASETS = {
    "gta5": (write_gta5, _gta5_errors, "images/00002.png",
             "labels/00002.png", 34),
    "synthia": (write_synthia, _synthia_errors, "RGB/0000001.png",
                "GT/LABELS/0000001.png", 23),
    "cityscapes": (
        write_cityscapes, _cityscapes_errors,
        "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
        "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png", 34),
}


def _rewrite_label(dataset, path, ids):
  if dataset == "synthia":
    _save_png16(path, np.dstack([ids] * 3).astype(np.uint16))
  else:
    _save(path, ids.astype(np.uint8))


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("fault", ["missing_folder", "image_without_label",
                                   "label_without_image", "truncated_image",
                                   "truncated_label", "bad_label_value",
                                   "size_mismatch"])
def test_bad_input_raises_naming_the_file(tmp_path, dataset, fault):
  write, generate, image_rel, label_rel, bad_id = DATASETS[dataset]
  write(tmp_path)
  image, label = str(tmp_path / image_rel), str(tmp_path / label_rel)
  named, error = label, ValueError
  if fault == "missing_folder":
    named = str(tmp_path / image_rel.split("/")[0])  # the images folder
    os.rename(named, named + "_moved")
    error = FileNotFoundError
  elif fault == "image_without_label":
    os.remove(label)
    named = image
  elif fault == "label_without_image":
    os.remove(image)
  elif fault == "truncated_image":
    _truncate(image)
    named = image
  elif fault == "truncated_label":
    _truncate(label)
  elif fault == "bad_label_value":
    _rewrite_label(dataset, label, np.full((H, W), bad_id))
  elif fault == "size_mismatch":
    _rewrite_label(dataset, label, np.zeros((H, W + 1)))
  with pytest.raises(error) as info:
    generate(tmp_path)
  assert named in str(info.value)
  if fault == "bad_label_value":
    assert f"[{bad_id}]" in str(info.value)


def test_bad_input_fails_prepare_and_leaves_nothing(tmp_path):
  write_gta5(tmp_path / "manual")
  label = tmp_path / "manual" / "labels" / "00003.png"
  _save(str(label), np.full((H, W), 40, np.uint8))
  domain = _domain(gta5.DATASET_NAME, tmp_path / "manual")
  with pytest.raises(ValueError, match=f"{label}: label values \\[40\\]"):
    input_pipeline.open_source(domain, "train", str(tmp_path / "tfds"))
  # No half-prepared dataset: without dir it is reported as missing.
  domain.dir = ""
  with pytest.raises(input_pipeline.DatasetNotFoundError):
    input_pipeline.open_source(domain, "train", str(tmp_path / "tfds"))


def test_missing_dataset_errors(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(input_pipeline.DatasetNotFoundError) as info:
    input_pipeline.open_source(
        _domain(cityscapes.DATASET_NAME, builder_config="classes16"),
        "train", data_dir)
  message = str(info.value)
  assert os.path.join(data_dir, "crdoco_cityscapes", "classes16") in message
  assert "gtFine_labelIds.png" in message  # the layout to provide
  assert input_pipeline.DEMO_COMMAND in message
  with pytest.raises(input_pipeline.DatasetNotFoundError,
                     match="nowhere"):
    input_pipeline.open_source(
        _domain(synthia.DATASET_NAME, tmp_path / "nowhere"), "train",
        data_dir)
  with pytest.raises(input_pipeline.DatasetNotFoundError, match="gta6"):
    input_pipeline.open_source(_domain("gta6"), "train", data_dir)


# ------------------------------------------------------------ folder domain
def write_folder(root, classes=("a", "b", "c"), unlabelled_split="val"):
  """train: 2 labelled images (png, jpg); ``unlabelled_split``: 1 image."""
  rng = np.random.default_rng(4)
  out = {}
  for stem, ext in (("x", "png"), ("y", "jpg")):
    image = _image(rng)
    label = np.resize(np.array([0, 1, 2, 255], np.uint8), (H, W))
    _save(f"{root}/train/images/{stem}.{ext}", image)
    _save(f"{root}/train/labels/{stem}.png", label)
    out[stem] = (image, label)
  _save(f"{root}/{unlabelled_split}/images/z.jpeg", _image(rng))
  if classes:
    with open(f"{root}/classes.txt", "w") as f:
      f.write("\n".join(classes) + "\n")
  return out


def test_folder_source(tmp_path):
  files = write_folder(tmp_path)
  source = folder.FolderSource(str(tmp_path), "train")
  assert len(source) == 2 and source.has_labels
  assert source.class_names == ("a", "b", "c") and source.num_classes == 3
  for i, stem in enumerate(("x", "y")):
    example = source[i]
    assert example["id"] == stem
    assert example["image"].shape == (H, W, 3)
    assert example["image"].dtype == example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["label"], files[stem][1])
  np.testing.assert_array_equal(source[0]["image"], files["x"][0])
  for split in ("val", "validation"):  # no labels folder: unlabelled
    unlabelled = folder.FolderSource(str(tmp_path), split)
    assert len(unlabelled) == 1 and not unlabelled.has_labels
    assert set(unlabelled[0]) == {"image", "id"}


def test_folder_source_without_classes_file(tmp_path):
  write_folder(tmp_path, classes=None)
  assert folder.FolderSource(str(tmp_path), "train").class_names is None
  # The class count then comes from the caller and bounds the labels.
  with pytest.raises(ValueError, match="y.png: label values \\[2\\]"):
    folder.FolderSource(str(tmp_path), "train", num_classes=2)[1]


def test_folder_source_errors(tmp_path):
  write_folder(tmp_path)
  root = str(tmp_path)
  with pytest.raises(ValueError, match="3 classes, the config 19"):
    folder.FolderSource(root, "train", num_classes=19)
  with pytest.raises(FileNotFoundError, match="test"):
    folder.FolderSource(root, "test")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    folder.FolderSource(str(tmp_path / "nowhere"), "train")
  # Out-of-range label: lazily, naming the file.
  bad = tmp_path / "train" / "labels" / "x.png"
  _save(str(bad), np.full((H, W), 3, np.uint8))
  source = folder.FolderSource(root, "train")
  with pytest.raises(ValueError, match=f"{bad}: label values \\[3\\]"):
    source[0]
  # A labels folder needs a label for every image.
  os.remove(bad)
  with pytest.raises(ValueError, match="x.png"):
    folder.FolderSource(root, "train")
  with open(tmp_path / "classes.txt", "w") as f:
    f.write("a\n\nb\n")
  with pytest.raises(ValueError, match="classes.txt"):
    folder.FolderSource(root, "val")


# ----------------------------------------------------- pipeline and checker
def test_open_source_feeds_decode_example(tmp_path, gta5_built):
  write_folder(tmp_path / "folder")
  sources = {
      "folder": input_pipeline.open_source(
          _domain("folder", tmp_path / "folder"), "train", str(tmp_path),
          num_classes=3),
      "gta5": gta5_built[1],
  }
  for name, source in sources.items():
    out = input_pipeline.decode_example(source[0], (4, 6), flip=True,
                                        ignore_label=255)
    assert out["image"].shape == (4, 6, 3), name
    assert out["image"].dtype == np.float32
    assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["label"].shape == (4, 6) and out["label"].dtype == np.int32
    assert set(np.unique(out["label"])) <= set(range(19)) | {255}
  unlabelled = input_pipeline.open_source(
      _domain("folder", tmp_path / "folder"), "validation", str(tmp_path))
  out = input_pipeline.decode_example(unlabelled[0], (H, W), False, 255)
  assert np.all(out["label"] == 255)


def test_check_domain(tmp_path, gta5_built):
  write_folder(tmp_path)
  stats = check.check_domain(_domain("folder", tmp_path), "train", "", 3)
  # Each label cycles 0, 1, 2, 255 over its 96 pixels.
  assert stats == {"images": 2, "labelled": 2, "ignored_fraction": 0.25,
                   "histogram": [48, 48, 48]}
  assert check.check_domain(_domain("folder", tmp_path), "val", "",
                            3)["labelled"] == 0
  files, _, data_dir = gta5_built
  stats = check.check_domain(_domain(gta5.DATASET_NAME), "train", data_dir,
                             19)
  train_ids = np.concatenate([_expected(ids, CITYSCAPES_TO_19).ravel()
                              for _, ids in files.values()])
  assert stats["images"] == stats["labelled"] == 3
  assert stats["histogram"] == np.bincount(train_ids, minlength=256)[
      :19].tolist()
  assert stats["ignored_fraction"] == pytest.approx(np.mean(train_ids == 255))
  # A class count below the stored ids names the offending example.
  with pytest.raises(ValueError, match="crdoco_gta5 train example 0"):
    check.check_domain(_domain(gta5.DATASET_NAME), "train", data_dir, 10)
  bad = tmp_path / "train" / "labels" / "y.png"
  _save(str(bad), np.full((H, W), 7, np.uint8))
  with pytest.raises(ValueError, match=str(bad)):
    check.check_domain(_domain("folder", tmp_path), "train", "", 3)


def test_check_cli(tfds_dir):
  root = os.path.join(os.path.dirname(__file__), "..")
  result = subprocess.run(
      [sys.executable, "-m", "crdoco_jax.data.check",
       "--config=configs/seg.py:tiny",
       f"--config.data.tfds_data_dir={tfds_dir}"],
      cwd=root, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "source crdoco_demo_seg/source train: 16 images" in result.stdout
  assert "target crdoco_demo_seg/target val: 8 images" in result.stdout
  assert "All checked splits are readable and valid." in result.stdout
