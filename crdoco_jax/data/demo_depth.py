"""Embedded synthetic depth domain pair: rendered rooms, "SUNCG" vs "NYU".

Both domains draw rooms from the same sampler (pinhole camera at a random
height inside a box room with floor, ceiling, side and back walls, plus a
few box-shaped pieces of furniture on the floor) and differ only in
appearance, as the paper's SUNCG -> NYUv2 setting does:

* ``source`` ("synthetic render"): flat colours per surface, Lambertian
  shading from one distant light, no texture, no noise, depth everywhere.
* ``target`` ("real camera"): another palette, textures fixed to the
  surfaces (floor planks, wall paint), a light at the camera whose
  brightness falls off with distance, colour cast, blur, sensor noise, and
  Kinect-like holes in the depth (depth 0 = no measurement).

Depth is exact: every pixel's ray is intersected with the planes and boxes
analytically, and the label is the z-distance (metres along the optical
axis, as NYUv2's depth maps). Pure numpy and deterministic: ``make_example``
seeds its RNG from ``(seed, domain, split, index)``. Importing registers
the tfds builder ``crdoco_demo_depth`` (configs ``source``, ``target``)
with features ``image`` uint8 ``[H, W, 3]``, ``label`` float32 depth
``[H, W, 1]`` and ``id``.
"""
import functools
from typing import Dict, Tuple

import numpy as np
import tensorflow_datasets as tfds

from crdoco_jax.data import demo_seg, registration
# Shared with the flow demo, which reaches them through this module.
from crdoco_jax.data.demo_seg import DemoGenerator, build_demo

IMAGE_SIZE = 64
DOMAINS = ("source", "target")
SPLITS = ("train", "val")
SPLIT_SIZES: Dict[str, int] = {"train": 1000, "val": 200}
DATASET_NAME = "crdoco_demo_depth"
MIN_DEPTH, MAX_DEPTH = 0.1, 10.0  # metres; every rendered depth lies inside
# Surfaces: floor, ceiling, left wall, right wall, back wall, then boxes.
FLOOR, CEILING, LEFT, RIGHT, BACK, BOX = range(6)
SOURCE_COLOURS = np.array([(150, 150, 160), (235, 235, 235), (120, 170, 210),
                           (120, 170, 210), (200, 120, 110), (0, 0, 0)],
                          np.float32)
TARGET_COLOURS = np.array([(150, 100, 60), (210, 200, 180), (190, 185, 150),
                           (170, 175, 160), (160, 170, 185), (0, 0, 0)],
                          np.float32)
_LIGHT = np.array([0.4, -0.8, -0.45], np.float32)  # towards the light


def _check(value, allowed, what):
  if value not in allowed:
    raise ValueError(f"Unknown {what} {value!r}; expected one of {allowed}.")


@functools.lru_cache(maxsize=None)
def _pixel_grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  ys.flags.writeable = xs.flags.writeable = False
  return ys, xs


def _hit_box(rays: np.ndarray, lo: np.ndarray, hi: np.ndarray
             ) -> Tuple[np.ndarray, np.ndarray]:
  """Slab test of rays from the origin against the box ``[lo, hi]``.

  Args:
    rays: ``[H, W, 3]`` directions with z = 1 (so t is the z-depth).
    lo, hi: ``[3]`` box corners.
  Returns:
    ``(t [H, W], axis [H, W])``: entry depth (inf on a miss) and the axis of
    the face entered (0 = x side, 1 = y top/bottom, 2 = z front).
  """
  with np.errstate(divide="ignore", invalid="ignore"):
    t0, t1 = lo / rays, hi / rays
  near, far = np.minimum(t0, t1), np.maximum(t0, t1)
  # A ray parallel to a slab is inside it (the origin lies between the
  # planes) or misses it; 0 / 0 gives NaN, handled here.
  parallel = rays == 0
  inside = (lo <= 0) & (0 <= hi)
  near = np.where(parallel, np.where(inside, -np.inf, np.inf), near)
  far = np.where(parallel, np.where(inside, np.inf, -np.inf), far)
  t_near, t_far = near.max(-1), far.min(-1)
  hit = (t_near <= t_far) & (t_near > 0)
  return np.where(hit, t_near, np.inf), near.argmax(-1)


