"""Task networks F_S and F_T for optical flow: a compact FlowNetS-style net
(optionally FlowNetC-style, with a correlation layer; the demo uses that).

FlowNetS (Dosovitskiy et al. 2015) stacks the two frames on the channel
axis and runs an encoder-decoder: strided convolutions down, then at every
scale an up-convolution of the features, concatenated with the encoder's
features of that scale and with the upsampled flow of the coarser scale, and
a new flow prediction. This one has ``levels`` encoder stages of widths
``width * (1, 2, 4, 8, 8, ...)`` (7x7, 5x5, then 3x3 kernels, each followed
by a 3x3 conv), BatchNorm and leaky ReLU (0.1), and predicts the final flow
at 1/2 resolution, bilinearly upsampled to the input.

Why FlowNetS rather than PWC-Net: CrDoCo's consistency loss and
output-space discriminator only need a dense flow map from each task net,
and the two frames of a pair go through the same translator, so early
fusion is enough for the paper's setting. A plain encoder-decoder keeps the
flow nets structurally like the segmentation / depth nets (BatchNorm
synchronised over devices, one forward pass per input), compiles quickly on
XLA:CPU and fits the demos' 2 CPU cores; PWC-Net's per-level warping and
cost volumes (81 displacements per level) would cost several times the
compile time and memory at the demo's small displacements (a few pixels,
well within FlowNetS's receptive field).

Outputs are ``{'main': [N, H, W, 2]}`` (plus ``'aux'``, the coarsest
prediction upsampled, when ``multi_level``) in the units the flow task
regresses (``flow / config.flow.scale``, see ``tasks.py``).
"""
import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from crdoco_jax.models import layers, normalization

DOMAINS = ("S", "T")


def correlation(a: jax.Array, b: jax.Array, max_disp: int) -> jax.Array:
  """FlowNetC's correlation: ``[N, H, W, C]`` x2 -> ``[N, H, W, (2d+1)^2]``,
  the channel mean of ``a(p) * b(p + (dx, dy))`` for ``|dx|, |dy| <= d``
  (zero padding outside ``b``)."""
  d = max_disp
  h, w = a.shape[1:3]
  b = jnp.pad(b, ((0, 0), (d, d), (d, d), (0, 0)))
  return jnp.stack([jnp.mean(a * b[:, dy:dy + h, dx:dx + w], -1)
                    for dy in range(2 * d + 1) for dx in range(2 * d + 1)],
                   -1)


