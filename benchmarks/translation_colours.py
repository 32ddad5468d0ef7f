"""What a run's translators get wrong, texture or class colours: a diagnostic.

For a finished segmentation run of the experiment runner on the embedded
demo (whose scenes ``demo_seg.restyle`` can draw in any domain's style,
the ideal translation), prints

  * F_S's mIoU on the target val split's ideal source-style view and on
    G_T->S(I_T), each also with the fine detail removed by a k x k box
    mean (k = 3, 5); the mean high-frequency energy |x - 3x3 box mean| of
    real source images, the ideal view and G_T->S(I_T);
  * per class: its share of the source pixels; how far the class-mean
    colour of G_T->S(I_T) (target val) and of G_S->T(I_S) (source val) lie
    from the ideal rendering's (L1 over RGB, images in [-1, 1]); the
    per-class L1 error of both cycles, the target one also with Gaussian
    noise of std ``--sigma`` on G_T->S(I_T) before G_S->T (a hidden signal
    would not survive it); F_S's IoU on G_T->S(I_T) and on the 5x5-blurred
    ideal view;
  * per horizontal band of rows (``--bands``, top first): F_S's pixel
    accuracy on the ideal view and on G_T->S(I_T), and the images' mean
    intensity and contrast (std over the band's pixels) for real source
    images, the ideal view and G_T->S(I_T). The demo's fog thickens with
    height in the frame, so a translator that gets the haze wrong shows
    it in the top bands. And F_S's accuracy on G_T->S(I_T) with each
    image's bands moved to the real source images' mean intensity and
    contrast (``matched``): what a photometric fix alone would recover;
  * the linear spatial trend of each image's colours within its classes
    (least-squares slopes over the frame's columns and rows; ``[-1, 1]``
    images, per unit of frame width), mean |slope| for real source
    images, the ideal view and G_T->S(I_T); and F_S's mIoU on G_T->S(I_T)
    with each image's fitted column trend removed (``deramped_columns``)
    and with both removed (``deramped``), and on the ideal view with its
    column trend removed. The textured target is lit from a random side
    (``demo_seg._light``), the fog source only darkens upwards (haze): a
    translator that keeps the target's light shows a column trend;
  * per segment (one class in one image, at least ``MIN_SEGMENT``
    pixels): whether its mean colour lies nearest (L1) to its own class's
    mean colour in real source images, and how far from it, for the ideal
    view and G_T->S(I_T): the dataset-wide class-mean colours can be
    right while single objects are painted in another class's colour.

If blurring the ideal view costs F_S little while G_T->S(I_T) costs it
much, missing texture is not the problem; if blurring G_T->S(I_T) helps
F_S, detail the translator adds (or lets through) is; large colour errors
on a few classes say which classes it loses.

  python benchmarks/translation_colours.py --config=configs/seg.py:demo \
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
from crdoco_jax.data import demo_seg

import cycle_steganography
import finished_run
import translation_confusion

FLAGS = flags.FLAGS
flags.DEFINE_integer("bands", 4, "Horizontal bands of rows for the "
                     "per-band accuracy and haze profile.")
flags.DEFINE_float("sigma", 0.03, "Noise std on G_T->S(I_T) in the target "
                   "cycle's second row, images in [-1, 1].")


def box_mean(x: np.ndarray, k: int) -> np.ndarray:
  """``k x k`` box mean of ``[N, H, W, C]`` images, reflect-padded."""
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  h, w = x.shape[1:3]
  return (sum(xp[:, i:i + h, j:j + w] for i in range(k) for j in range(k))
          / (k * k)).astype(x.dtype)


def high_frequency(x: np.ndarray) -> float:
  """Mean ``|x - 3x3 box mean|``: how much fine detail (texture, noise)
  the images carry."""
  return float(np.abs(x - box_mean(x, 3)).mean())


def class_means(sums: np.ndarray) -> np.ndarray:
  """``[c, 3]`` mean colours from ``class_colour_sums`` totals."""
  return sums[:, :3] / np.maximum(sums[:, 3:], 1)


def per_class_l1(error: np.ndarray, labels: np.ndarray, c: int,
                 ignore: int) -> np.ndarray:
  """``[c, 2]``: per class, the sum of ``error`` (``[N, H, W]``) over its
  pixels and their count."""
  return translation_confusion.class_colour_sums(error[..., None], labels, c,
                                                ignore)


def band_rows(height: int, bands: int):
  """``[(r0, r1)]``: ``bands`` horizontal bands of rows, top first."""
  edges = np.linspace(0, height, bands + 1).round().astype(int)
  return list(zip(edges[:-1], edges[1:]))


def band_profile(x: np.ndarray, rows) -> np.ndarray:
  """``[bands, 2]``: per band of ``[N, H, W, 3]`` images, the mean
  intensity and the mean per-image std over the band's pixels and
  channels (contrast)."""
  return np.array([(x[:, r0:r1].mean(),
                    x[:, r0:r1].reshape(len(x), -1).std(1).mean())
                   for r0, r1 in rows])


def match_bands(x: np.ndarray, rows, profile: np.ndarray) -> np.ndarray:
  """``x`` with each image's bands shifted and scaled to ``profile``'s
  ``[bands, 2]`` mean intensity and contrast (``band_profile``)."""
  out = x.copy()
  for (r0, r1), (mean, contrast) in zip(rows, profile):
    band = x[:, r0:r1]
    m = band.mean((1, 2, 3), keepdims=True)
    sd = band.reshape(len(x), -1).std(1)[:, None, None, None]
    out[:, r0:r1] = (band - m) * contrast / np.maximum(sd, 1e-6) + mean
  return out


def frame_coords(h: int, w: int) -> np.ndarray:
  """``[h, w, 2]``: each pixel's column and row in [-0.5, 0.5]."""
  rows, cols = np.meshgrid(np.linspace(-0.5, 0.5, h),
                           np.linspace(-0.5, 0.5, w), indexing="ij")
  return np.stack([cols, rows], -1)