def sample_room(rng: np.random.Generator, size: int = IMAGE_SIZE
                ) -> Dict[str, np.ndarray]:
  """Renders a room's geometry.

  Returns:
    ``depth`` float32 ``[size, size]`` metres, ``surface`` int ``[..]``
    (``FLOOR`` .. ``BACK``, ``BOX + k`` for box k), ``normal`` float32
    ``[.., 3]`` (camera frame, y down), ``point`` float32 ``[.., 3]`` (the
    3-D point seen), ``box_colours`` ``[k, 3]`` in [0, 1] (per-box tint).
  """
  ys, xs = _pixel_grid(size)
  f = size * rng.uniform(0.8, 1.0)
  cx, cy = size * rng.uniform(0.45, 0.55, 2)
  rays = np.stack([(xs - cx) / f, (ys - cy) / f, np.ones_like(xs)], -1)
  cam_h = rng.uniform(1.0, 1.6)  # the floor is the plane y = cam_h
  ceiling = rng.uniform(2.4, 3.2) - cam_h
  left, right = rng.uniform(1.0, 3.0, 2)
  back = rng.uniform(4.0, 9.5)
  rx, ry = rays[..., 0], rays[..., 1]
  with np.errstate(divide="ignore"):
    planes = np.stack([
        np.where(ry > 0, cam_h / ry, np.inf),
        np.where(ry < 0, ceiling / -ry, np.inf),
        np.where(rx < 0, left / -rx, np.inf),
        np.where(rx > 0, right / rx, np.inf),
        np.full_like(rx, back)], 0)
  surface = planes.argmin(0)
  depth = planes.min(0)
  normals = np.array([(0, -1, 0), (0, 1, 0), (1, 0, 0), (-1, 0, 0),
                      (0, 0, -1)], np.float32)
  normal = normals[surface]
  n_boxes = 1 + rng.poisson(1.5)
  colours = rng.uniform(0.2, 1.0, (n_boxes, 3)).astype(np.float32)
  for k in range(n_boxes):
    w, h, d = rng.uniform(0.4, 1.5), rng.uniform(0.4, 1.8), rng.uniform(
        0.4, 1.2)
    x0 = rng.uniform(-left + w / 2, right - w / 2) if left + right > w else 0
    z0 = rng.uniform(1.2, max(1.3, back - d - 0.1))
    lo = np.array([x0 - w / 2, cam_h - h, z0], np.float32)
    hi = np.array([x0 + w / 2, cam_h, z0 + d], np.float32)
    t, axis = _hit_box(rays, lo, hi)
    nearer = t < depth
    depth = np.where(nearer, t, depth)
    surface = np.where(nearer, BOX + k, surface)
    point = rays * t[..., None]
    # The face entered: x side faces the ray's origin side, y is the top.
    box_normal = np.zeros_like(rays)
    side = np.where(point[..., 0] < x0, -1.0, 1.0)
    box_normal[..., 0] = np.where(axis == 0, side, 0.0)
    box_normal[..., 1] = np.where(axis == 1, -1.0, 0.0)
    box_normal[..., 2] = np.where(axis == 2, -1.0, 0.0)
    normal = np.where(nearer[..., None], box_normal, normal)
  return dict(depth=depth.astype(np.float32), surface=surface,
              normal=normal.astype(np.float32),
              point=(rays * depth[..., None]).astype(np.float32),
              box_colours=colours)


