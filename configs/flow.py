r"""CrDoCo for optical flow.

  python launch.py --config=configs/flow.py:demo --workdir=/tmp/flow_demo
  python launch.py --config=configs/flow.py:demo,source_only --workdir=...
  python launch.py --config=configs/flow.py --workdir=DIR \
      --config.source.dir=/data/MPI-Sintel-complete \
      --config.target.dir=/data/kitti_flow_2015

``get_config(arg)`` takes comma-separated variants:
* (none): synthetic -> real flow, MPI Sintel (final pass) -> KITTI 2015.
  The paper's flow datasets and settings could not be verified
  (../shared/REFERENCE.md 1.4: no flow code was released); this pairing and
  FlowNet's training settings (EPE loss, Adam 1e-4, flow / 20) are
  assumptions.
* ``chairs``: FlyingChairs -> KITTI 2015.
* ``demo``: the embedded moving-shapes pair (crdoco_jax/data/demo_flow.py).
* ``tiny``: a few 32x32 steps for tests.
* methods: ``crdoco`` (default), ``source_only``, ``oracle``,
  ``no_consistency`` and the other methods of configs/seg.py.
Each example is a frame pair; both frames go through the same translator.
The task nets are compact FlowNetS-style networks (crdoco_jax/models/
flownet.py says why); metrics are EPE and KITTI's Fl (% outliers).
"""
import ml_collections

from configs import dense_base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  section = ml_collections.ConfigDict(dict(
      scale=20.0,        # the nets regress flow / scale (FlowNet: 20)
  ))
  return dense_base.get_config("flow", arg, section, dict(
      paper=_paper, chairs=_chairs, demo=_demo, tiny=_tiny))


def _paper(c):
  c.source = dense_base.domain("sintel", "train", "", (384, 1024), "final")
  c.target = dense_base.domain("kitti_flow", "train", "val", (320, 1024))
  c.task_net.update(arch="flownets", width=64)
  c.task_net.levels = 6  # FlowNetS: conv1 .. conv6
  c.task_net.correlation = 0  # > 0: FlowNetC-style correlation (flownet.py)
  c.loss.regression = "epe"
  c.optim.task_net.update(name="adam", lr=1e-4, b1=0.9, b2=0.999,
                          weight_decay=4e-4, schedule="linear_decay")


def _chairs(c):
  c.source = dense_base.domain("flying_chairs", "train", "", (384, 512))


def _demo(c):
  from crdoco_jax.data import demo_flow  # pylint: disable=g-import-not-at-top
  dense_base.small_networks(c)
  # FlowNetC-style: from scratch, explicit matching learns in few steps.
  c.task_net.update(arch="flownets", width=16, levels=4, correlation=3)
  size = (demo_flow.IMAGE_SIZE, demo_flow.IMAGE_SIZE)
  c.source = dense_base.domain(demo_flow.DATASET_NAME, "train", "val", size,
                               "source")
  c.target = dense_base.domain(demo_flow.DATASET_NAME, "train", "val", size,
                               "target")
  c.flow.scale = 5.0  # demo motions: a few pixels
  c.optim.task_net.update(name="adam", lr=1e-3, weight_decay=0.0,
                          schedule="constant")
  # The segmentation demo's recipe (configs/seg.py:demo): CycleGAN first,
  # translators trained by the image-level terms only, unsupervised terms
  # ramped in; 500 task-net steps as before. Plus residual translators:
  # matching needs the frames' fine grain, which a CycleGAN decoder redraws
  # as grey blotches (cycle loss ~0.55 after 300 steps, CrDoCo worse than
  # source-only); tanh(atanh(x) + G(x)) passes it through (README, "Depth
  # and flow").
  c.translator.update(residual=True, subpixel=True, pretrain_steps=300,
                      task_gradients=False)
  c.loss.update(adapt_start=100, adapt_ramp=100)
  c.train.update(num_steps=800, schedule_steps=800, log_every=50,
                 eval_every=400, checkpoint_every=100, image_every=400)


def _tiny(c):
  _demo(c)
  dense_base.tiny(c)
  c.task_net.update(arch="flownets", width=4, levels=3)