def spatial_trend(x: np.ndarray, labels: np.ndarray, c: int,
                  ignore: int) -> np.ndarray:
  """``[N, 2, 3]``: per image and RGB channel, the least-squares slopes of
  its colours over the columns and the rows of the frame
  (``frame_coords``), within classes: colours and coordinates both taken
  relative to their class's mean in that image, so class layout alone
  gives no slope."""
  coords = frame_coords(*labels.shape[1:])
  out = np.zeros((len(x), 2, x.shape[-1]))
  for i, (image, label) in enumerate(zip(x, labels)):
    both = np.concatenate([coords, image], -1)
    sums = translation_confusion.class_colour_sums(both[None], label[None], c,
                                                   ignore)
    valid = label != ignore
    centred = both[valid] - (sums[:, :-1] / np.maximum(sums[:, -1:], 1))[
        label[valid]]
    out[i] = np.linalg.lstsq(centred[:, :2], centred[:, 2:], rcond=None)[0]
  return out


def remove_trend(x: np.ndarray, slopes: np.ndarray,
                 axes=(0, 1)) -> np.ndarray:
  """``x`` minus the linear trends ``slopes`` (``spatial_trend``) over the
  given axes (0: columns, 1: rows)."""
  coords = frame_coords(*x.shape[1:3])
  out = x.astype(np.float64)
  for a in axes:
    out = out - coords[None, :, :, a, None] * slopes[:, a][:, None, None, :]
  return out.astype(x.dtype)


def percent(part, whole, digits: int = 1) -> float:
  """``100 * part / whole`` rounded; 0 when ``whole`` is 0."""
  return round(100 * float(part / max(whole, 1)), digits)


MIN_SEGMENT = 20


def segment_colours(images: np.ndarray, labels: np.ndarray, c: int,
                    ignore: int, class_colours: np.ndarray) -> np.ndarray:
  """``[c, 3]``: per class, over its segments (the class in one image, at
  least ``MIN_SEGMENT`` pixels), the number of segments, how many have a
  mean colour nearest (L1) to ``class_colours[class]`` of all of
  ``class_colours`` (``[c, 3]``), and the sum of their L1 distances to
  it."""
  out = np.zeros((c, 3))
  for image, label in zip(images, labels):
    sums = translation_confusion.class_colour_sums(image[None], label[None],
                                                   c, ignore)
    for k in np.flatnonzero(sums[:, 3] >= MIN_SEGMENT):
      dist = np.abs(class_colours - sums[k, :3] / sums[k, 3]).sum(1)
      out[k] += (1, dist.argmin() == k, dist[k])
  return out


