"""Embedded synthetic optical-flow domain pair: moving textured shapes.

Both domains draw scenes from the same motion sampler (a textured
background that translates and zooms, like a camera moving, and a few
ellipses and rectangles, each translating on its own, painted back to
front) and differ only in appearance, as a synthetic -> real flow setting
(e.g. Sintel / FlyingChairs -> KITTI) does:

* ``source`` ("render"): saturated colours, crisp high-contrast grain,
  clean, constant lighting between the frames; flow valid everywhere (as
  Sintel).
* ``target`` ("real camera"): muted palette, lower-contrast grain, a
  brightness change between the frames, blur and sensor noise; flow valid
  where it lands inside the image.

Why the source looks this way: synthetic flow training sets (FlyingChairs,
Sintel) are as richly textured as the real scenes they are used for (KITTI);
they differ in colour, lighting, noise and blur, not in whether there is
anything to match. So the source's value-noise grain (cells 1.75 and 5 px)
is as matchable as the target's (2.5 and 7 px, then blurred): a little
finer and sharper, as a render without optics is, and its base colours stay
within the grain's headroom so saturation does not clip it flat. (Version
1.1.0 gave the source coarse smooth blotches, 4 and 10 px cells, over
saturated, often clipped colours: nets trained on it learned little flow
even on the source and nothing that beat zero flow on the target. With the
source's cells equal to the target's, source-only nets matched the oracle
within seed noise, leaving no gap to adapt; the finer, sharper grain keeps
one.)

Flow is exact: textures are functions of continuous surface coordinates, so
frame 2 is rendered by moving the surfaces, and the flow of a frame-1 pixel
is the motion of the surface it shows (u right, v down, pixels). Pure numpy
and deterministic from ``(seed, domain, split, index)``. Importing registers
the tfds builder ``crdoco_demo_flow`` (configs ``source``, ``target``) with
``image``, ``image2`` uint8 ``[H, W, 3]``, ``label`` float32 ``[H, W, 2]``,
``valid`` uint8 ``[H, W]`` and ``id``.
"""
from typing import Dict, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from crdoco_jax.data import demo_depth, demo_seg, registration

IMAGE_SIZE = 64
DOMAINS = ("source", "target")
SPLITS = ("train", "val")
SPLIT_SIZES: Dict[str, int] = {"train": 1000, "val": 200}
DATASET_NAME = "crdoco_demo_flow"
MAX_OBJECT_MOTION = 4.0  # px per frame, each axis
MAX_CAMERA_MOTION = 2.0
MAX_ZOOM = 0.05


def _check(value, allowed, what):
  if value not in allowed:
    raise ValueError(f"Unknown {what} {value!r}; expected one of {allowed}.")


class _Texture:
  """Colour as a function of continuous surface coordinates: a base colour
  plus value noise (bilinear interpolation of random grids at two cell
  sizes), so frame 2 can be rendered exactly at moved coordinates and
  matches are unique (no periodic pattern to alias)."""

  def __init__(self, rng: np.random.Generator, domain: str):
    source = domain == "source"
    if source:  # saturated colours, fine crisp high-contrast grain; the
      # base stays inside the grain's headroom so it is not clipped
      self.base = 45.0 + 0.65 * rng.uniform(0, 255, 3) * np.array(
          [1.0, 0.9, 1.0])
      self.cells, amp = (1.75, 5.0), (40.0, 35.0)
    else:  # muted greys and browns, coarser grain (blurred later)
      self.base = rng.uniform(50, 200) + rng.uniform(-25, 25, 3)
      self.cells, amp = (2.5, 7.0), (30.0, 30.0)
    n = 48  # grid period n * cell px, far beyond any motion
    self.grids = [rng.uniform(-a, a, (n, n, 3)) for a in amp]

  def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    colour = np.broadcast_to(self.base, x.shape + (3,)).astype(np.float64)
    for grid, cell in zip(self.grids, self.cells):
      n = grid.shape[0]
      gx, gy = x / cell, y / cell
      x0, y0 = np.floor(gx), np.floor(gy)
      fx, fy = (gx - x0)[..., None], (gy - y0)[..., None]
      x0, y0 = x0.astype(np.int64) % n, y0.astype(np.int64) % n
      x1, y1 = (x0 + 1) % n, (y0 + 1) % n
      colour = colour + ((1 - fy) * ((1 - fx) * grid[y0, x0]
                                     + fx * grid[y0, x1])
                         + fy * ((1 - fx) * grid[y1, x0] + fx * grid[y1, x1]))
    return colour


def _sample_scene(rng: np.random.Generator, domain: str, size: int):
  """Background texture and motion, and the objects (shape, texture,
  position in frame 1, motion), back to front."""
  camera = dict(t=rng.uniform(-MAX_CAMERA_MOTION, MAX_CAMERA_MOTION, 2),
                zoom=rng.uniform(-MAX_ZOOM, MAX_ZOOM),
                texture=_Texture(rng, domain))
  objects: List[dict] = []
  for _ in range(2 + rng.poisson(1.5)):
    objects.append(dict(
        ellipse=rng.random() < 0.5,
        centre=rng.uniform(0.1, 0.9, 2) * size,
        radii=rng.uniform(0.06, 0.22, 2) * size,
        t=rng.uniform(-MAX_OBJECT_MOTION, MAX_OBJECT_MOTION, 2),
        texture=_Texture(rng, domain)))
  return camera, objects


