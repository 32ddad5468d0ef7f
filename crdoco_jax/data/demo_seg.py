"""Embedded synthetic segmentation domains: flat "game", textured "real", fog.

All domains draw street-like layouts from the same sampler (horizon, road in
perspective, sidewalks, buildings, trees, cars, people, poles with occlusion)
and differ only in appearance, so shape cues transfer and colour cues do not:

* ``source`` ("game engine"): flat shading, one colour per class with a small
  per-instance jitter, no noise.
* ``target`` ("real"): a remapped palette, per-class procedural textures,
  a lighting gradient, random brightness/contrast/colour cast, blur and noise.
* ``fog`` ("real" at foggy dusk): a third palette, softer textures, haze
  that thickens towards the top of the frame (farther away), a dim blue
  dusk light, blur and stronger noise. ``source -> fog`` is a second pair in
  the paper's synthetic -> real direction (README, "Evidence").

Everything is pure numpy and deterministic: ``make_example`` derives its RNG
from ``(seed, domain, split, index)``. Images are ``uint8 [H, W, 3]``, labels
``uint8 [H, W]`` class ids in ``[0, NUM_CLASSES)`` with every pixel labelled
(``IGNORE_LABEL`` never occurs). Importing the module also registers the tfds
builder ``crdoco_demo_seg`` with configs ``source``, ``target`` and ``fog``::

  builder = demo_seg.build("target", data_dir)
  val = builder.as_data_source(split="val")  # val[i]["id"] == b"val_%05d" % i
"""
import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from crdoco_jax.data import folder
from crdoco_jax.data import registration

CLASS_NAMES: Tuple[str, ...] = ("sky", "road", "sidewalk", "building",
                                "vegetation", "car", "person", "pole")
NUM_CLASSES: int = len(CLASS_NAMES)
(SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, CAR, PERSON,
 POLE) = range(NUM_CLASSES)
IGNORE_LABEL = 255
IMAGE_SIZE = 64
DOMAINS = ("source", "target", "fog")
SPLITS = ("train", "val")
# Examples per split and domain. The builder reads this at generation time, so
# tests may monkeypatch it smaller.
SPLIT_SIZES: Dict[str, int] = {"train": 2000, "val": 300}
DATASET_NAME = "crdoco_demo_seg"

# Flat "game" colours (RGB), one per class in CLASS_NAMES order.
SOURCE_PALETTE = np.array(
    [(120, 180, 245), (95, 95, 100), (200, 190, 170), (170, 110, 80),
     (70, 150, 50), (40, 70, 190), (220, 60, 50), (230, 210, 60)],
    np.float32)
# "Real" colours, chosen so that most classes land nearest to a *different*
# source class: a colour-only source model has to fail on the target.
TARGET_PALETTE = np.array(
    [(225, 215, 200), (140, 120, 95), (90, 100, 120), (120, 135, 150),
     (50, 85, 70), (150, 30, 40), (170, 120, 30), (40, 40, 45)],
    np.float32)
# Foggy dusk colours before the haze and the light; again most classes sit
# nearest to a different source class.
FOG_PALETTE = np.array(
    [(200, 200, 210), (60, 55, 60), (150, 150, 140), (95, 60, 115),
     (40, 95, 105), (235, 205, 60), (60, 150, 60), (205, 90, 60)],
    np.float32)
PALETTES = {"source": SOURCE_PALETTE, "target": TARGET_PALETTE,
            "fog": FOG_PALETTE}
# Per-instance colour std.
JITTERS = {"source": 8.0, "target": 12.0, "fog": 12.0}


def _check(value: str, allowed: Tuple[str, ...], what: str) -> None:
  if value not in allowed:
    raise ValueError(f"Unknown {what} {value!r}; expected one of {allowed}.")


