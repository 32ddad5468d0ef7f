"""Colour jitter (crdoco_jax/augment.py) against its definition in NumPy."""
import jax
import numpy as np
import pytest

from crdoco_jax import augment


def test_hue_rotation_is_a_rotation_that_keeps_grey():
  theta = np.array([0.0, 0.7, -2.5, np.pi], np.float32)
  r = np.asarray(augment.hue_rotation(theta))
  np.testing.assert_allclose(r @ np.transpose(r, (0, 2, 1)),
                             np.broadcast_to(np.eye(3), r.shape), atol=1e-6)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-6)
  np.testing.assert_allclose(r @ np.ones(3), np.ones((4, 3)), atol=1e-6)
  np.testing.assert_allclose(r[0], np.eye(3), atol=1e-6)
  # A third of a turn about the grey axis cycles the channels: R -> G -> B.
  third = np.asarray(augment.hue_rotation(np.array([2 * np.pi / 3])))[0]
  np.testing.assert_allclose(third @ np.array([1.0, 0.0, 0.0]),
                             [0.0, 1.0, 0.0], atol=1e-6)


def test_colour_jitter_off_is_the_identity():
  x = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  assert augment.colour_jitter(x, jax.random.PRNGKey(0), 0.0) is x


@pytest.mark.parametrize("frames", [1, 2])
def test_colour_jitter_matches_its_definition(frames):
  rng = np.random.default_rng(1)
  x = rng.uniform(-0.6, 0.6, (3, 5, 6, 3 * frames)).astype(np.float32)
  key, strength = jax.random.PRNGKey(3), 0.8
  got = np.asarray(augment.colour_jitter(x, key, strength))
  # The same draws as the function, then the maths in NumPy.
  k_hue, k_con, k_bri = jax.random.split(key, 3)
  u = lambda k: np.asarray(jax.random.uniform(k, (3,), minval=-1.0,
                                              maxval=1.0))
  r = np.asarray(augment.hue_rotation(np.pi * strength * u(k_hue)))
  y = np.einsum("bhwfc,bdc->bhwfd", x.reshape(3, 5, 6, frames, 3), r)
  mean = y.mean(axis=(1, 2, 3, 4), keepdims=True)
  con = (1 + 0.5 * strength * u(k_con)).reshape(3, 1, 1, 1, 1)
  bri = (0.4 * strength * u(k_bri)).reshape(3, 1, 1, 1, 1)
  want = np.clip((y - mean) * con + mean + bri, -1, 1).reshape(x.shape)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert got.min() >= -1 and got.max() <= 1
  # Each image gets its own draw (the frames of one image share it: above).
  assert not np.allclose(got[0] - x[0], got[1] - x[1], atol=1e-3)