def band_accuracy(pred: np.ndarray, labels: np.ndarray, rows,
                  ignore: int) -> np.ndarray:
  """``[bands, 2]``: per band, correct and labelled pixel counts."""
  out = []
  for r0, r1 in rows:
    p, y = pred[:, r0:r1], labels[:, r0:r1]
    valid = y != ignore
    out.append((((p == y) & valid).sum(), valid.sum()))
  return np.array(out, np.int64)


def main(argv):
  del argv
  config, task, t2s, s2t = finished_run.load_translators()
  c, ignore = config.data.num_classes, config.data.ignore_label
  names = list(config.data.class_names)
  classes = lambda x: np.asarray(task(x, "S")).argmax(-1)
  cm = lambda x, y: np.asarray(evaluate.confusion_matrix(classes(x), y, c,
                                                         ignore))
  colours = translation_confusion.class_colour_sums
  views = ("ideal", "ideal_box3", "ideal_box5", "learned", "learned_box3",
           "learned_box5", "ideal_deramped_columns",
           "learned_deramped_columns", "learned_deramped")
  cms = {v: np.zeros((c, c), np.int64) for v in views}
  energy = {"source": [], "ideal": [], "learned": []}
  sums = {k: np.zeros((c, 4))
          for k in ("t_ideal", "t2s", "s_ideal", "s2t", "source")}
  segments = {k: np.zeros((c, 3)) for k in ("ideal", "learned")}
  cycles = {k: np.zeros((c, 2)) for k in ("source", "target", "target_noise")}
  rng = np.random.default_rng(0)
  rows = None  # from the first image's height
  profiles = {k: [] for k in ("source", "ideal", "learned")}
  trends = {k: [] for k in ("source", "ideal", "learned")}
  band_hits = {k: np.zeros((FLAGS.bands, 2), np.int64)
               for k in ("ideal", "learned", "matched")}
  for i, batch in enumerate(experiments._val(config, 32, "source")):  # pylint: disable=protected-access
    x, y = np.asarray(batch["image"][0]), np.asarray(batch["label"][0])
    energy["source"].append(high_frequency(x))
    rows = rows or band_rows(x.shape[1], FLAGS.bands)
    profiles["source"].append(band_profile(x, rows))
    trends["source"].append(spatial_trend(x, y, c, ignore))
    ideal = demo_seg.restyle(np.where(y == ignore, 0, y),
                             config.target.builder_config, (config.seed, i, 17))
    x_st = np.asarray(s2t(x))
    sums["s_ideal"] += colours(ideal, y, c, ignore)
    sums["source"] += colours(x, y, c, ignore)
    sums["s2t"] += colours(x_st, y, c, ignore)
    cycles["source"] += per_class_l1(
        np.abs(np.asarray(t2s(x_st)) - x).sum(-1), y, c, ignore)
  for i, batch in enumerate(experiments._val(config, 32)):  # pylint: disable=protected-access
    x, y = np.asarray(batch["image"][0]), np.asarray(batch["label"][0])
    # The seeds experiments.ideal_view_confusion draws the ideal view with.
    ideal = demo_seg.restyle(np.where(y == ignore, 0, y),
                             config.source.builder_config, (config.seed, i, 13))
    x_ts = np.asarray(t2s(x))
    energy["ideal"].append(high_frequency(ideal))
    energy["learned"].append(high_frequency(x_ts))
    for view, images in (("ideal", ideal), ("learned", x_ts)):
      profiles[view].append(band_profile(images, rows))
    matched = match_bands(x_ts, rows, np.mean(profiles["source"], 0))
    for view, images in (("ideal", ideal), ("learned", x_ts),
                         ("matched", matched)):
      band_hits[view] += band_accuracy(classes(images), y, rows, ignore)
    trend = {"ideal": spatial_trend(ideal, y, c, ignore),
             "learned": spatial_trend(x_ts, y, c, ignore)}
    for k, v in trend.items():
      trends[k].append(v)
    for view, images in (("ideal", ideal), ("ideal_box3", box_mean(ideal, 3)),
                         ("ideal_box5", box_mean(ideal, 5)),
                         ("learned", x_ts),
                         ("learned_box3", box_mean(x_ts, 3)),
                         ("learned_box5", box_mean(x_ts, 5)),
                         ("ideal_deramped_columns",
                          remove_trend(ideal, trend["ideal"], (0,))),
                         ("learned_deramped_columns",
                          remove_trend(x_ts, trend["learned"], (0,))),
                         ("learned_deramped",
                          remove_trend(x_ts, trend["learned"]))):
      cms[view] += cm(images, y)
    for view, images in (("ideal", ideal), ("learned", x_ts)):
      segments[view] += segment_colours(images, y, c, ignore,
                                        class_means(sums["source"]))
    sums["t_ideal"] += colours(ideal, y, c, ignore)
    sums["t2s"] += colours(x_ts, y, c, ignore)
    cycles["target"] += per_class_l1(
        np.abs(np.asarray(s2t(x_ts)) - x).sum(-1), y, c, ignore)
    noisy = cycle_steganography.with_noise(x_ts, FLAGS.sigma, rng)
    cycles["target_noise"] += per_class_l1(
        np.abs(np.asarray(s2t(noisy)) - x).sum(-1), y, c, ignore)
  off = lambda a, b: np.abs(class_means(sums[a]) - class_means(sums[b])).sum(1)
  mean_l1 = lambda k: cycles[k][:, 0] / np.maximum(cycles[k][:, 1], 1)
  share = sums["s_ideal"][:, 3] / sums["s_ideal"][:, 3].sum()
  iou = {v: 100 * evaluate.iou_from_confusion(m) for v, m in cms.items()}
  result = dict(
      workdir=FLAGS.workdir, method=FLAGS.method, seed=FLAGS.seed,
      sigma=FLAGS.sigma,
      f_s_miou={v: round(100 * evaluate.mean_iou(m), 2) for v, m in cms.items()},
      high_frequency={k: round(float(np.mean(v)), 4) for k, v in energy.items()},
      mean_abs_slope={k: dict(zip(("columns", "rows"), np.round(
          np.abs(np.concatenate(v)).mean((0, 2)), 4).tolist()))
                      for k, v in trends.items()},
      segments={v: dict(
          count=int(m[:, 0].sum()),
          nearest_own_class=percent(m[:, 1].sum(), m[:, 0].sum()),
          mean_l1_to_own_class=round(float(m[:, 2].sum() / max(
              m[:, 0].sum(), 1)), 3)) for v, m in segments.items()},
      bands=dict(rows=[[int(a), int(b)] for a, b in rows], **{
          f"f_s_accuracy_{v}": [percent(h, n, 2) for h, n in hits]
          for v, hits in band_hits.items()}, **{
              f"{k}_{stat}": [round(float(p), 3) for p in
                              np.mean(v, 0)[:, j]]
              for k, v in profiles.items()
              for j, stat in enumerate(("mean", "contrast"))}),
      per_class={name: dict(
          source_share=round(float(share[k]), 4),
          t2s_colour_off=round(float(off("t2s", "t_ideal")[k]), 3),
          s2t_colour_off=round(float(off("s2t", "s_ideal")[k]), 3),
          source_cycle_l1=round(float(mean_l1("source")[k]), 3),
          target_cycle_l1=round(float(mean_l1("target")[k]), 3),
          target_cycle_l1_noise=round(float(mean_l1("target_noise")[k]), 3),
          f_s_iou_learned=round(float(iou["learned"][k]), 1),
          f_s_iou_ideal_box5=round(float(iou["ideal_box5"][k]), 1),
          segments_nearest_own_ideal=percent(segments["ideal"][k, 1],
                                             segments["ideal"][k, 0]),
          segments_nearest_own_learned=percent(segments["learned"][k, 1],
                                               segments["learned"][k, 0]))
                 for k, name in enumerate(names)})
  print("F_S mIoU: " + ", ".join(f"{v} {s}" for v, s in
                                 result["f_s_miou"].items()))
  print("high-frequency energy: " + ", ".join(
      f"{k} {v}" for k, v in result["high_frequency"].items()))
  print("segments: " + "; ".join(
      f"{k} {v}" for k, v in result["segments"].items()))
  print("mean |slope| within classes: " + "; ".join(
      f"{k} {v}" for k, v in result["mean_abs_slope"].items()))
  print("per band of rows, top first: " + "; ".join(
      f"{k} {v}" for k, v in result["bands"].items()))
  cols = list(next(iter(result["per_class"].values())))
  print("| class | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  for name, row in result["per_class"].items():
    print(f"| {name} | " + " | ".join(str(row[k]) for k in cols) + " |")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