def _inside(obj: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Surface coordinates relative to the object centre -> inside mask."""
  rx, ry = obj["radii"]
  if obj["ellipse"]:
    return (x / rx) ** 2 + (y / ry) ** 2 <= 1.0
  return (np.abs(x) <= rx) & (np.abs(y) <= ry)


def _render(camera, objects, size: int, frame: int
            ) -> Tuple[np.ndarray, np.ndarray]:
  """``(colour float [S, S, 3], flow float [S, S, 2])`` of frame 0 or 1;
  the flow is only meaningful for frame 0."""
  ys, xs = demo_seg._grid(size)  # pylint: disable=protected-access
  centre = size / 2.0
  # Background point seen at each pixel (frame 0: the pixel itself).
  scale = 1.0 + camera["zoom"] * frame
  bx = centre + (xs - camera["t"][0] * frame - centre) / scale
  by = centre + (ys - camera["t"][1] * frame - centre) / scale
  colour = camera["texture"](bx, by)
  flow = np.stack([camera["zoom"] * (xs - centre) + camera["t"][0],
                   camera["zoom"] * (ys - centre) + camera["t"][1]], -1)
  for obj in objects:  # back to front: later ones occlude
    ox = xs - obj["centre"][0] - obj["t"][0] * frame
    oy = ys - obj["centre"][1] - obj["t"][1] * frame
    mask = _inside(obj, ox, oy)
    colour = np.where(mask[..., None], obj["texture"](ox, oy), colour)
    flow = np.where(mask[..., None], obj["t"], flow)
  return colour, flow


def _camera_look(frames: List[np.ndarray], rng: np.random.Generator
                 ) -> List[np.ndarray]:
  """Target look: a brightness change between the frames, a colour cast,
  blur and independent sensor noise per frame."""
  cast = rng.uniform(0.85, 1.15, 3)
  out = []
  for colour in frames:
    colour = colour * cast * rng.uniform(0.93, 1.07) + rng.uniform(-5, 5)
    colour = demo_seg._blur3(colour)  # pylint: disable=protected-access
    out.append(colour + rng.normal(0.0, rng.uniform(2.0, 5.0), colour.shape))
  return out


def make_example(domain: str, split: str, index: int, seed: int = 0,
                 size: int = IMAGE_SIZE) -> Dict[str, np.ndarray]:
  """Deterministic example: ``{'image', 'image2': uint8 [S, S, 3],
  'label': float32 [S, S, 2] flow of frame 1 in px, 'valid': uint8 [S, S]}``.
  """
  _check(domain, DOMAINS, "domain")
  _check(split, SPLITS, "split")
  rng = np.random.default_rng(np.random.SeedSequence(
      [seed, DOMAINS.index(domain), SPLITS.index(split), index, 2]))
  camera, objects = _sample_scene(rng, domain, size)
  (frame1, flow), (frame2, _) = (_render(camera, objects, size, f)
                                 for f in (0, 1))
  frames = [frame1, frame2]
  if domain == "target":
    frames = _camera_look(frames, rng)
    ys, xs = demo_seg._grid(size)  # pylint: disable=protected-access
    x2, y2 = xs + flow[..., 0], ys + flow[..., 1]
    valid = (x2 >= 0) & (x2 < size) & (y2 >= 0) & (y2 < size)
  else:
    valid = np.ones((size, size), bool)
  image, image2 = (np.clip(np.rint(f), 0, 255).astype(np.uint8)
                   for f in frames)
  return {"image": image, "image2": image2,
          "label": flow.astype(np.float32), "valid": valid.astype(np.uint8)}


def warp_error(example: Dict[str, np.ndarray]) -> float:
  """Mean |frame1(p) - frame2(p + flow(p))| (bilinear) over pixels that land
  inside the image: small for the true flow (occlusions aside)."""
  f1 = example["image"].astype(np.float32)
  f2 = example["image2"].astype(np.float32)
  size = f1.shape[0]
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
  x, y = xs + example["label"][..., 0], ys + example["label"][..., 1]
  ok = (x >= 0) & (x <= size - 1) & (y >= 0) & (y <= size - 1)
  x, y = np.clip(x, 0, size - 1.001), np.clip(y, 0, size - 1.001)
  x0, y0 = x.astype(int), y.astype(int)
  ax, ay = (x - x0)[..., None], (y - y0)[..., None]
  warped = ((1 - ay) * ((1 - ax) * f2[y0, x0] + ax * f2[y0, x0 + 1])
            + ay * ((1 - ax) * f2[y0 + 1, x0] + ax * f2[y0 + 1, x0 + 1]))
  return float(np.abs(warped - f1)[ok].mean())


class CrdocoDemoFlow(demo_seg.DemoGenerator,
                     tfds.core.GeneratorBasedBuilder,
                     skip_registration=registration.already_registered(
                         DATASET_NAME)):
  """Moving textured shapes with exact flow, 64x64, rendered and 'real'."""

  _make_example = staticmethod(make_example)
  _split_sizes = SPLIT_SIZES

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Value-noise textures (unique matches), milder "
                            "brightness change between target frames.",
                   "1.2.0": "Finer, unclipped source grain (source-trained "
                            "flow transfers to the target)."}
  BUILDER_CONFIGS = [
      demo_seg.DemoDomainConfig(name="source", domain="source",
                                description="Clean rendered frame pairs."),
      demo_seg.DemoDomainConfig(name="target", domain="target",
                                description="Noisy 'real' frame pairs."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return demo_depth.dense_info(self, __doc__, IMAGE_SIZE, 2,
                                 second_frame=True, valid=True)


def build(domain: str, data_dir: str,
          file_format: str = "array_record") -> "CrdocoDemoFlow":
  """Generates ``domain`` under ``data_dir`` if needed; returns the builder."""
  return demo_seg.build_demo(CrdocoDemoFlow, domain, data_dir, file_format)
