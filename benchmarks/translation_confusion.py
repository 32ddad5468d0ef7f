"""Where a run's G_T->S sends each class: a diagnostic of the learned view.

For a finished segmentation run of the experiment runner, on the whole
target val split, prints per class (rows: the label):
  * where F_T(I_T) and F_S(G_T->S(I_T)) put its pixels (the two largest
    shares of each confusion-matrix row, in %);
  * the mean colour of G_T->S(I_T) over its pixels, and which class of the
    real source val images has the nearest mean colour. A translator that
    maps a class to another class's source colour (CycleGAN's colour
    permutation: the discriminator checks only the colour marginals) shows
    up as a nearest class other than the row's.

  python benchmarks/translation_confusion.py --config=configs/seg.py:demo \
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


def class_colour_sums(images: np.ndarray, labels: np.ndarray, c: int,
                      ignore: int) -> np.ndarray:
  """``[c, k + 1]``: per class, the sums of the images' ``k`` channels (3
  for RGB) and the pixel count."""
  valid = labels != ignore
  onehot = np.eye(c)[np.where(valid, labels, 0)] * valid[..., None]
  flat = onehot.reshape(-1, c).T
  return np.concatenate([flat @ images.reshape(-1, images.shape[-1]),
                         flat.sum(1, keepdims=True)], 1)


def main(argv):
  del argv
  config, state, nets = finished_run.load()
  task, t2s = experiments._apply(nets, state)  # pylint: disable=protected-access
  c, ignore = config.data.num_classes, config.data.ignore_label
  names = list(config.data.class_names)
  cms = np.zeros((2, c, c), np.int64)
  translated, real = np.zeros((c, 4)), np.zeros((c, 4))
  for y, p_t, p_s, x_ts in experiments.view_predictions(config, task, t2s):
    for i, p in enumerate((p_t, p_s)):
      cms[i] += np.asarray(evaluate.confusion_matrix(p, y, c, ignore))
    translated += class_colour_sums(np.asarray(x_ts), y, c, ignore)
  for batch in experiments._val(config, 32, "source"):  # pylint: disable=protected-access
    real += class_colour_sums(np.asarray(batch["image"][0]),
                              np.asarray(batch["label"][0]), c, ignore)
  mean = lambda s: s[:, :3] / np.maximum(s[:, 3:], 1)
  t_mean, s_mean = mean(translated), mean(real)
  nearest = np.linalg.norm(t_mean[:, None] - s_mean[None], axis=-1).argmin(1)

  def top2(row):
    share = 100 * row / max(row.sum(), 1)
    return ", ".join(f"{names[j]} {share[j]:.0f}" for j in
                     np.argsort(-share)[:2])

  print("| class | F_T(I_T) | F_S(G_T->S(I_T)) | G_T->S colour nearest to "
        "the source's |")
  print("|---|---|---|---|")
  for k in range(c):
    print(f"| {names[k]} | {top2(cms[0, k])} | {top2(cms[1, k])} | "
          f"{names[nearest[k]]} |")
  print(json.dumps(dict(
      run=experiments.run_dir(FLAGS.workdir, FLAGS.method, FLAGS.seed),
      confusion_f_t=cms[0].tolist(), confusion_f_s_translated=cms[1].tolist(),
      translated_class_colour=t_mean.round(4).tolist(),
      source_class_colour=s_mean.round(4).tolist())))


if __name__ == "__main__":
  app.run(main)
