"""The skeleton shared by configs/depth.py and configs/flow.py.

Starts from configs/seg.py's paper configuration (translators, output-space
and image discriminators, optimizers, training loop, compute) and its
method variants, and adds what dense regression needs: ``task``,
``data.out_channels``, ``loss.regression`` and per-domain ``png_scale``
(16-bit depth PNGs: metres = value / png_scale). Each task module passes
its own section (``depth`` / ``flow``), paper setting and demo.
"""
from typing import Callable, Dict

import ml_collections

from configs import seg

METHODS = seg.METHODS


def domain(name, split, eval_split, size, builder_config="", png_scale=256.0):
  """seg.py's domain section plus the depth PNG scale."""
  d = seg._domain(name, split, eval_split, size, builder_config)  # pylint: disable=protected-access
  d.png_scale = png_scale
  return d


def get_config(task: str, arg: str, section: ml_collections.ConfigDict,
               variants: Dict[str, Callable[[ml_collections.ConfigDict],
                                            None]]
               ) -> ml_collections.ConfigDict:
  """``seg.get_config()`` turned into a ``task`` config.

  Args:
    task: 'depth' or 'flow'.
    arg: comma-separated variants (as seg.py's), e.g. 'demo,source_only'.
    section: the task's own section, stored as ``config.<task>``.
    variants: name -> function editing the config; must include 'paper'
      (always applied first), 'demo' and 'tiny'.
  """
  c = seg.get_config()
  c.unlock()
  c.task = task
  c.data.out_channels = 1 if task == "depth" else 2
  c[task] = section
  # Class names / counts do not apply; ignore_label pads nothing here.
  c.data.num_classes = 0
  c.data.class_names = ()
  c.loss.regression = "l1"   # 'l1', 'berhu' or 'epe' (tasks.py)
  c.loss.consistency_mean = "pixel"  # no classes to average over
  # DeepLab's 10x head rate is for classifiers trained from ImageNet.
  c.optim.task_net.head_lr_mult = 1.0
  c.task_net.multi_level = False
  c.task_net.bn_affine = "train"  # (AdaptSegNet's frozen affine is seg's)
  variants["paper"](c)
  for v in [v for v in arg.split(",") if v] if arg else []:
    if v in variants and v != "paper":
      variants[v](c)
    elif v in METHODS:
      seg._method(c, v)  # pylint: disable=protected-access
    else:
      raise ValueError(f"Unknown config variant {v!r} in {arg!r}; known: "
                       f"{', '.join(k for k in variants if k != 'paper')}, "
                       f"{', '.join(METHODS)}.")
  seg.drop_pretraining_without_translators(c)
  c.lock()
  return c


def small_networks(c: ml_collections.ConfigDict) -> None:
  """The segmentation demo's network sizes (2 CPU cores)."""
  c.translator.update(ngf=16, n_blocks=3, pretrain_steps=0)
  c.task_net.update(arch="resnet18", multi_level=False, width=32)
  c.disc.update(img_ndf=16, feat_ndf=16)
  c.data.per_device_batch = 2
  c.data.eval_per_device_batch = 16


def tiny(c: ml_collections.ConfigDict) -> None:
  """A few 32x32 steps for tests (seg.py's tiny sizes)."""
  seg._tiny(c)  # pylint: disable=protected-access
