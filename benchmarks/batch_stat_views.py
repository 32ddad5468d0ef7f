"""Do F_S's running BatchNorm statistics cost it the translated view? A
diagnostic of one finished segmentation run of the experiment runner.

The runner scores F_S(G_T->S(I_T)) in eval mode, with BatchNorm's running
statistics, which F_S gathered over both real source images and
translations. The consistency loss sees F_S in train mode: each input is
normalised with its own batch statistics. Per view, this prints the mIoU
with the running statistics and with each val batch's own statistics
(``--batch`` images, a divisor of the val split so no batch is padded):

  * ``F_S(I_S)`` on the source val split;
  * ``F_S(G_T->S(I_T))`` and ``F_T(I_T)`` on the target val split.

If the translated view gains much more from its own statistics than the
other two, the eval-mode headroom understates what the loss has to pass on.

  python benchmarks/batch_stat_views.py --config=configs/seg.py:demo \
      --workdir=W --method=no_consistency --seed=0
"""
import json
import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import evaluate
from crdoco_jax import experiments

import finished_run

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 30, "Val images per batch statistic.")


def main(argv):
  del argv
  config, state, nets = finished_run.load()
  running, t2s = experiments._apply(nets, state)  # pylint: disable=protected-access
  # train=True: BatchNorm normalises with the batch's own statistics (the
  # running averages it would update are discarded).
  batch_stats = jax.jit(lambda x, domain: nets.task.apply(
      {"params": state.task.params, "batch_stats": state.task.batch_stats},
      x, domain, train=True, mutable=["batch_stats"])[0]["main"],
                        static_argnums=1)
  apply = {"running": running, "batch": batch_stats}
  c, ignore = config.data.num_classes, config.data.ignore_label
  views = {"f_s_source": ("source", "S", False),
           "f_s_translated_target": ("target", "S", True),
           "f_t_target": ("target", "T", False)}
  cms = {(v, s): np.zeros((c, c), np.int64) for v in views for s in apply}
  for domain in ("source", "target"):
    for batch in experiments._val(config, FLAGS.batch, domain):  # pylint: disable=protected-access
      x, y = np.asarray(batch["image"][0]), np.asarray(batch["label"][0])
      if (y == ignore).all(axis=(1, 2)).any():
        raise SystemExit(f"--batch={FLAGS.batch} leaves a padded val batch; "
                         "use a divisor of the val split's size.")
      for view, (d, net, translated) in views.items():
        if d != domain:
          continue
        seen = np.asarray(t2s(x)) if translated else x
        for stats, f in apply.items():
          cms[view, stats] += np.asarray(evaluate.confusion_matrix(
              np.asarray(f(seen, net)).argmax(-1), y, c, ignore))
  rows = {f"{v}_{s}": round(100 * evaluate.mean_iou(m), 2)
          for (v, s), m in cms.items()}
  print("| view | running statistics | the batch's own statistics |")
  print("|---|---|---|")
  for v in views:
    print(f"| {v} | {rows[v + '_running']} | {rows[v + '_batch']} |")
  print(json.dumps(dict(workdir=FLAGS.workdir, method=FLAGS.method,
                        seed=FLAGS.seed, batch=FLAGS.batch, rows=rows)))


if __name__ == "__main__":
  app.run(main)
