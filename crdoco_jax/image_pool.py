"""CycleGAN's history of translated images for the image discriminators.

The image discriminators learn from a pool of earlier translations, not only
the current ones, which damps the oscillation of the adversarial game
(CycleGAN's ``ImagePool``, 50 images; ../shared/REFERENCE.md 3.1). A query
with image x: while the pool is not full, x is stored and returned; once it
is, with probability 1/2 a random stored image is returned and x takes its
place, else x itself is returned.

A pool is the pytree ``dict(images=[P, H, W, C], count=int32)``. It is part
of the train state and identical on every device: each device queries with
the whole global batch (``all_gather``) and the same key, and keeps the
answers for its own slice, so the result does not depend on the number of
devices.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

Pool = Dict[str, jax.Array]


def init(size: int, image_shape: Tuple[int, ...],
         dtype=jnp.float32) -> Pool:
  """An empty pool of ``size`` images of ``image_shape`` ``(H, W, C)``."""
  return dict(images=jnp.zeros((size,) + tuple(image_shape), dtype),
              count=jnp.zeros((), jnp.int32))


def query(pool: Pool, images: jax.Array, key: jax.Array
          ) -> Tuple[Pool, jax.Array]:
  """``images [B, H, W, C]`` one by one through the pool, as CycleGAN's
  ``ImagePool.query``: returns ``(new pool, images for the discriminator
  [B, H, W, C])``. Images are stored as given (callers pass detached ones).
  """
  size = pool["images"].shape[0]
  stored, count = pool["images"], pool["count"]
  answers = []
  for i in range(images.shape[0]):  # B is static and small
    k_coin, k_slot = jax.random.split(jax.random.fold_in(key, i))
    image = images[i]
    full = count >= size
    swap = full & jax.random.bernoulli(k_coin, 0.5)
    slot = jnp.where(full, jax.random.randint(k_slot, (), 0, size),
                     jnp.minimum(count, size - 1))
    old = stored[slot]
    answers.append(jnp.where(swap, old, image))
    # Filling, or swapping: the query image takes the slot.
    stored = stored.at[slot].set(jnp.where(~full | swap, image, old))
    count = jnp.minimum(count + 1, size)
  return dict(images=stored, count=count), jnp.stack(answers)


def query_global(pool: Pool, images: jax.Array, key: jax.Array,
                 axis_name: str) -> Tuple[Pool, jax.Array]:
  """:func:`query` inside ``pmap``: every device runs the same query on the
  global batch (so the pool stays replicated) and returns its own part."""
  everything = jax.lax.all_gather(images, axis_name, tiled=True)
  pool, answers = query(pool, everything, key)
  n = images.shape[0]
  start = jax.lax.axis_index(axis_name) * n
  return pool, jax.lax.dynamic_slice_in_dim(answers, start, n)
