"""Losses against independent NumPy computations, plus gradient checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from crdoco_jax import losses

RNG = np.random.default_rng(0)


def np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def random_logits(shape, scale=3.0):
  return (RNG.standard_normal(shape) * scale).astype(np.float32)


def random_labels(shape, c, ignore_frac=0.2):
  y = RNG.integers(0, c, shape)
  y[RNG.random(shape) < ignore_frac] = 255
  return y.astype(np.int32)


# ------------------------------------------------------------- cross-entropy
def np_cross_entropy(logits, labels, ignore=255):
  lp = np_log_softmax(logits)
  valid = labels != ignore
  nll = -np.take_along_axis(lp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  return nll[valid].mean() if valid.any() else 0.0


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_cross_entropy_matches_numpy(scale):
  logits = random_logits((2, 5, 6, 7), scale)
  labels = random_labels((2, 5, 6), 7)
  loss, per_pixel = jax.jit(losses.softmax_cross_entropy)(logits, labels)
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, np_cross_entropy(logits, labels),
                             rtol=1e-5)
  assert per_pixel.shape == labels.shape
  assert np.all(np.asarray(per_pixel)[labels == 255] == 0)


def test_cross_entropy_all_ignored_is_zero_with_finite_grad():
  logits = random_logits((1, 3, 3, 4))
  labels = np.full((1, 3, 3), 255, np.int32)
  loss, _ = losses.softmax_cross_entropy(logits, labels)
  assert float(loss) == 0.0
  g = jax.grad(lambda l: losses.softmax_cross_entropy(l, labels)[0])(logits)
  assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_cross_entropy_custom_ignore_and_weights():
  logits = random_logits((1, 4, 4, 3))
  labels = random_labels((1, 4, 4), 3, 0.0)
  labels[0, 0] = 0
  weights = (RNG.random((1, 4, 4)) > 0.5).astype(np.float32)
  loss, _ = losses.softmax_cross_entropy(logits, labels, ignore_label=0,
                                         weights=weights)
  keep = (labels != 0) & (weights > 0)
  lp = np_log_softmax(logits)
  nll = -np.take_along_axis(lp, labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, nll[keep].mean(), rtol=1e-5)


# ------------------------------------------------------------- bidirectional KL
def np_sym_kl(a, b):
  la, lb = np_log_softmax(a), np_log_softmax(b)
  pa, pb = np.exp(la), np.exp(lb)
  return (pa * (la - lb)).sum(-1) + (pb * (lb - la)).sum(-1)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_bidirectional_kl_matches_numpy(scale):
  a, b = random_logits((2, 4, 5, 6), scale), random_logits((2, 4, 5, 6), scale)
  mask = RNG.random((2, 4, 5)) > 0.3
  loss, per_pixel = jax.jit(losses.bidirectional_kl)(a, b, mask)
  ref = np_sym_kl(a, b)
  assert np.isfinite(loss)
  np.testing.assert_allclose(loss, ref[mask].mean(), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(per_pixel)[mask], ref[mask],
                             rtol=1e-4, atol=1e-5)


def test_bidirectional_kl_symmetric_and_zero_iff_equal():
  a, b = random_logits((1, 3, 3, 5)), random_logits((1, 3, 3, 5))
  ab = losses.bidirectional_kl(a, b)[0]
  ba = losses.bidirectional_kl(b, a)[0]
  np.testing.assert_allclose(ab, ba, rtol=1e-6)
  assert float(ab) > 1e-3
  # Equal distributions (logits differing by a per-pixel constant) give 0.
  shifted = a + RNG.standard_normal((1, 3, 3, 1)).astype(np.float32)
  assert abs(float(losses.bidirectional_kl(a, shifted)[0])) < 1e-6


def test_bidirectional_kl_stop_gradient_sides():
  a, b = random_logits((1, 2, 2, 3)), random_logits((1, 2, 2, 3))
  ga, gb = jax.grad(lambda x, y: losses.bidirectional_kl(
      x, y, stop_gradient_b=True)[0], argnums=(0, 1))(a, b)
  assert np.abs(ga).sum() > 0 and np.all(gb == 0)
  ga, gb = jax.grad(lambda x, y: losses.bidirectional_kl(
      x, y, stop_gradient_a=True)[0], argnums=(0, 1))(a, b)
  assert np.all(ga == 0) and np.abs(gb).sum() > 0


def test_bidirectional_kl_empty_mask_is_zero():
  a, b = random_logits((1, 2, 2, 3)), random_logits((1, 2, 2, 3))
  assert float(losses.bidirectional_kl(a, b, np.zeros((1, 2, 2), bool))[0]) == 0


# ------------------------------------------------------------- regression
def test_cross_pseudo_label_matches_numpy():
  rng = np.random.default_rng(3)
  a, b = (rng.normal(size=(2, 5, 6, 4)) * 3 for _ in range(2))
  log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
  def ce(x, y):  # -log p_x(argmax y)
    return -np.take_along_axis(log_softmax(x), y.argmax(-1)[..., None],
                               -1)[..., 0]
  ref = ce(a, b) + ce(b, a)
  loss, per_pixel = losses.cross_pseudo_label(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(per_pixel, ref, rtol=1e-5)
  np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)
  mask = rng.random((2, 5, 6)) > 0.5
  np.testing.assert_allclose(
      losses.cross_pseudo_label(jnp.asarray(a), jnp.asarray(b), mask)[0],
      ref[mask].mean(), rtol=1e-5)
  # The targets carry no gradient: d/da is softmax(a) - onehot(argmax b).
  g = jax.grad(lambda x: losses.cross_pseudo_label(x, jnp.asarray(b))[1].sum()
               )(jnp.asarray(a))
  onehot = np.eye(4)[b.argmax(-1)]
  np.testing.assert_allclose(g, np.exp(log_softmax(a)) - onehot, atol=1e-5)


def test_ensemble_labels_let_the_surer_prediction_decide():
  # Pixel 0: both say class 1. Pixel 1: a is sure of 2, b leans to 0.
  # Pixel 2: b is sure of 0, a leans to 1.
  a = np.log(np.array([[[0.1, 0.8, 0.1], [0.02, 0.02, 0.96],
                        [0.3, 0.4, 0.3]]]))
  b = np.log(np.array([[[0.2, 0.6, 0.2], [0.4, 0.3, 0.3],
                        [0.9, 0.05, 0.05]]]))
  labels = losses.ensemble_labels(jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_array_equal(labels, [[1, 2, 0]])
  rng = np.random.default_rng(5)
  x, y = (rng.normal(size=(2, 4, 5, 6)) * 2 for _ in range(2))
  p = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  np.testing.assert_array_equal(
      losses.ensemble_labels(jnp.asarray(x), jnp.asarray(y)),
      (p(x) + p(y)).argmax(-1))


def test_class_balance_weights():
  # One-hot-like predictions: class 0 on 90% of the pixels, class 1 on 10%.
  labels = np.zeros((2, 10, 10), np.int32)
  labels[:, :, 0] = 1
  logits = jnp.asarray(20.0 * np.eye(3)[labels])
  w = np.asarray(losses.class_balance_weights(logits, logits, power=1.0))
  assert w.shape == (2, 10, 10)
  np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-5)
  # power 1: both classes get the same total weight, so the rare pixels
  # weigh 9x the common ones.
  np.testing.assert_allclose(w[labels == 1].sum(), w[labels == 0].sum(),
                             rtol=1e-3)
  np.testing.assert_allclose(w[labels == 1][0] / w[labels == 0][0], 9.0,
                             rtol=1e-3)
  # power 0 is the plain mean.
  np.testing.assert_allclose(
      losses.class_balance_weights(logits, logits, power=0.0), 1.0, rtol=1e-6)
  # The weights carry no gradient; the weighted KL still does.
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(2, 4, 4, 3))) for _ in range(2))
  g = jax.grad(lambda x: losses.class_balance_weights(x, b).sum())(a)
  np.testing.assert_array_equal(g, 0.0)
  weighted = lambda x: losses.bidirectional_kl(
      x, b, losses.class_balance_weights(x, b))[0]
  assert np.abs(np.asarray(jax.grad(weighted)(a))).max() > 0


def test_agreement_masked_consistency_matches_numpy():
  from configs import seg  # pylint: disable=g-import-not-at-top
  from crdoco_jax import tasks  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  a, b = (rng.normal(size=(2, 5, 6, 4)) * 2 for _ in range(2))
  agree = a.argmax(-1) == b.argmax(-1)
  assert 0 < agree.mean() < 1
  np.testing.assert_array_equal(losses.agreement_mask(a, b), agree)
  log_softmax = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
  kl = ((np.exp(log_softmax(a)) - np.exp(log_softmax(b)))
        * (log_softmax(a) - log_softmax(b))).sum(-1)
  config = seg.get_config("demo")
  config.loss.consistency_mean = "pixel"
  consistency = lambda: tasks.get_task(config).consistency(
      jnp.asarray(a), jnp.asarray(b))
  np.testing.assert_allclose(consistency(), kl.mean(), rtol=1e-5)
  # PyTorch KLDivLoss's default reduction (the default): the mean over
  # classes too.
  config.loss.consistency_mean = "element"
  np.testing.assert_allclose(consistency(), kl.mean() / 4, rtol=1e-5)
  config.loss.consistency_mean = "class"
  with pytest.raises(ValueError, match="consistency_mean='class'"):
    tasks.get_task(config)
  config.loss.consistency_mean = "pixel"
  config.loss.consistency_mask = "agree"
  np.testing.assert_allclose(consistency(), kl[agree].mean(), rtol=1e-5)
  # Combined with class balance: balanced weights on the agreeing pixels.
  config.loss.consistency_balance = 1.0
  w = np.asarray(losses.class_balance_weights(a, b)) * agree
  np.testing.assert_allclose(consistency(), (kl * w).sum() / w.sum(),
                             rtol=1e-5)
  config.loss.consistency_mask = "confident"
  with pytest.raises(ValueError, match="consistency_mask='confident'"):
    tasks.get_task(config)


def test_l1_and_regression_consistency_masked():
  p, t = random_logits((2, 3, 3, 2)), random_logits((2, 3, 3, 2))
  mask = RNG.random((2, 3, 3, 1)) > 0.5
  full = np.broadcast_to(mask, p.shape)
  ref = np.abs(p - t)[full].mean()
  np.testing.assert_allclose(losses.l1_loss(p, t, mask)[0], ref, rtol=1e-5)
  np.testing.assert_allclose(losses.regression_consistency(p, t, mask)[0], ref,
                             rtol=1e-5)
  assert float(losses.l1_loss(p, t, np.zeros_like(mask))[0]) == 0.0


def test_berhu_matches_numpy():
  p, t = random_logits((2, 4, 4, 1)), random_logits((2, 4, 4, 1))
  mask = RNG.random((2, 4, 4, 1)) > 0.3
  d = np.abs(p - t)[mask].astype(np.float64)
  c = 0.2 * d.max()
  ref = np.where(d <= c, d, (d ** 2 + c ** 2) / (2 * c)).mean()
  np.testing.assert_allclose(losses.berhu_loss(p, t, mask)[0], ref, rtol=1e-5)


# ------------------------------------------------------------- adversarial
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_gan_losses_match_numpy(scale):
  x = random_logits((2, 3, 3, 1), scale).astype(np.float64)
  for t in (0.0, 1.0, 0.9):
    np.testing.assert_allclose(losses.lsgan_loss(x, t), ((x - t) ** 2).mean(),
                               rtol=1e-5)
    # BCE with logits computed in log space: -[t log s + (1-t) log (1-s)].
    log_s, log_1ms = -np.logaddexp(0, -x), -np.logaddexp(0, x)
    ref = -(t * log_s + (1 - t) * log_1ms).mean()
    np.testing.assert_allclose(losses.sigmoid_bce_loss(x, t), ref, rtol=1e-5)
    assert np.isfinite(losses.sigmoid_bce_loss(x, t))


def test_generator_and_discriminator_sides():
  real, fake = random_logits((2, 4, 4, 1)), random_logits((2, 4, 4, 1))
  for name, fn in losses.GAN_LOSSES.items():
    d = losses.discriminator_loss(real, fake, name, real_target=0.0,
                                  fake_target=1.0)
    np.testing.assert_allclose(d, 0.5 * (fn(real, 0.0) + fn(fake, 1.0)),
                               rtol=1e-6)
    g = losses.generator_adversarial_loss(fake, name, target=0.0)
    np.testing.assert_allclose(g, fn(fake, 0.0), rtol=1e-6)
  with pytest.raises(ValueError, match="wgan"):
    losses.gan_loss_fn("wgan")


def test_cycle_and_identity():
  x, y = random_logits((2, 4, 4, 3)), random_logits((2, 4, 4, 3))
  np.testing.assert_allclose(losses.cycle_loss(x, y), np.abs(x - y).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.identity_loss(x, y), np.abs(x - y).mean(),
                             rtol=1e-5)


def test_pooled_cycle_ignores_zero_mean_detail_within_a_window():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
  # Detail that sums to zero over every 2x2 window: invisible to pool=2.
  checker = np.indices((4, 6)).sum(0) % 2 * 2.0 - 1.0
  detail = x + 0.5 * checker[None, :, :, None]
  assert float(losses.cycle_loss(x, detail)) > 0.4
  assert float(losses.cycle_loss(x, detail, pool=2)) < 1e-6
  shifted = x + 0.3
  np.testing.assert_allclose(losses.cycle_loss(x, shifted, pool=2), 0.3,
                             rtol=1e-5)
  # pool 2: the L1 of the 2x2 means, by hand.
  y = rng.normal(size=x.shape).astype(np.float32)
  means = lambda a: a.reshape(2, 2, 2, 3, 2, 3).mean((2, 4))
  np.testing.assert_allclose(losses.cycle_loss(x, y, pool=2),
                             np.abs(means(x) - means(y)).mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="cycle_pool=4"):
    losses.cycle_loss(x, y, pool=4)


def test_label_balance_weights_match_numpy():
  labels = np.array([[[0, 0, 0, 0], [0, 0, 1, 1], [2, 255, 0, 0]]])
  got = np.asarray(losses.label_balance_weights(jnp.asarray(labels), 4, 1.0))
  valid = labels != 255
  share = np.bincount(labels[valid], minlength=4) / valid.sum()  # 8, 2, 1 of 11
  want = np.where(valid, 1 / share[np.where(valid, labels, 0)], 1.0)
  want[valid] /= want[valid].mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[0, 2, 1] == 1.0  # ignored
  # power 1: each class present holds the same total weight.
  totals = [got[labels == c].sum() for c in range(3)]
  np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
  np.testing.assert_allclose(
      losses.label_balance_weights(jnp.asarray(labels), 4, 0.0), 1.0)


def test_balanced_cycle_weighs_a_merged_small_class_up():
  """A reconstruction that paints the one small-class pixel in the large
  class's colour costs the balanced cycle more than the plain one; with
  unit weights the weighted form is the plain L1."""
  labels = np.zeros((1, 4, 4), np.int32)
  labels[0, 1, 1] = 1
  x = np.where(labels[..., None] == 1, 1.0, -1.0).astype(np.float32)
  x = np.repeat(x, 3, -1)
  merged = -np.ones_like(x)  # the small class painted as the large one
  w = losses.label_balance_weights(jnp.asarray(labels), 2, 1.0)
  plain = float(losses.cycle_loss(x, merged))
  np.testing.assert_allclose(plain, 2 / 16, rtol=1e-6)
  # Shares 15/16 and 1/16: weights 8/15 and 8 (mean 1), so the small
  # pixel's error 2 weighs 8 x 2 / 16 pixels.
  np.testing.assert_allclose(losses.cycle_loss(x, merged, weights=w), 1.0,
                             rtol=1e-5)
  y = random_logits(x.shape)
  np.testing.assert_allclose(
      losses.cycle_loss(x, y, weights=jnp.ones(labels.shape)),
      losses.cycle_loss(x, y), rtol=1e-6)
  np.testing.assert_allclose(
      losses.cycle_loss(x, y, pool=2, weights=jnp.ones(labels.shape)),
      losses.cycle_loss(x, y, pool=2), rtol=1e-6)
  with pytest.raises(ValueError, match="cycle_class_balance"):
    losses.cycle_loss(x, y, weights=jnp.ones((1, 2, 2)))


# ------------------------------------------------------------- transforms
def test_gradients_numerically():
  a = random_logits((1, 2, 2, 3), 1.0).astype(np.float64)
  b = random_logits((1, 2, 2, 3), 1.0).astype(np.float64)
  labels = np.array([[[0, 255], [2, 1]]], np.int32)
  with jax.enable_x64(True):
    check_grads(lambda x: losses.softmax_cross_entropy(x, labels)[0], (a,),
                order=2, modes=("rev",))
    check_grads(lambda x, y: losses.bidirectional_kl(x, y)[0], (a, b),
                order=2, modes=("rev",))
    check_grads(lambda x: losses.sigmoid_bce_loss(x, 1.0), (a,), order=2,
                modes=("rev",))
    check_grads(lambda x: losses.lsgan_loss(x, 0.0), (a,), order=1,
                modes=("rev",))
    # Away from the kink of |.|: shift so that no residual is near 0.
    check_grads(lambda x: losses.l1_loss(x, b + 10)[0], (a,), order=1,
                modes=("rev",))


def test_vmap_and_pmap():
  a, b = random_logits((4, 2, 3, 3, 5)), random_logits((4, 2, 3, 3, 5))
  per_item = jax.vmap(lambda x, y: losses.bidirectional_kl(x, y)[0])(a, b)
  np.testing.assert_allclose(per_item, [np_sym_kl(x, y).mean()
                                        for x, y in zip(a, b)], rtol=1e-4)
  n = jax.local_device_count()
  pm = jax.pmap(lambda x, y: jax.lax.pmean(
      losses.bidirectional_kl(x, y)[0], "d"), axis_name="d")(a[:n], b[:n])
  np.testing.assert_allclose(pm[0], np.mean(per_item[:n]), rtol=1e-4)


def test_bf16_inputs_give_f32_losses():
  a = jnp.asarray(random_logits((1, 2, 2, 3)), jnp.bfloat16)
  labels = np.zeros((1, 2, 2), np.int32)
  assert losses.softmax_cross_entropy(a, labels)[0].dtype == jnp.float32
  assert losses.bidirectional_kl(a, a)[0].dtype == jnp.float32


def test_import_has_no_side_effects():
  import subprocess
  import sys
  code = ("import sys; from crdoco_jax import losses; "
          "import jax; from jax._src import xla_bridge as xb; "
          "print(len(xb._backends))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, timeout=120)
  assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_class_prior_loss_matches_numpy_and_guards_vanishing_classes():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(2, 4, 5, 3)) * 2
  labels = rng.integers(0, 3, size=(3, 6, 6))
  labels[0, :2] = 255  # ignored pixels are not part of the prior
  valid = labels[labels != 255]
  prior = np.bincount(valid, minlength=3) / valid.size
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  m = p.reshape(-1, 3).mean(0)
  expected = (prior * (np.log(prior + 1e-6) - np.log(m + 1e-6))).sum()
  got = losses.class_prior_loss(jnp.asarray(logits), jnp.asarray(labels), 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Zero when the prediction's shares equal the labels' ones.
  matching = np.broadcast_to(np.log(prior), (1, 2, 2, 3))
  np.testing.assert_allclose(
      losses.class_prior_loss(jnp.asarray(matching), jnp.asarray(labels), 3),
      0.0, atol=1e-5)
  # A class that vanishes from the prediction costs more than a shrinking
  # one, and the gradient raises its logits.
  vanishing = np.zeros((1, 2, 2, 3))
  vanishing[..., 2] = -8.0
  shrinking = np.zeros((1, 2, 2, 3))
  shrinking[..., 2] = -1.0
  loss = lambda x: losses.class_prior_loss(x, jnp.asarray(labels), 3)
  assert loss(jnp.asarray(vanishing)) > loss(jnp.asarray(shrinking)) > 0
  assert np.all(np.asarray(jax.grad(loss)(jnp.asarray(vanishing)))[..., 2] < 0)
  # No valid label: no prior, no loss.
  np.testing.assert_allclose(losses.class_prior_loss(
      jnp.asarray(logits), jnp.full((1, 2, 2), 255), 3), 0.0)