@functools.lru_cache(maxsize=None)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates ``(ys, xs)``, each float32 ``[size, size]``."""
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  ys.flags.writeable = xs.flags.writeable = False  # Shared through the cache.
  return ys, xs


# ---------------------------------------------------------------- layouts
def _rect(ys, xs, y0, y1, x0, x1) -> np.ndarray:
  """Bool ``[H, W]``: pixel centres in ``[y0, y1) x [x0, x1)``."""
  return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def _ellipse(ys, xs, cy, cx, ry, rx) -> np.ndarray:
  """Bool ``[H, W]``: pixel centres inside the axis-aligned ellipse."""
  return ((ys - cy) / ry)**2 + ((xs - cx) / rx)**2 <= 1.0


class _Canvas:
  """Label map plus instance ids, painted back to front (later occludes)."""

  def __init__(self, size: int):
    self.label = np.full((size, size), SKY, np.uint8)
    self.instances = np.zeros((size, size), np.int32)
    self._count = 0

  def paint(self, mask: np.ndarray, cls: int) -> None:
    self._count += 1
    self.label[mask] = cls
    self.instances[mask] = self._count


def _sample_scene(rng: np.random.Generator,
                  size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Street layout: ``(label uint8 [size, size], instances int32 ditto)``.

  Instance ids (0 = the sky) let the renderers vary colour per object.
  """
  ys, xs = _grid(size)
  canvas = _Canvas(size)
  horizon = rng.uniform(0.3, 0.55) * size
  # Road edges converge to a vanishing point on the horizon; t in [0, 1] is
  # the perspective scale (0 at the horizon, 1 at the bottom row).
  vanish_x = rng.uniform(0.3, 0.7) * size
  half_l, half_r = rng.uniform(0.25, 0.8, size=2) * size
  bend = rng.uniform(-0.3, 0.3) * size
  walk = rng.uniform(1.3, 2.2)  # Sidewalk outer edge, in road half-widths.

  def centre(t):
    return vanish_x + bend * t * (1.0 - t)

  # Buildings: a skyline of random widths, lower near the vanishing point
  # (far away); gaps leave sky.
  x = 0.0
  while x < size:
    width = rng.uniform(0.08, 0.3) * size
    if rng.random() < 0.8:
      far = min(1.0, abs(x + width / 2 - vanish_x) / (0.5 * size))
      top = horizon * (1.0 - rng.uniform(0.1, 1.0) * (0.35 + 0.65 * far))
      canvas.paint(_rect(ys, xs, top, horizon + 1, x, x + width), BUILDING)
    x += width

  t_map = np.clip((ys - horizon) / (size - horizon), 0.0, 1.0)
  c_map = centre(t_map)
  ground = ys >= horizon
  # Beyond the sidewalk: grass (labelled vegetation) or more pavement.
  canvas.paint(ground, VEGETATION if rng.random() < 0.5 else SIDEWALK)
  canvas.paint(ground & (xs >= c_map - walk * half_l * t_map)
               & (xs < c_map + walk * half_r * t_map), SIDEWALK)
  canvas.paint(ground & (xs >= c_map - half_l * t_map)
               & (xs < c_map + half_r * t_map), ROAD)

  # Objects stand on the ground at foot row y; sizes scale with t. Each is
  # (y, mask, class) and they are painted far (small y) to near.
  objects: List[Tuple[float, np.ndarray, int]] = []

  def foot():
    t = rng.uniform(0.08, 1.1)
    return t, horizon + t * (size - horizon)

  def beside_road(t, lo, hi):
    # x at t across the sidewalk side: lo/hi in road half-widths.
    side = rng.choice((-1.0, 1.0))
    half = half_l if side < 0 else half_r
    return centre(t) + side * half * t * rng.uniform(lo, hi)

  for _ in range(rng.poisson(1.5)):  # Cars, on the road.
    t, y = foot()
    x = centre(t) + rng.uniform(-0.7 * half_l, 0.7 * half_r) * t
    w = max(2.0, t * rng.uniform(0.3, 0.5) * size)
    h = w * rng.uniform(0.45, 0.65)
    shift = rng.uniform(-0.1, 0.1) * w
    mask = (_rect(ys, xs, y - 0.6 * h, y, x - w / 2, x + w / 2)
            | _rect(ys, xs, y - h, y - 0.55 * h, x - 0.3 * w + shift,
                    x + 0.3 * w + shift))
    objects.append((y, mask, CAR))
  for _ in range(rng.poisson(1.5)):  # People, on the sidewalk.
    t, y = foot()
    x = beside_road(t, 1.05, walk)
    h = max(3.0, t * rng.uniform(0.35, 0.5) * size)
    w = max(1.0, 0.28 * h)
    gap = 0.08 * w
    mask = (_ellipse(ys, xs, y - 0.88 * h, x, max(0.6, 0.11 * h),
                     max(0.6, 0.4 * w))
            | _rect(ys, xs, y - 0.78 * h, y - 0.45 * h, x - w / 2, x + w / 2)
            | _rect(ys, xs, y - 0.45 * h, y, x - w / 2, x - gap)
            | _rect(ys, xs, y - 0.45 * h, y, x + gap, x + w / 2))
    objects.append((y, mask, PERSON))
  for _ in range(rng.poisson(1.0)):  # Poles, at the kerb, some with an arm.
    t, y = foot()
    x = beside_road(t, 1.0, 1.15)
    h = t * rng.uniform(0.9, 1.4) * size
    w = max(1.0, t * 0.04 * size)
    mask = _rect(ys, xs, y - h, y, x - w / 2, x + w / 2)
    if rng.random() < 0.5:
      arm = rng.choice((-1.0, 1.0)) * 0.15 * h
      mask |= _rect(ys, xs, y - h, y - h + w, min(x, x + arm), max(x, x + arm))
    objects.append((y, mask, POLE))
  for _ in range(rng.poisson(1.5)):  # Trees, beyond the sidewalk.
    t, y = foot()
    x = beside_road(t, walk, walk + 0.6)
    trunk_h = t * rng.uniform(0.2, 0.35) * size
    trunk_w = max(1.0, t * 0.05 * size)
    r = max(1.0, t * rng.uniform(0.15, 0.3) * size)
    ry = r * rng.uniform(0.8, 1.3)
    mask = (_rect(ys, xs, y - trunk_h, y, x - trunk_w / 2, x + trunk_w / 2)
            | _ellipse(ys, xs, y - trunk_h - 0.7 * ry, x, ry, r))
    objects.append((y, mask, VEGETATION))

  objects.sort(key=lambda o: o[0])
  for _, mask, cls in objects:
    canvas.paint(mask, cls)
  return canvas.label, canvas.instances


