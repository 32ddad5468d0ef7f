"""Does a run's cycle hide the source image in its translation? A diagnostic.

CycleGAN can satisfy its cycle loss by hiding the details it drops (here:
the texture, or what the fog covers) in a low-amplitude signal of
G_S->T(I_S) that G_T->S decodes (Chu et al. 2017, "CycleGAN, a master of
steganography"). Real target images carry no such signal, so G_T->S then
works one way on its own fakes and another on the real images that
CrDoCo's consistency loss shows it. Gaussian noise of std ``sigma`` (images
in [-1, 1]) drowns such a signal. For a finished segmentation run of the
experiment runner, per ``sigma``, prints the mIoU of

  * ``F_S(I_S + n)`` on the source val split: F_S's own noise sensitivity;
  * ``F_S(G_T->S(G_S->T(I_S) + n))``: F_S on the cycle's reconstruction,
    and the reconstruction's L1 error against I_S;
  * ``F_S(G_T->S(I_T + n))`` on the target val split: the view the
    consistency loss uses;
  * ``F_T(I_T + n)`` and ``F_T(G_S->T(G_T->S(I_T) + n))``, with that
    reconstruction's L1 error against I_T: the same test of the target
    side of the cycle, where G_T->S is the one that could hide what it
    drops from G_T->S(I_T), the image F_S is shown (session 43).

A reconstruction that is near-perfect at ``sigma = 0`` and falls apart
under noise that barely moves the other two rows is carried by a hidden
signal, not by the image content.

  python benchmarks/cycle_steganography.py --config=configs/seg.py:demo \
      --workdir=W --method=no_consistency --seed=0
"""
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import evaluate
from crdoco_jax import experiments

import finished_run

FLAGS = flags.FLAGS
flags.DEFINE_list("sigmas", ["0", "0.01", "0.03", "0.1", "0.3"],
                  "Noise stds, images in [-1, 1].")


def with_noise(x: np.ndarray, sigma: float, rng: np.random.Generator
               ) -> np.ndarray:
  """``x + N(0, sigma^2)``, clipped to the images' range [-1, 1]."""
  if sigma == 0:
    return x
  return np.clip(x + rng.normal(scale=sigma, size=x.shape), -1, 1).astype(
      x.dtype)


def main(argv):
  del argv
  config, task, t2s, s2t = finished_run.load_translators()
  c, ignore = config.data.num_classes, config.data.ignore_label
  classes = lambda x, domain: np.asarray(task(x, domain)).argmax(-1)
  cm = lambda p, y: np.asarray(evaluate.confusion_matrix(p, y, c, ignore))
  miou = lambda m: round(100 * evaluate.mean_iou(m), 2)
  rows = []
  for sigma in map(float, FLAGS.sigmas):
    rng = np.random.default_rng(0)
    cms = np.zeros((5, c, c), np.int64)
    l1, n, l1_t, n_t = 0.0, 0, 0.0, 0
    for batch in experiments._val(config, 32, "source"):  # pylint: disable=protected-access
      x, y = np.asarray(batch["image"][0]), np.asarray(batch["label"][0])
      cms[0] += cm(classes(with_noise(x, sigma, rng), "S"), y)
      x_sts = t2s(with_noise(np.asarray(s2t(x)), sigma, rng))
      cms[1] += cm(classes(x_sts, "S"), y)
      l1 += float(np.abs(np.asarray(x_sts) - x).sum())
      n += x.size
    for batch in experiments._val(config, 32):  # pylint: disable=protected-access
      x, y = np.asarray(batch["image"][0]), np.asarray(batch["label"][0])
      cms[2] += cm(classes(t2s(with_noise(x, sigma, rng)), "S"), y)
      cms[3] += cm(classes(with_noise(x, sigma, rng), "T"), y)
      x_tst = s2t(with_noise(np.asarray(t2s(x)), sigma, rng))
      cms[4] += cm(classes(x_tst, "T"), y)
      l1_t += float(np.abs(np.asarray(x_tst) - x).sum())
      n_t += x.size
    rows.append(dict(sigma=sigma, f_s_source=miou(cms[0]),
                     f_s_cycle=miou(cms[1]), cycle_l1=round(l1 / n, 4),
                     f_s_translated_target=miou(cms[2]),
                     f_t_target=miou(cms[3]), f_t_cycle=miou(cms[4]),
                     target_cycle_l1=round(l1_t / n_t, 4)))
  print("| sigma | F_S(I_S + n) | F_S(G_T->S(G_S->T(I_S) + n)) | its L1 "
        "to I_S | F_S(G_T->S(I_T + n)) | F_T(I_T + n) | "
        "F_T(G_S->T(G_T->S(I_T) + n)) | its L1 to I_T |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['sigma']} | {r['f_s_source']} | {r['f_s_cycle']} | "
          f"{r['cycle_l1']} | {r['f_s_translated_target']} | "
          f"{r['f_t_target']} | {r['f_t_cycle']} | {r['target_cycle_l1']} |")
  print(json.dumps(dict(workdir=FLAGS.workdir, method=FLAGS.method,
                        seed=FLAGS.seed, rows=rows)))


if __name__ == "__main__":
  app.run(main)
