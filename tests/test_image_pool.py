"""crdoco_jax/image_pool.py: CycleGAN's history of translations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crdoco_jax import image_pool


def _reference(size, images, key):
  """CycleGAN's ImagePool.query, one image at a time, with the same draws."""
  stored, answers = [], []
  for i, image in enumerate(images):
    k_coin, k_slot = jax.random.split(jax.random.fold_in(key, i))
    if len(stored) < size:
      stored.append(image)
      answers.append(image)
    elif bool(jax.random.bernoulli(k_coin, 0.5)):
      slot = int(jax.random.randint(k_slot, (), 0, size))
      answers.append(stored[slot])
      stored[slot] = image
    else:
      answers.append(image)
  return stored, answers


def test_query_is_cyclegans_image_pool():
  images = jnp.arange(1.0, 11.0)[:, None, None, None] * jnp.ones((10, 2, 2, 3))
  key = jax.random.PRNGKey(3)
  pool, answers = jax.jit(image_pool.query)(
      image_pool.init(4, (2, 2, 3)), images, key)
  stored, expected = _reference(4, list(images), key)
  np.testing.assert_array_equal(answers, np.stack(expected))
  np.testing.assert_array_equal(pool["images"], np.stack(stored))
  assert int(pool["count"]) == 4
  # While filling, the images themselves come back; once full, both
  # outcomes occur (an older image, or the query image).
  np.testing.assert_array_equal(answers[:4], images[:4])
  values = answers[4:, 0, 0, 0]
  older = values < jnp.arange(5.0, 11.0)
  assert bool(older.any()) and bool((~older).any())


def test_query_fills_in_steps_and_keeps_the_count():
  pool = image_pool.init(3, (1, 1, 1))
  key = jax.random.PRNGKey(0)
  pool, out = image_pool.query(pool, jnp.ones((2, 1, 1, 1)), key)
  assert int(pool["count"]) == 2
  np.testing.assert_array_equal(pool["images"][:, 0, 0, 0], [1.0, 1.0, 0.0])
  pool, out = image_pool.query(pool, 2 * jnp.ones((2, 1, 1, 1)), key)
  assert int(pool["count"]) == 3
  # The third slot filled with the first new image; the second one either
  # came back itself or swapped with a stored one.
  assert float(pool["images"][2, 0, 0, 0]) == 2.0
  assert float(out[0, 0, 0, 0]) == 2.0


def test_global_query_is_the_same_on_every_device_count():
  n = jax.local_device_count()
  assert n > 1
  images = jax.random.normal(jax.random.PRNGKey(1), (2 * n, 4, 4, 3))
  key = jax.random.PRNGKey(7)
  pool = image_pool.init(3, (4, 4, 3))
  want_pool, want = image_pool.query(pool, images, key)
  replicate = lambda t: jax.tree_util.tree_map(
      lambda x: jnp.stack([x] * n), t)
  got_pool, got = jax.pmap(
      lambda p, x, k: image_pool.query_global(p, x, k, "i"), axis_name="i")(
          replicate(pool), images.reshape((n, 2, 4, 4, 3)), replicate(key))
  np.testing.assert_array_equal(got.reshape(images.shape), want)
  for d in range(n):  # the pool stays replicated
    np.testing.assert_array_equal(got_pool["images"][d], want_pool["images"])
    assert int(got_pool["count"][d]) == int(want_pool["count"])


def test_pools_live_in_the_checkpointed_state(tmp_path):
  from configs import seg
  from crdoco_jax import checkpointing, models
  from crdoco_jax import state as state_lib
  config = seg.get_config("tiny")
  nets = models.build_networks(config)
  assert state_lib.create_train_state(config, nets,
                                      jax.random.PRNGKey(0)).img_pool is None
  config.disc.img_pool = 2
  state = state_lib.create_train_state(config, nets, jax.random.PRNGKey(0))
  assert state.img_pool["t"]["images"].shape == (2, 32, 32, 3)
  pool, _ = image_pool.query(state.img_pool["t"],
                             jnp.ones((1, 32, 32, 3)), jax.random.PRNGKey(1))
  state = state.replace(img_pool=dict(state.img_pool, t=pool))
  manager = checkpointing.make_manager(str(tmp_path), keep=1)
  checkpointing.save(manager, 1, state)
  restored, step = checkpointing.restore_latest(manager, state, str(tmp_path),
                                                config)
  assert step == 1 and int(restored.img_pool["t"]["count"]) == 1
  np.testing.assert_array_equal(restored.img_pool["t"]["images"],
                                state.img_pool["t"]["images"])
  config.disc.img_pool = -1
  with pytest.raises(ValueError, match="disc.img_pool=-1"):
    state_lib.init_image_pools(config)