def sample_layout(rng: np.random.Generator, size: int = IMAGE_SIZE
                  ) -> np.ndarray:
  """Samples a street layout; the layout *is* its label map.

  Args:
    rng: numpy generator (consumed).
    size: image side in pixels.
  Returns:
    ``uint8 [size, size]`` class ids in ``[0, NUM_CLASSES)``.
  """
  return _sample_scene(rng, size)[0]


# ---------------------------------------------------------------- rendering
@functools.lru_cache(maxsize=None)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
  """``[size, cells + 1]`` linear interpolation weights from a coarse grid."""
  pos = (np.arange(size) + 0.5) / size * cells
  lo = np.minimum(pos.astype(np.int64), cells - 1)
  frac = (pos - lo).astype(np.float32)
  weights = np.zeros((size, cells + 1), np.float32)
  weights[np.arange(size), lo] = 1.0 - frac
  weights[np.arange(size), lo + 1] = frac
  weights.flags.writeable = False
  return weights


def _smooth_noise(rng: np.random.Generator, size: int,
                  cells: int) -> np.ndarray:
  """Bilinear value noise in ``[-1, 1]``, float32 ``[size, size]``."""
  weights = _interp_matrix(size, cells)
  coarse = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
  return weights @ coarse @ weights.T


def _blur3(image: np.ndarray) -> np.ndarray:
  """Separable [1, 2, 1] / 4 blur of ``[H, W, C]`` with edge padding."""
  p = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
  p = (p[:-2] + 2.0 * p[1:-1] + p[2:]) / 4.0
  return (p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]) / 4.0


def _target_texture(label: np.ndarray, rng: np.random.Generator
                    ) -> np.ndarray:
  """Per-class luminance texture for the target domain, float32 ``[H, W]``."""
  size = label.shape[0]
  ys, xs = _grid(size)
  phase_y, phase_x = rng.integers(0, 12, size=2)
  yi, xi = ys.astype(np.int32) + phase_y, xs.astype(np.int32) + phase_x
  tile = rng.integers(4, 7)
  brick_row = yi // 3
  textures = np.zeros((NUM_CLASSES, size, size), np.float32)
  # Sky: clouds, brighter towards the horizon.
  textures[SKY] = 30.0 * _smooth_noise(rng, size, 3) + 25.0 * ys / size
  # Road: fine grain plus stains.
  textures[ROAD] = (rng.normal(0.0, 10.0, (size, size))
                    + 20.0 * _smooth_noise(rng, size, 8))
  # Sidewalk: dark tile joints.
  textures[SIDEWALK] = -35.0 * ((yi % tile == 0) | (xi % tile == 0))
  # Building: bricks (mortar rows, staggered joints) with dark windows.
  mortar = (yi % 3 == 0) | ((xi + 3 * (brick_row % 2)) % 6 == 0)
  windows = (xi % 8 >= 2) & (xi % 8 < 6) & (yi % 9 >= 2) & (yi % 9 < 6)
  textures[BUILDING] = np.where(windows, -60.0, -25.0 * mortar)
  # Vegetation: strong speckle over leafy blobs.
  textures[VEGETATION] = (rng.normal(0.0, 30.0, (size, size))
                          + 40.0 * _smooth_noise(rng, size, 12))
  # Car: horizontal specular bands.
  textures[CAR] = 30.0 * np.sin(0.9 * ys + rng.uniform(0.0, 2 * np.pi))
  # Person: cloth folds.
  textures[PERSON] = 30.0 * _smooth_noise(rng, size, 16)
  return np.take_along_axis(textures, label[None].astype(np.int64), 0)[0]


