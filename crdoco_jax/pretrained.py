"""Converted pretrained weights: their Orbax files and how a fresh train
state takes them (``config.init``; files from ``python -m crdoco_jax.convert``).

A file is one Orbax checkpoint with two items: ``variables`` (``params``,
and ``batch_stats`` for task nets) of ONE network and ``info`` (JSON: the
kind and architecture it was converted from). Loading checks the info
against the config first, for errors that say which config key to set,
then every leaf: unexpected or missing keys and shape mismatches (both
shapes) are errors naming them.
"""
import os
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from crdoco_jax.convert import TASK_KINDS
from crdoco_jax.models import deeplab

Variables = Dict[str, Any]


def save(directory: str, variables: Variables, info: Dict[str, Any]) -> None:
  """Writes a converted network to a new Orbax directory."""
  path = os.path.abspath(directory)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new --output or delete "
                          "it first.")
  ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
      path, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                    info=ocp.args.JsonSave(info)))


def load(directory: str) -> Tuple[Variables, Dict[str, Any]]:
  """``(variables as NumPy arrays, info)`` of a file written by ``save``."""
  path = os.path.abspath(directory)
  if not os.path.isdir(os.path.join(path, "variables")):
    raise FileNotFoundError(
        f"{path} is not a converted weights directory (no 'variables' "
        "item); create it with python -m crdoco_jax.convert.")
  restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(path)
  return jax.device_get(restored["variables"]), dict(restored["info"])


def graft(target: Variables, source: Variables, where: str,
          optional: Tuple[Tuple[str, ...], ...] = ()) -> Variables:
  """``target`` with every leaf of ``source`` put in its place.

  Args:
    target: nested dict of arrays (e.g. ``{'params': ..., 'batch_stats':
      ...}``), giving the structure, shapes and dtypes.
    source: nested dict of arrays with (a subset of) that structure.
    where: what is loaded, for error messages.
    optional: paths (below the collection) that ``source`` may lack
      altogether; the target keeps its values there.
  Raises:
    ValueError listing unexpected and missing keys and shape mismatches.
  """
  flat_t = traverse_util.flatten_dict(target)
  flat_s = traverse_util.flatten_dict(source)
  name = "/".join
  unexpected = [name(p) for p in flat_s if p not in flat_t]
  shapes = [f"{name(p)}: file {np.shape(v)}, model {np.shape(flat_t[p])}"
            for p, v in flat_s.items()
            if p in flat_t and np.shape(v) != np.shape(flat_t[p])]

  def excused(path):
    return any(path[1:1 + len(o)] == o and not any(
        q[1:1 + len(o)] == o for q in flat_s) for o in optional)
  missing = [name(p) for p in flat_t if p not in flat_s and not excused(p)]
  problems = [f"  {len(items)} {title}: {', '.join(items[:10])}"
              + (" ..." if len(items) > 10 else "")
              for title, items in (("unexpected keys", unexpected),
                                   ("missing keys", missing),
                                   ("shape mismatches", shapes)) if items]
  if problems:
    raise ValueError(f"Cannot load {where}:\n" + "\n".join(problems))
  kept = sorted({name(p[1:3]) for p in flat_t if p not in flat_s})
  if kept:
    logging.info("%s: %s keep their random initialisation.", where,
                 ", ".join(kept))
  out = {p: (jnp.asarray(flat_s[p], jnp.asarray(v).dtype) if p in flat_s
             else v) for p, v in flat_t.items()}
  return traverse_util.unflatten_dict(out)


def _check_info(info: Dict[str, Any], kinds: Tuple[str, ...], key: str,
                path: str, expected: Dict[str, Any]) -> None:
  """Errors naming the config keys to set when the file's architecture is
  not the config's. ``expected``: ``{config key: (info field, value)}``."""
  if info.get("kind") not in kinds:
    raise ValueError(f"config.{key}={path!r} holds a {info.get('kind')!r} "
                     f"network; expected one of {kinds}.")
  wrong = {k: info[field] for k, (field, value) in expected.items()
           if info.get(field) != value}
  if wrong:
    setting = " ".join(f"--config.{k}={v}" for k, v in wrong.items())
    raise ValueError(f"config.{key}={path!r} was converted from a network "
                     f"with {wrong}, which the config does not build; set "
                     f"{setting} (or convert a matching checkpoint).")