def render(room: Dict[str, np.ndarray], domain: str,
           rng: np.random.Generator) -> np.ndarray:
  """``uint8 [H, W, 3]`` image of ``room`` in the look of ``domain``."""
  _check(domain, DOMAINS, "domain")
  surface, normal, point = room["surface"], room["normal"], room["point"]
  is_box = surface >= BOX
  box = np.clip(surface - BOX, 0, None)
  if domain == "source":
    base = SOURCE_COLOURS[np.minimum(surface, BOX)]
    base = np.where(is_box[..., None], 255.0 * room["box_colours"][box], base)
    light = _LIGHT / np.linalg.norm(_LIGHT)
    shade = 0.45 + 0.55 * np.clip(normal @ light, 0.0, 1.0)
    image = base * shade[..., None]
  else:
    base = TARGET_COLOURS[np.minimum(surface, BOX)]
    # Furniture in muted wood / fabric tones (another palette than source).
    tint = 90.0 + 110.0 * room["box_colours"][box][..., ::-1]
    base = np.where(is_box[..., None], tint, base)
    x, y, z = point[..., 0], point[..., 1], point[..., 2]
    planks = 0.5 + 0.5 * np.cos(2 * np.pi * x / rng.uniform(0.2, 0.35))
    paint = demo_seg._smooth_noise(rng, surface.shape[0], 6)  # pylint: disable=protected-access
    texture = np.select(
        [surface == FLOOR, is_box],
        [-40.0 * planks + 8.0 * np.sin(7.0 * z),
         12.0 * np.sin(25.0 * (x + y + z))],
        default=18.0 * paint)
    image = base + texture[..., None]
    # A light at the camera: brightness falls with distance and with the
    # angle between surface and ray.
    ray = point / np.linalg.norm(point, axis=-1, keepdims=True)
    facing = np.abs(np.sum(normal * ray, -1))
    falloff = 1.0 / (1.0 + (room["depth"] / rng.uniform(3.0, 6.0)) ** 2)
    image *= (0.35 + 0.9 * falloff * (0.5 + 0.5 * facing))[..., None]
    image = (image * rng.uniform(0.85, 1.15, 3) + rng.uniform(-15, 15))
    image = demo_seg._blur3(image)  # pylint: disable=protected-access
    image += rng.normal(0.0, rng.uniform(2.0, 5.0), image.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _holes(rng: np.random.Generator, size: int) -> np.ndarray:
  """Bool ``[size, size]``: Kinect-like missing depth (a few % of pixels)."""
  noise = demo_seg._smooth_noise(rng, size, 8)  # pylint: disable=protected-access
  return noise > rng.uniform(0.75, 0.9)


def make_example(domain: str, split: str, index: int, seed: int = 0,
                 size: int = IMAGE_SIZE) -> Dict[str, np.ndarray]:
  """Deterministic example ``index``: ``{'image': uint8 [S, S, 3], 'label':
  float32 [S, S, 1] depth in metres, 0 where missing (target holes)}``."""
  _check(domain, DOMAINS, "domain")
  _check(split, SPLITS, "split")
  rng = np.random.default_rng(np.random.SeedSequence(
      [seed, DOMAINS.index(domain), SPLITS.index(split), index, 1]))
  room = sample_room(rng, size)
  depth = room["depth"]
  if domain == "target":
    depth = np.where(_holes(rng, size), 0.0, depth)
  return {"image": render(room, domain, rng),
          "label": depth[..., None].astype(np.float32)}


def dense_info(builder, doc: str, size: int, channels: int,
               second_frame: bool = False, valid: bool = False):
  """``DatasetInfo`` of the demo depth / flow builders: image(s), a float32
  label ``[size, size, channels]`` and (flow) a uint8 validity mask."""
  features = {"image": tfds.features.Image(shape=(size, size, 3)),
              "label": tfds.features.Tensor(shape=(size, size, channels),
                                            dtype=np.float32),
              "id": tfds.features.Text()}
  if second_frame:
    features["image2"] = tfds.features.Image(shape=(size, size, 3))
  if valid:
    features["valid"] = tfds.features.Tensor(shape=(size, size),
                                             dtype=np.uint8)
  return tfds.core.DatasetInfo(
      builder=builder, description=doc,
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True)  # record i is example i


class CrdocoDemoDepth(DemoGenerator, tfds.core.GeneratorBasedBuilder,
                      skip_registration=registration.already_registered(
                          DATASET_NAME)):
  """Synthetic rooms with exact depth, 64x64, rendered and 'real'."""

  _make_example = staticmethod(make_example)
  _split_sizes = SPLIT_SIZES

  name = DATASET_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      demo_seg.DemoDomainConfig(name="source", domain="source",
                                description="Flat-shaded synthetic renders."),
      demo_seg.DemoDomainConfig(
          name="target", domain="target",
          description="Textured 'real' camera with holes."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return dense_info(self, __doc__, IMAGE_SIZE, 1)


def build(domain: str, data_dir: str,
          file_format: str = "array_record") -> "CrdocoDemoDepth":
  """Generates ``domain`` under ``data_dir`` if needed; returns the builder."""
  return build_demo(CrdocoDemoDepth, domain, data_dir, file_format)