def render(label: np.ndarray, domain: str, rng: np.random.Generator,
           instances: Optional[np.ndarray] = None) -> np.ndarray:
  """Renders a label map in the appearance of ``domain``.

  Args:
    label: ``uint8 [H, W]`` class ids (square, H == W).
    domain: ``"source"`` (flat colours), ``"target"`` (textured "real") or
      ``"fog"`` (textured, hazy, dim).
    rng: numpy generator (consumed).
    instances: optional ``int [H, W]`` instance ids for per-object colour
      jitter; without it the jitter is per class.
  Returns:
    ``uint8 [H, W, 3]`` RGB image.
  Raises:
    ValueError: unknown ``domain``.
  """
  _check(domain, DOMAINS, "domain")
  if instances is None:
    instances = label
  instances = instances.astype(np.int64)
  jitter = rng.normal(0.0, JITTERS[domain],
                      (instances.max() + 1, 3)).astype(np.float32)
  image = PALETTES[domain][label] + jitter[instances]
  if domain == "target":
    image += _target_texture(label, rng)[..., None]
    image *= _light(label.shape[0], rng)
    image = _camera(image, rng, noise=(2.0, 6.0))
  elif domain == "fog":
    image += 0.6 * _target_texture(label, rng)[..., None]
    image = _camera(_dusk(_haze(image, rng), rng), rng, noise=(4.0, 8.0))
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _light(size: int, rng: np.random.Generator) -> np.ndarray:
  """Light from a random direction: a linear gain ramp ``[size, size, 1]``."""
  ys, xs = _grid(size)
  angle = rng.uniform(0.0, 2 * np.pi)
  ramp = (np.cos(angle) * (xs / size - 0.5)
          + np.sin(angle) * (ys / size - 0.5))
  return (1.0 + 2.0 * rng.uniform(0.15, 0.35) * ramp)[..., None]