class FlowNetS(nn.Module):
  """One compact FlowNetS: ``[N, H, W, 6]`` stacked frames -> flow.

  ``correlation=d > 0`` makes it FlowNetC-style: the first stage runs on
  each frame with shared weights and the second sees their correlation
  (displacements up to ``d`` at 1/2 resolution, i.e. ``2 d`` pixels) and
  the first frame's features, which makes matching explicit.
  """
  width: int = 32
  levels: int = 4
  out_channels: int = 2
  multi_level: bool = False
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32
  correlation: int = 0
  conv_impl: str = "xla"  # layers.CONV_IMPLS
  bn_groups: int = 1  # the groups of ``norm`` (layers.BatchNorm)

  @nn.compact
  def __call__(self, x: jax.Array, frozen: bool) -> Dict[str, jax.Array]:
    act = lambda y: nn.leaky_relu(y, 0.1)
    conv = functools.partial(layers.conv, dtype=self.dtype,
                             impl=self.conv_impl)

    def conv_bn(y, features, kernel, stride=1):
      y = conv(features, kernel, stride, (kernel - 1) // 2,
               use_bias=False, kernel_init=layers.he_fan_out)(y)
      return act(self.norm()(y, use_running_average=frozen))

    def predict(y):
      return conv(self.out_channels, 3, 1, 1,
                  kernel_init=nn.initializers.normal(0.01))(y)

    def up2(y):  # bilinear x2 (FlowNet upsamples its coarse flow too)
      n, h, w, c = y.shape
      return jax.image.resize(y, (n, 2 * h, 2 * w, c), "bilinear")

    widths = [self.width * min(2 ** i, 8) for i in range(self.levels)]
    kernels = [(7, 5)[i] if i < 2 else 3 for i in range(self.levels)]
    features = []
    h = x.astype(self.dtype)
    start = 0
    if self.correlation:
      # Siamese stages: the same modules (and BN statistics) on each frame.
      g = self.bn_groups
      norm = (self.norm if g == 1
              else functools.partial(self.norm, groups=2 * g))
      stages = [(conv(c, k, 2, (k - 1) // 2, use_bias=False,
                      kernel_init=layers.he_fan_out),
                 norm(),
                 conv(c, 3, 1, 1, use_bias=False,
                      kernel_init=layers.he_fan_out),
                 norm()) for c, k in zip(widths[:1], kernels[:1])]

      def siamese(y):
        out = []
        for conv1, bn1, conv2, bn2 in stages:
          y = act(bn1(conv1(y), use_running_average=frozen))
          y = act(bn2(conv2(y), use_running_average=frozen))
          out.append(y)
        return out
      if g == 1:
        features = siamese(h[..., :3])
        second = siamese(h[..., 3:])[-1]
      else:
        # One pass over [group 1 frame 1; group 1 frame 2; group 2 ...]:
        # the order in which successive calls average BN statistics in.
        n, size = normalization.group_size(h.shape[0], g), h.shape[1:3]
        out = siamese(jnp.moveaxis(h.reshape(g, n, *size, 2, 3), 4, 1
                                   ).reshape(2 * g * n, *size, 3))
        frame = lambda y, i: y.reshape(g, 2, n, *y.shape[1:])[:, i].reshape(
            g * n, *y.shape[1:])
        features, second = [frame(y, 0) for y in out], frame(out[-1], 1)
      h = jnp.concatenate([correlation(features[-1], second,
                                       self.correlation),
                           conv_bn(features[-1], widths[0] // 2, 1)], -1)
      start = 1
    for i in range(start, self.levels):
      h = conv_bn(h, widths[i], kernels[i], 2)
      h = conv_bn(h, widths[i], 3)
      features.append(h)
    flow = predict(h)
    coarsest = flow
    for i in reversed(range(self.levels - 1)):
      up = act(nn.ConvTranspose(widths[i], (4, 4), (2, 2), padding="SAME",
                                kernel_init=layers.he_fan_out,
                                dtype=self.dtype)(h))
      h = jnp.concatenate([features[i], up, up2(flow).astype(up.dtype)], -1)
      flow = predict(h)
    size = x.shape[1:3]
    out = {"main": flow}
    if self.multi_level:
      out["aux"] = coarsest
    return {k: layers.resize_bilinear_align_corners(v.astype(jnp.float32),
                                                    size)
            for k, v in out.items()}


class FlowNetSPair(nn.Module):
  """F_S and F_T, one :class:`FlowNetS` each (the same interface as
  ``deeplab.TaskNetPair``: ``__call__(x, domain, train)``, ``domain=None``
  at init builds both)."""
  width: int = 32
  levels: int = 4
  out_channels: int = 2
  multi_level: bool = False
  frozen_bn: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  correlation: int = 0  # > 0: FlowNetC-style (see FlowNetS)
  conv_impl: str = "xla"  # layers.CONV_IMPLS: 'gemm' is faster on XLA:CPU
  bn_groups: int = 1  # as deeplab.TaskNetPair

  def setup(self):
    norm = layers.batch_norm(self.bn_axis_name, self.dtype, self.bn_groups)
    for d in DOMAINS:
      setattr(self, f"net_{d}", FlowNetS(self.width, self.levels,
                                         self.out_channels, self.multi_level,
                                         norm, self.dtype, self.correlation,
                                         self.conv_impl, self.bn_groups))

  def __call__(self, x: jax.Array, domain: str = None, train: bool = False):
    if domain is None:
      return [self(x, d, train) for d in DOMAINS][0]
    if domain not in DOMAINS:
      raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return getattr(self, f"net_{domain}")(x, self.frozen_bn or not train)
