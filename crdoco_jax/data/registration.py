"""tfds registration of this package's dataset builders."""
import tensorflow_datasets as tfds


def already_registered(name: str) -> bool:
  """Whether tfds already knows a builder called ``name``.

  A builder module imported a second time under another module name (or
  reloaded) must pass ``skip_registration`` to its class, or tfds fails with
  "already registered"; the first class stays the registered one.
  """
  return name in tfds.list_builders(with_community_datasets=False)
