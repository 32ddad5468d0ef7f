r"""CrDoCo for monocular depth prediction.

  python launch.py --config=configs/depth.py:demo --workdir=/tmp/depth_demo
  python launch.py --config=configs/depth.py:demo,source_only --workdir=...
  python launch.py --config=configs/depth.py --workdir=DIR \
      --config.source.dir=/data/suncg_depth --config.target.dir=/data/nyu

``get_config(arg)`` takes comma-separated variants:
* (none): the paper's SUNCG -> NYUv2 setting as far as it is known
  (../shared/REFERENCE.md 1.4: the released depth code is T2Net's: Adam
  1e-4, L1 on depth; the paper's own settings are not verified). SUNCG is
  no longer distributed: the source is a folder domain (renders exported
  as 16-bit PNG depth, see crdoco_jax/data/dense_sources.py), the target
  NYUv2's labelled set (``nyu_depth_v2_labeled.mat``, dense_datasets.py).
* ``kitti``: Virtual KITTI 2 -> KITTI (T2Net's outdoor setting), 80 m cap,
  Garg crop.
* ``demo``: the embedded rendered-rooms pair (crdoco_jax/data/demo_depth.py).
* ``tiny``: a few 32x32 steps for tests.
* methods: ``crdoco`` (default), ``source_only``, ``oracle``,
  ``no_consistency`` and the other methods of configs/seg.py.
The task net is DeepLab-v2 with a one-channel regression head (log depth
by default); metrics are Eigen et al.'s with the ``depth`` caps and crop.
"""
import ml_collections

from configs import dense_base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  section = ml_collections.ConfigDict(dict(
      log_depth=True,    # regress log(metres); False: metres
      min_depth=1e-3,    # evaluation caps (NYUv2: 1e-3 - 10 m)
      max_depth=10.0,
      # Evaluation crop (crdoco_jax/evaluate.py DEPTH_EVAL_CROPS): '' (none),
      # 'garg' or 'eigen'. NYUv2's Eigen crop is applied by its reader.
      eval_crop="",
  ))
  return dense_base.get_config("depth", arg, section, dict(
      paper=_paper, kitti=_kitti, demo=_demo, tiny=_tiny))


def _paper(c):
  c.source = dense_base.domain("folder", "train", "", (480, 640),
                               png_scale=1000.0)
  c.target = dense_base.domain("nyu_depth_v2", "train", "test", (480, 640))
  c.task_net.update(arch="resnet50")
  # T2Net / the released depth code: Adam 1e-4, betas (0.9, 0.999).
  c.optim.task_net.update(name="adam", lr=1e-4, b1=0.9, b2=0.999,
                          weight_decay=0.0, schedule="linear_decay")


def _kitti(c):
  # Garg crop and 80 m cap: the usual KITTI Eigen-split protocol (monodepth,
  # T2Net), so the numbers are comparable with published ones.
  c.depth.update(min_depth=1e-3, max_depth=80.0, eval_crop="garg")
  c.source = dense_base.domain("vkitti2", "train", "", (192, 640),
                               png_scale=100.0)
  c.target = dense_base.domain("kitti_depth", "train", "val", (192, 640))


def _demo(c):
  from crdoco_jax.data import demo_depth  # pylint: disable=g-import-not-at-top
  dense_base.small_networks(c)
  size = (demo_depth.IMAGE_SIZE, demo_depth.IMAGE_SIZE)
  c.source = dense_base.domain(demo_depth.DATASET_NAME, "train", "val", size,
                               "source")
  c.target = dense_base.domain(demo_depth.DATASET_NAME, "train", "val", size,
                               "target")
  # Every rendered depth lies in [1.2, 9.5] m.
  c.depth.update(min_depth=1.0, max_depth=demo_depth.MAX_DEPTH)
  c.optim.task_net.update(name="adam", lr=1e-3, schedule="constant")
  c.train.update(num_steps=500, schedule_steps=500, log_every=50,
                 eval_every=250, checkpoint_every=250, image_every=250)


def _tiny(c):
  _demo(c)
  dense_base.tiny(c)
