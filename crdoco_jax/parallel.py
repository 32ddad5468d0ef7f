"""Moving pytrees onto the local devices in the layout pmap itself uses.

jax.pmap (on its shard_map implementation) returns arrays sharded over a
one-axis mesh named after its ``axis_name``. Inputs placed any other way
(e.g. ``flax.jax_utils.replicate``, whose mesh axis has another name) make
the second call of a pmapped step recompile; these helpers avoid that.
"""
import collections
import itertools
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def device_sharding(axis_name: str = AXIS,
                    devices: Optional[Sequence[Any]] = None) -> NamedSharding:
  """Leading-axis sharding over ``devices`` (default: this process's)."""
  mesh = Mesh(np.array(devices or jax.local_devices()), (axis_name,))
  return NamedSharding(mesh, PartitionSpec(axis_name))


def shard(tree: Any, axis_name: str = AXIS,
          devices: Optional[Sequence[Any]] = None) -> Any:
  """Places ``[n_devices, ...]`` host arrays one slice per device."""
  sharding = device_sharding(axis_name, devices)
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def replicate(tree: Any, axis_name: str = AXIS) -> Any:
  """One copy of every leaf per local device: ``[n, ...]`` arrays."""
  n = jax.local_device_count()
  return shard(jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree),
      axis_name)


def unreplicate(tree: Any) -> Any:
  """This process's first device's copy of every leaf, as NumPy arrays
  (also for multi-process arrays, whose other shards live elsewhere)."""
  def first(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])
    return np.asarray(x[0])
  return jax.tree_util.tree_map(first, tree)


def prefetch_to_device(iterator: Iterator[Any], size: int = 2,
                       axis_name: str = AXIS) -> Iterator[Any]:
  """Keeps ``size`` sharded batches in flight so host-to-device copies
  overlap with the running step."""
  queue = collections.deque()
  for batch in itertools.islice(iterator, size):
    queue.append(shard(batch, axis_name))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(iterator, 1):
      queue.append(shard(batch, axis_name))
