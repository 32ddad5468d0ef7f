"""Tests for crdoco_jax.evaluate."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crdoco_jax import evaluate

C = 5


def _reference_cm(preds, labels, num_classes, ignore_label=255):
  """Independent pixel-by-pixel NumPy loop."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  for p, l in zip(np.ravel(preds), np.ravel(labels)):
    if l == ignore_label or not 0 <= l < num_classes:
      continue
    if not 0 <= p < num_classes:
      continue
    cm[l, p] += 1
  return cm


def _random_batch(seed, shape=(4, 2, 6, 7)):
  rng = np.random.default_rng(seed)
  preds = rng.integers(0, C, size=shape).astype(np.int32)
  labels = rng.integers(0, C, size=shape).astype(np.int32)
  # Sprinkle ignore pixels and out-of-range labels (both sides of the range).
  r = rng.random(shape)
  labels = np.where(r < 0.15, 255, labels)
  labels = np.where((r >= 0.15) & (r < 0.2), C + 2, labels)
  labels = np.where((r >= 0.2) & (r < 0.25), -1, labels)
  return preds, labels


def test_confusion_matrix_matches_numpy_loop():
  preds, labels = _random_batch(0)
  cm = evaluate.confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), C)
  assert cm.shape == (C, C) and cm.dtype == jnp.int32
  ref = _reference_cm(preds, labels, C)
  np.testing.assert_array_equal(np.asarray(cm), ref)
  # Every pixel with a valid label is counted exactly once.
  n_valid = np.sum((labels >= 0) & (labels < C))
  assert int(cm.sum()) == n_valid


def test_confusion_matrix_custom_ignore_and_any_shape():
  preds, labels = _random_batch(1, shape=(37,))
  labels = np.where(labels == 255, 3, labels)  # 3 is now the ignore label
  cm = evaluate.confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), C,
                                 ignore_label=3)
  np.testing.assert_array_equal(np.asarray(cm),
                                _reference_cm(preds, labels, C, 3))
  assert int(cm[3].sum()) == 0


def test_confusion_matrix_out_of_range_preds_excluded():
  preds = jnp.array([0, 1, 7, -1])
  labels = jnp.array([0, 1, 1, 0])
  cm = evaluate.confusion_matrix(preds, labels, 2)
  np.testing.assert_array_equal(np.asarray(cm), [[1, 0], [0, 1]])


def test_confusion_matrix_shape_mismatch():
  with pytest.raises(ValueError, match="shape"):
    evaluate.confusion_matrix(jnp.zeros((2, 3), jnp.int32),
                              jnp.zeros((3, 2), jnp.int32), C)


def test_confusion_matrix_under_jit():
  preds, labels = _random_batch(2)
  fn = jax.jit(evaluate.confusion_matrix, static_argnums=(2,))
  cm = fn(jnp.asarray(preds), jnp.asarray(labels), C)
  np.testing.assert_array_equal(np.asarray(cm),
                                _reference_cm(preds, labels, C))


def test_confusion_matrix_under_pmap_psum():
  n_dev = jax.local_device_count()
  assert n_dev >= 4, "tests/conftest.py should give 4 fake CPU devices"
  preds, labels = _random_batch(3, shape=(4, 2, 6, 7))  # leading axis = devices

  @functools.partial(jax.pmap, axis_name="batch")
  def per_device(p, l):
    return jax.lax.psum(evaluate.confusion_matrix(p, l, C), "batch")

  out = np.asarray(per_device(jnp.asarray(preds), jnp.asarray(labels)))
  single = np.asarray(evaluate.confusion_matrix(jnp.asarray(preds),
                                                jnp.asarray(labels), C))
  assert out.shape == (4, C, C)
  for d in range(4):  # psum leaves the same total on every device
    np.testing.assert_array_equal(out[d], single)
  np.testing.assert_array_equal(single, _reference_cm(preds, labels, C))


def test_iou_hand_made():
  # rows = GT, cols = pred
  cm = np.array([[3, 1, 0],
                 [2, 4, 0],
                 [0, 0, 0]])
  ious = evaluate.iou_from_confusion(cm)
  assert ious.dtype == np.float64
  # class 0: TP 3, FP 2, FN 1 -> 3/6; class 1: TP 4, FP 1, FN 2 -> 4/7.
  np.testing.assert_allclose(ious[:2], [3 / 6, 4 / 7])
  assert np.isnan(ious[2])  # absent from GT and predictions
  assert evaluate.mean_iou(cm) == pytest.approx((3 / 6 + 4 / 7) / 2)
  assert evaluate.pixel_accuracy(cm) == pytest.approx(7 / 10)


def test_iou_predicted_but_absent_from_gt_is_zero():
  cm = np.array([[2, 1],
                 [0, 0]])
  ious = evaluate.iou_from_confusion(cm)
  np.testing.assert_allclose(ious, [2 / 3, 0.0])
  assert evaluate.mean_iou(cm) == pytest.approx(1 / 3)  # 0 counts, NaN not


def test_empty_confusion_matrix_is_nan_without_warnings():
  cm = np.zeros((3, 3), np.int64)
  with np.errstate(all="raise"):
    assert np.all(np.isnan(evaluate.iou_from_confusion(cm)))
  assert np.isnan(evaluate.mean_iou(cm))
  assert np.isnan(evaluate.pixel_accuracy(cm))


def test_iou_rejects_non_square():
  with pytest.raises(ValueError, match="square"):
    evaluate.iou_from_confusion(np.zeros((2, 3)))


def test_end_to_end_perfect_prediction():
  _, labels = _random_batch(4)
  preds = np.where((labels >= 0) & (labels < C), labels, 0)
  cm = evaluate.confusion_matrix(jnp.asarray(preds), jnp.asarray(labels), C)
  assert evaluate.mean_iou(np.asarray(cm)) == pytest.approx(1.0)
  assert evaluate.pixel_accuracy(np.asarray(cm)) == pytest.approx(1.0)


def test_format_iou_table():
  ious = np.array([0.5, np.nan, 0.12345])
  table = evaluate.format_iou_table(ious, ["road", "sidewalk", "traffic sign"])
  for name in ("road", "sidewalk", "traffic sign", "mIoU"):
    assert name in table
  assert "50.0" in table and "12.3" in table and "n/a" in table
  assert "31.2" in table  # nanmean(50, 12.345) = 31.17
  lines = table.splitlines()
  assert len(lines) == 2 + 3 + 1  # header, rule, classes, mIoU
  assert len({len(line) for line in lines}) == 1  # columns are aligned


def test_format_iou_table_length_mismatch():
  with pytest.raises(ValueError, match="class names"):
    evaluate.format_iou_table(np.zeros(3), ["a", "b"])