def load_task_net(config: ml_collections.ConfigDict, params: Variables,
                  batch_stats: Variables, path: str
                  ) -> Tuple[Variables, Variables]:
  """``TaskNetPair`` ``(params, batch_stats)`` with F_S and / or F_T
  (``config.init.task_net_domains``) taken from the file at ``path``."""
  f = config.task_net
  if f.arch not in deeplab.ARCHS:
    raise ValueError(f"config.init.task_net: converted ResNets load into "
                     f"DeepLab task nets only, not task_net.arch={f.arch!r}.")
  variables, info = load(path)
  expected = {"task_net.arch": ("arch", f.arch),
              "task_net.width": ("width", f.width)}
  if deeplab.ARCHS[f.arch][0] is deeplab.Bottleneck:
    expected["task_net.stride_on_3x3"] = ("stride_on_3x3",
                                          f.get("stride_on_3x3", False))
  _check_info(info, TASK_KINDS, "init.task_net", path, expected)
  domains = config.init.task_net_domains
  if not domains or set(domains) - set(deeplab.DOMAINS):
    raise ValueError(f"config.init.task_net_domains={domains!r}: expected "
                     "'S', 'T' or 'ST'.")
  tree = {"params": params, "batch_stats": batch_stats}
  for d in domains:
    # Shared units (task_net.share_last) have no domain suffix.
    names = {u: u if u in params else f"{u}_{d}" for u in deeplab.UNITS}
    view = {c: {u: t[n] for u, n in names.items() if n in t}
            for c, t in tree.items()}
    view = graft(view, variables, f"F_{d} from {path}",
                 optional=(("heads",), ("heads", "aux")))
    for c, t in view.items():
      tree[c] = {**tree[c], **{names[u]: v for u, v in t.items()}}
  logging.info("Initialised F_%s from %s (%s).", " and F_".join(domains),
               path, info)
  return tree["params"], tree["batch_stats"]


def split_generator(params: Variables, encoder_blocks: int) -> Variables:
  """Re-splits a ``ResnetGenerator``'s residual blocks so that the first
  ``encoder_blocks`` sit in its encoder (``translator.encoder_blocks``)."""
  blocks = [params[part][k] for part in ("encoder", "decoder")
            for k in sorted((k for k in params[part]
                             if k.startswith("ResidualBlock_")),
                            key=lambda k: int(k.split("_")[1]))]
  out = {part: {k: v for k, v in params[part].items()
                if not k.startswith("ResidualBlock_")}
         for part in ("encoder", "decoder")}
  for i, block in enumerate(blocks):
    part, j = (("encoder", i) if i < encoder_blocks
               else ("decoder", i - encoder_blocks))
    out[part][f"ResidualBlock_{j}"] = block
  return out


def _translators(config, translator, paths: Dict[str, str]):
  t = config.translator
  if t.share_encoder:
    raise ValueError("config.init.translator_*: two CycleGAN generators "
                     "have separate encoders; set "
                     "--config.translator.share_encoder=False to load them.")
  params = dict(translator.params)
  for name, (key, path) in paths.items():
    variables, info = load(path)
    _check_info(info, ("cyclegan_generator",), key, path,
                {"translator.ngf": ("ngf", t.ngf),
                 "translator.n_blocks": ("n_blocks", t.n_blocks)})
    source = {"params": split_generator(variables["params"],
                                        t.encoder_blocks)}
    params[name] = graft({"params": params[name]}, source,
                         f"{name} from {path}")["params"]
    logging.info("Initialised %s from %s.", name, path)
  return translator.replace(params=params)


def _image_discriminators(config, d_img, paths: Dict[str, str]):
  d = config.disc
  params = dict(d_img.params)
  for name, (key, path) in paths.items():
    variables, info = load(path)
    _check_info(info, ("cyclegan_discriminator",), key, path,
                {"disc.img_ndf": ("ndf", d.img_ndf),
                 "disc.img_layers": ("n_layers", d.img_layers)})
    params[name] = graft({"params": params[name]}, variables,
                         f"{name} from {path}")["params"]
    logging.info("Initialised %s from %s.", name, path)
  return d_img.replace(params=params)


def initialize(config: ml_collections.ConfigDict, state: Any) -> Any:
  """A fresh ``CrDoCoState`` with the networks ``config.init`` names
  replaced by converted weights (optimizer states are zeros either way)."""
  init = config.get("init")
  if init is None:
    return state
  if init.task_net:
    params, batch_stats = load_task_net(config, state.task.params,
                                        state.task.batch_stats, init.task_net)
    state = state.replace(task=state.task.replace(params=params,
                                                  batch_stats=batch_stats))
  gens = {name: (f"init.{key}", init[key]) for name, key in
          (("G_S2T", "translator_s2t"), ("G_T2S", "translator_t2s"))
          if init[key]}
  discs = {name: (f"init.{key}", init[key]) for name, key in
           (("D_S", "d_img_s"), ("D_T", "d_img_t")) if init[key]}
  if (gens or discs) and state.translator is None:
    raise ValueError(f"config.method={config.method!r} has no translators "
                     "or image discriminators to initialise; clear "
                     "config.init.translator_* and config.init.d_img_*.")
  if gens:
    state = state.replace(translator=_translators(config, state.translator,
                                                  gens))
  if discs:
    state = state.replace(d_img=_image_discriminators(config, state.d_img,
                                                      discs))
  return state
