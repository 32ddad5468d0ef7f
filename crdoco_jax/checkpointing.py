"""Orbax checkpoints of the whole CrDoCo train state, with auto-resume.

Layout under the workdir: ``checkpoints/<step>/`` (Orbax CheckpointManager,
keeping the newest ``keep`` steps) and ``config.json``, the config of the
run that created the workdir, used to explain an incompatible restart.
"""
import json
import os
from typing import Any, Optional, Tuple

import jax
import ml_collections
from absl import logging
import numpy as np
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"


class IncompatibleCheckpointError(ValueError):
  """The workdir's checkpoint does not fit the current config."""


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves an (unreplicated) state at ``step``; waits so that a following
  crash cannot leave only a partial newest checkpoint behind."""
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()


def flat_config(config: Any, prefix: str = "") -> dict:
  """``{"section.key": value}`` of a (nested) config dict; tuples as lists."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records the config beside the checkpoints (once per workdir)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(flat_config(config.to_dict()), f, indent=1, sort_keys=True,
                default=str)


def read_config(workdir: str, like: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
  """The config a run recorded in ``workdir`` (with every command-line
  override it had), typed as ``like`` (e.g. the same ``get_config``)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path) as f:
    recorded = json.load(f)
  config = ml_collections.ConfigDict(like.to_dict())
  for key, value in recorded.items():
    *parents, leaf = key.split(".")
    node = config
    try:
      for p in parents:
        node = node[p]
      old = node[leaf]
    except KeyError as e:
      raise KeyError(f"{path}: key {key!r} is not in this version's config; "
                     "was the run made with another version?") from e
    node[leaf] = tuple(value) if isinstance(old, tuple) else value
  return config


def config_differences(workdir: str,
                       config: ml_collections.ConfigDict) -> list:
  """``key: old -> new`` lines where the workdir's recorded config differs."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    old = json.load(f)
  new = json.loads(json.dumps(flat_config(config.to_dict()), default=str))
  return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def restore_latest(manager: ocp.CheckpointManager, target: Any,
                   workdir: str, config: ml_collections.ConfigDict
                   ) -> Tuple[Optional[Any], Optional[int]]:
  """``(state, step)`` of the newest readable checkpoint, or ``(None, None)``.

  ``target`` gives the structure (values unused; ShapeDtypeStructs are
  fine). A checkpoint that cannot be read while the config is unchanged
  (e.g. truncated by a kill during a save) is skipped with a warning in
  favour of the next older one; one written by a different config raises
  :class:`IncompatibleCheckpointError` naming the differing keys.
  """
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
      if not isinstance(x, jax.ShapeDtypeStruct) else x, target)
  shapes = lambda t: [np.shape(x) for x in jax.tree_util.tree_leaves(t)]
  diffs = config_differences(workdir, config)

  def incompatible(step, reason):
    detail = ("\n  ".join(diffs) if diffs else
              "(no recorded config differences; the code may have changed)")
    return IncompatibleCheckpointError(
        f"The checkpoint at step {step} in {manager.directory} was written "
        f"by an incompatible config and cannot be restored into this one. "
        f"Config keys that differ from the run that created this workdir:\n"
        f"  {detail}\nUse a new --workdir, or the original config. "
        f"({reason[:300]})")

  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step,
                                 args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except
      reason = f"Orbax: {str(e).splitlines()[0] if str(e) else type(e)}"
      if diffs:
        raise incompatible(step, reason) from e
      logging.warning("Checkpoint at step %d in %s is unreadable (%s); "
                      "falling back to the previous one.", step,
                      manager.directory, reason[:300])
      failures.append(f"step {step}: {reason[:200]}")
      continue
    if (jax.tree_util.tree_structure(restored)
        != jax.tree_util.tree_structure(abstract)
        or shapes(restored) != shapes(abstract)):
      raise incompatible(step, "parameter shapes differ")
    return restored, step
  if failures:
    raise IOError(f"No readable checkpoint in {manager.directory}: "
                  + "; ".join(failures) + ". Move the folder away to start "
                  "afresh.")
  return None, None
