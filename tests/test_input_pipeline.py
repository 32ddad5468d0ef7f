"""Input pipeline: random scale/crop augmentation (deterministic, resumable)
and evaluation at the label resolution."""
import jax
import numpy as np
import pytest

from crdoco_jax import evaluate, models, parallel, train
from crdoco_jax import state as state_lib
from crdoco_jax import train_step as step_lib
from crdoco_jax.data import input_pipeline


def _record(h=8, w=12):
  """A labelled record whose label is its column index (mod 19)."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  label = np.tile((np.arange(w) % 19).astype(np.uint8), (h, 1))
  return {"image": image, "label": label}


def test_crop_pads_with_ignore_and_places_the_window():
  rec = input_pipeline.decode_example(_record(), (8, 12), False, 255)
  small = input_pipeline.crop(rec, (10, 16), top=0.0, left=0.0,
                              ignore_label=255)
  assert small["image"].shape == (10, 16, 3) and small["label"].shape == (10,
                                                                          16)
  np.testing.assert_array_equal(small["label"][:8, :12], rec["label"])
  assert np.all(small["label"][8:] == 255) and np.all(small["label"][:, 12:]
                                                      == 255)
  assert np.all(small["image"][8:] == 0)
  # The window's offset follows top/left: left=0.99 takes the last columns.
  right = input_pipeline.crop(rec, (8, 5), top=0.0, left=0.99,
                              ignore_label=255)
  np.testing.assert_array_equal(right["label"], rec["label"][:, -5:])
  left = input_pipeline.crop(rec, (8, 5), top=0.0, left=0.0,
                             ignore_label=255)
  np.testing.assert_array_equal(left["label"], rec["label"][:, :5])


def test_augment_example_scales_then_crops():
  record = _record()
  aug = input_pipeline.Augmentation(flip=True, scale=2.0, top=0.5, left=0.3)
  out = input_pipeline.augment_example(record, (8, 12), aug, 255)
  full = input_pipeline.decode_example(record, (16, 24), True, 255)
  y0, x0 = int(0.5 * 9), int(0.3 * 13)
  assert out["label"].shape == (8, 12)
  np.testing.assert_array_equal(out["label"],
                                full["label"][y0:y0 + 8, x0:x0 + 12])
  np.testing.assert_array_equal(out["image"],
                                full["image"][y0:y0 + 8, x0:x0 + 12])
  # Scale 1 is the plain resize (no crop offsets drawn).
  plain = input_pipeline.augment_example(
      record, (8, 12), input_pipeline.Augmentation(), 255)
  np.testing.assert_array_equal(
      plain["label"], input_pipeline.decode_example(record, (8, 12), False,
                                                    255)["label"])


def test_sample_augmentation_is_pure_and_validated(tiny_config):
  data = tiny_config.data
  data.random_scale = (0.5, 1.5)
  a = [input_pipeline.sample_augmentation(1, 0, q, data) for q in range(50)]
  b = [input_pipeline.sample_augmentation(1, 0, q, data) for q in range(50)]
  assert a == b
  scales = np.array([x.scale for x in a])
  assert scales.min() >= 0.5 and scales.max() <= 1.5 and scales.std() > 0.1
  assert 0 < np.mean([x.flip for x in a]) < 1
  data.hflip = False
  assert not any(input_pipeline.sample_augmentation(1, 0, q, data).flip
                 for q in range(20))
  data.random_scale = (1.5, 0.5)
  with pytest.raises(ValueError, match="random_scale"):
    input_pipeline.sample_augmentation(1, 0, 0, data)


def test_augmented_pipeline_is_resumable(tiny_config):
  tiny_config.data.random_scale = (0.5, 2.0)
  a = input_pipeline.TrainBatches(tiny_config)
  it = input_pipeline.TrainBatches(tiny_config).iterate(start_step=3)
  for k in range(3, 7):
    x, y = a.batch(k), next(it)
    assert x["source_image"].shape == (4, 1, 32, 32, 3)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  # Scaling down pads with ignored pixels somewhere in the first steps.
  labels = np.concatenate([a.batch(k)["source_label"] for k in range(6)])
  assert np.any(labels == tiny_config.data.ignore_label)
  tiny_config.data.random_scale = (0.0, 1.0)
  with pytest.raises(ValueError, match="random_scale"):
    input_pipeline.TrainBatches(tiny_config)


def test_upsample_to_label_resolution():
  # Two classes split at the middle column: the upsampled argmax keeps the
  # boundary in the middle of the larger map.
  logits = np.zeros((1, 2, 4, 2), np.float32)
  logits[..., :2, 0] = 1.0
  logits[..., 2:, 1] = 1.0
  up = evaluate.upsample_to(logits, (4, 8))
  assert up.shape == (1, 4, 8, 2)
  pred = np.asarray(np.argmax(up, -1))
  np.testing.assert_array_equal(pred, np.tile([0] * 4 + [1] * 4, (1, 4, 1)))
  assert evaluate.upsample_to(logits, (2, 4)) is logits


def test_evaluation_at_label_resolution(tiny_config):
  config = tiny_config
  config.target.eval_label_size = (64, 48)
  batches = list(input_pipeline.eval_batches(config))
  b = batches[0]
  assert b["image"].shape[2:] == (32, 32, 3)
  assert b["label"].shape[2:] == (64, 48)
  nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
  host = state_lib.create_train_state(config, models.build_networks(config),
                                      jax.random.PRNGKey(0))
  p_eval = jax.pmap(step_lib.make_eval_step(config, nets),
                    axis_name=parallel.AXIS)
  result = train.evaluate_target(p_eval, parallel.replicate(host), config)
  labelled = sum(int(np.sum(x["label"] != config.data.ignore_label))
                 for x in batches)
  assert result["pixels"] == labelled > 0
  assert labelled > sum(x["label"].shape[0] * x["label"].shape[1] * 32 * 32
                        for x in batches)
  # Regression tasks keep their own resolution: a clear error otherwise.
  with pytest.raises(ValueError, match="eval_label_size"):
    input_pipeline.decode_example(_record(), (4, 6), False, 255, "depth",
                                  label_size=(8, 12))


def test_out_of_range_labels_fail_naming_the_example(tiny_config):
  """Fewer classes configured than the data has: an error naming the
  dataset, split, example and value, in training and in evaluation."""
  tiny_config.data.num_classes = 3
  with pytest.raises(ValueError, match=r"crdoco_demo_seg/source \(tfds\), "
                     r"split 'train', example \d+ has label \d+, outside "
                     r"0...2.*data.num_classes"):
    input_pipeline.TrainBatches(tiny_config).batch(0)
  with pytest.raises(ValueError, match=r"split 'val', example \d+ has label"):
    next(input_pipeline.eval_batches(tiny_config))


def test_ideal_translation_batches_render_the_target_scenes(tiny_config):
  from crdoco_jax.data import demo_seg  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.translator.ideal_t2s = True
  batches = input_pipeline.TrainBatches(config, num_local_devices=2)
  batch = batches.batch(3)
  # The target labels feed the rendering but are not handed to the step.
  assert "target_label" not in batch
  ideal = batch["target_as_source"]
  assert ideal.shape == batch["target_image"].shape
  np.testing.assert_array_equal(ideal, batches.batch(3)["target_as_source"])
  # The scenes of the target images (the oracle keeps their labels), drawn
  # in the source domain's style.
  config.method = "oracle"
  labels = input_pipeline.TrainBatches(
      config, num_local_devices=2).batch(3)["target_label"]
  want = demo_seg.restyle(labels.reshape((-1,) + labels.shape[2:]),
                          config.source.builder_config,
                          (config.seed, 3, 0, 11))
  np.testing.assert_array_equal(ideal, want.reshape(ideal.shape))
  assert not np.allclose(ideal, batch["target_image"], atol=0.1)


def test_ideal_translation_needs_the_demo_domains(tiny_config):
  config = tiny_config
  config.translator.ideal_t2s = True
  config.target.name = "folder"
  config.target.dir = "/nonexistent"
  with pytest.raises(ValueError, match="translator.ideal_t2s=True"):
    input_pipeline.TrainBatches(config)
