"""On-device photometric augmentation: pure functions of arrays and a key.

Not the paper's. ``colour_jitter`` lets F_S learn the source task from
images whose global colours vary, so that it leans less on the exact
source palette when the consistency loss shows it G_T->S(I_T), whose
objects' colours the learned translator gets wrong (README, "Evidence").
"""
import jax
import jax.numpy as jnp


def hue_rotation(theta: jax.Array) -> jax.Array:
  """``[B, 3, 3]`` rotations of RGB about the grey axis by ``theta [B]``
  (radians; Rodrigues' formula with the unit axis (1, 1, 1) / sqrt(3))."""
  k = jnp.full((3,), 1.0 / jnp.sqrt(3.0))
  cross = jnp.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]],
                     [-k[1], k[0], 0.0]])
  c, s = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
  return c * jnp.eye(3) + s * cross + (1.0 - c) * jnp.outer(k, k)


def colour_jitter(x: jax.Array, key: jax.Array, strength: float) -> jax.Array:
  """Per-image random hue rotation, contrast and brightness.

  Args:
    x: ``[B, H, W, 3 * F]`` images in [-1, 1] (F frames share one draw).
    key: PRNG key.
    strength: s in [0, 1]: hue angle ~ U(-pi s, pi s) about the grey axis
      (the [-1, 1] cube's centre is mid-grey, so the rotation keeps grey
      grey), contrast ~ U(1 - s / 2, 1 + s / 2) about the image mean,
      brightness ~ U(-0.4 s, 0.4 s). 0 returns ``x`` unchanged.
  Returns:
    ``x``'s shape and dtype, clipped to [-1, 1].
  """
  if strength == 0:
    return x
  b = x.shape[0]
  k_hue, k_con, k_bri = jax.random.split(key, 3)
  u = lambda k: jax.random.uniform(k, (b,), minval=-1.0, maxval=1.0)
  rot = hue_rotation(jnp.pi * strength * u(k_hue))
  frames = x.reshape(x.shape[:-1] + (-1, 3)).astype(jnp.float32)
  y = jnp.einsum("bhwfc,bdc->bhwfd", frames, rot)
  mean = y.mean(axis=(1, 2, 3, 4), keepdims=True)
  contrast = (1.0 + 0.5 * strength * u(k_con))[:, None, None, None, None]
  bright = (0.4 * strength * u(k_bri))[:, None, None, None, None]
  y = (y - mean) * contrast + mean + bright
  return jnp.clip(y, -1.0, 1.0).reshape(x.shape).astype(x.dtype)