def _haze(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Fog: blends towards a grey fog colour by a transmission that falls with
  distance, here the height in the frame (the top row is farthest)."""
  ys, _ = _grid(image.shape[0])
  distance = 1.0 - ys / image.shape[0]
  transmission = np.exp(-rng.uniform(0.7, 1.6) * distance)[..., None]
  fog = rng.uniform(140.0, 175.0) + rng.uniform(-8.0, 8.0, 3)
  return image * transmission + fog * (1.0 - transmission)


def _dusk(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Dim, blue dusk light."""
  return image * rng.uniform(0.7, 0.9) * np.array([0.85, 0.92, 1.1],
                                                    np.float32)


def _camera(image: np.ndarray, rng: np.random.Generator,
            noise: Tuple[float, float]) -> np.ndarray:
  """Contrast around the mean, brightness, colour cast, optics blur and
  sensor noise (after the blur, as in a real pipeline) of std in ``noise``."""
  mean = image.mean()
  image = ((image - mean) * rng.uniform(0.75, 1.25) + mean
           + rng.uniform(-20.0, 20.0) + rng.uniform(-10.0, 10.0, 3))
  image = _blur3(image)
  return image + rng.normal(0.0, rng.uniform(*noise), image.shape)


def make_example(domain: str, split: str, index: int, seed: int = 0,
                 size: int = IMAGE_SIZE) -> Dict[str, np.ndarray]:
  """Deterministic example ``index`` of ``split`` in ``domain``.

  The RNG is seeded from ``(seed, domain, split, index)`` only, so examples
  do not depend on generation order, and the two domains get independent
  (unpaired) layouts for the same index.

  Returns:
    ``{"image": uint8 [size, size, 3], "label": uint8 [size, size]}``.
  Raises:
    ValueError: unknown ``domain`` or ``split``.
  """
  _check(domain, DOMAINS, "domain")
  _check(split, SPLITS, "split")
  rng = np.random.default_rng(np.random.SeedSequence(
      [seed, DOMAINS.index(domain), SPLITS.index(split), index]))
  label, instances = _sample_scene(rng, size)
  return {"image": render(label, domain, rng, instances), "label": label}


def restyle(labels: np.ndarray, domain: str, seed: Sequence[int]
            ) -> np.ndarray:
  """Renders label maps in ``domain``'s appearance: a perfect translation
  of the scenes they label into that domain (the diagnostic
  ``translator.ideal_t2s``; README, "Evidence").

  Args:
    labels: int ``[N, H, W]`` class ids in ``[0, NUM_CLASSES)``.
    domain: one of ``DOMAINS``.
    seed: integers the rendering's RNG is seeded from (pure in them).
  Returns:
    float32 ``[N, H, W, 3]`` images in [-1, 1], as the input pipeline's.
  Raises:
    ValueError: unknown ``domain``, or a label outside the classes.
  """
  labels = np.asarray(labels)
  bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
  if bad.size:
    raise ValueError(f"restyle: label {int(bad[0])} is not a class id of "
                     f"the demo (0..{NUM_CLASSES - 1}); an ideal translation "
                     f"needs every pixel labelled.")
  rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
  images = [render(label.astype(np.int64), domain, rng) for label in labels]
  return np.stack(images).astype(np.float32) / 127.5 - 1.0


# ---------------------------------------------------------------- tfds builder
class DemoGenerator:
  """Generation shared by the segmentation, depth and flow demo builders:
  example ``i`` of each split is ``_make_example(domain, split, i, seed)``
  plus its ``id`` (``_split_sizes`` is the module's ``SPLIT_SIZES``, which
  tests shrink in place)."""

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated locally.
    return {split: self._generate_examples(split)
            for split in self._split_sizes}

  def _generate_examples(self, split: str):
    config = self.builder_config
    for index in range(self._split_sizes[split]):
      key = f"{split}_{index:05d}"
      yield key, {**self._make_example(config.domain, split, index,
                                       config.seed), "id": key}


def build_demo(builder_cls, domain: str, data_dir: str,
               file_format: str = "array_record"):
  """Generates ``domain`` of a demo builder under ``data_dir`` if needed;
  returns the builder. The default ``array_record`` format supports random
  access through ``builder.as_data_source()`` / ``tfds.data_source``."""
  configs = tuple(config.name for config in builder_cls.BUILDER_CONFIGS)
  _check(domain, configs, "domain")
  builder = builder_cls(config=domain, data_dir=data_dir)
  builder.download_and_prepare(file_format=file_format)
  return builder


def _record(domain: str, split: str, index: int, seed: int):
  """:func:`make_example` as stored: labels with a channel axis."""
  example = make_example(domain, split, index, seed=seed)
  return {"image": example["image"], "label": example["label"][..., None]}


@dataclasses.dataclass(eq=False)
class DemoDomainConfig(tfds.core.BuilderConfig):
  """One domain of a demo builder; ``seed`` selects an independent draw."""
  domain: str = "source"
  seed: int = 0


class CrdocoDemoSeg(DemoGenerator, tfds.core.GeneratorBasedBuilder,
                    skip_registration=registration.already_registered(
                        DATASET_NAME)):
  """Synthetic street scenes, 64x64: flat, textured, and textured in fog."""

  _make_example = staticmethod(_record)
  _split_sizes = SPLIT_SIZES

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DemoDomainConfig(name="source", domain="source",
                       description="Flat-shaded 'game engine' domain."),
      DemoDomainConfig(name="target", domain="target",
                       description="Textured, noisy 'real' domain."),
      DemoDomainConfig(name="fog", domain="fog",
                       description="'Real' domain at foggy dusk."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # Record i is example i (generation order kept); loaders shuffle.
    return folder.segmentation_info(self, __doc__, (IMAGE_SIZE, IMAGE_SIZE))


def build(domain: str, data_dir: str,
          file_format: str = "array_record") -> CrdocoDemoSeg:
  """Generates ``domain`` under ``data_dir`` if needed; returns the builder."""
  return build_demo(CrdocoDemoSeg, domain, data_dir, file_format)
