"""Task networks F_S and F_T: DeepLab-v2 on a dilated ResNet (output stride 8).

Backbone as in DeepLab-v2 / AdaptSegNet: 7x7/2 stem, BN, ReLU, 3x3/2 max pool
(ceil mode); four ResNet layers with (stride, dilation) (1,1), (2,1), (1,2),
(1,4); Caffe-style bottlenecks put the stride on the first 1x1 conv
(``stride_on_3x3=True``: on the 3x3 conv, as torchvision's ResNets, so that
their ImageNet weights compute what they were trained to); every conv is
bias-free and followed by BatchNorm. Head: ASPP, four 3x3 convs with
dilation 6/12/18/24 (with bias, N(0, 0.01)), summed. ``multi_level`` adds an
auxiliary ASPP head on layer3, as AdaptSegNet and the released CrDoCo code do
(ResNet-101 + both heads, 19 classes: 44,601,560 parameters).

``TaskNetPair`` holds F_S and F_T. With ``share_last=k`` the last k of the
units (stem, layer1, layer2, layer3, layer4, heads) are one module used by
both networks: the paper's "partial sharing" memory option. A shared unit's
BatchNorm statistics are shared too.

Outputs are dicts ``{'main': [N, H, W, C]}`` (plus ``'aux'`` when multi-level)
of float32 logits (or regression values for ``out_channels`` = 1 or 2),
bilinearly upsampled with ``align_corners=True`` to the input size. Applied
with ``mutable=[FEATURES]``, the features each head reads (layer4 for
'main', layer3 for 'aux', ``[N, H/8, W/8, channels]``) come back in that
collection, as one-element tuples.
"""
import functools
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from crdoco_jax.models import layers

DOMAINS = ("S", "T")
FEATURES = "intermediates"  # the collection the backbone features go to
UNITS = ("stem", "layer1", "layer2", "layer3", "layer4", "heads")
# (planes, stride, dilation) of layer1..layer4: output stride 8.
LAYER_SPECS = ((64, 1, 1), (128, 2, 1), (256, 1, 2), (512, 1, 4))


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  dilation: int = 1
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32
  stride_on_3x3: bool = False  # no effect: the first 3x3 conv strides anyway
  conv_impl: str = "xla"  # layers.CONV_IMPLS
  expansion = 1

  @nn.compact
  def __call__(self, x, frozen: bool):
    d = self.dilation
    conv, norm = _conv_and_norm(self, frozen)
    y = nn.relu(norm(conv(self.planes, 3, self.stride, d, d)(x)))
    y = norm(conv(self.planes, 3, 1, d, d)(y))
    return nn.relu(y + _shortcut(x, self.planes, self.stride, self.norm,
                                 frozen, self.dtype, self.conv_impl))


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  dilation: int = 1
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32
  stride_on_3x3: bool = False
  conv_impl: str = "xla"
  expansion = 4

  @nn.compact
  def __call__(self, x, frozen: bool):
    d = self.dilation
    conv, norm = _conv_and_norm(self, frozen)
    # Caffe-style: the stride sits on the first 1x1 conv; torchvision's on
    # the 3x3 conv.
    s1, s3 = (1, self.stride) if self.stride_on_3x3 else (self.stride, 1)
    y = nn.relu(norm(conv(self.planes, 1, s1)(x)))
    y = nn.relu(norm(conv(self.planes, 3, s3, d, d)(y)))
    y = norm(conv(self.planes * 4, 1)(y))
    return nn.relu(y + _shortcut(x, self.planes * 4, self.stride, self.norm,
                                 frozen, self.dtype, self.conv_impl))


def _conv_and_norm(block, frozen):
  """A residual block's conv (no bias, He fan-out init) and norm layers,
  made when called (inside the block's compact ``__call__``)."""
  conv = functools.partial(layers.conv, use_bias=False,
                           kernel_init=layers.he_fan_out, dtype=block.dtype,
                           impl=block.conv_impl)
  norm = lambda y: block.norm()(y, use_running_average=frozen)
  return conv, norm


def _shortcut(x, features, stride, norm, frozen, dtype, conv_impl):
  """Identity, or a strided 1x1 projection + BN where the shape changes."""
  if stride == 1 and x.shape[-1] == features:
    return x
  y = layers.conv(features, 1, stride, use_bias=False,
                  kernel_init=layers.he_fan_out, dtype=dtype,
                  name="downsample_conv", impl=conv_impl)(x)
  return norm(name="downsample_bn")(y, use_running_average=frozen)


ARCHS = {
    "resnet10": (BasicBlock, (1, 1, 1, 1)),  # not a standard net: fast tests
    "resnet14": (Bottleneck, (1, 1, 1, 1)),  # nor this: bottleneck tests
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class Stem(nn.Module):
  norm: Any
  features: int = 64
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, frozen: bool):
    x = layers.conv(self.features, 7, 2, 3, use_bias=False,
                    kernel_init=layers.he_fan_out, dtype=self.dtype,
                    impl=self.conv_impl)(x.astype(self.dtype))
    x = self.norm()(x, use_running_average=frozen)
    return layers.max_pool_ceil(nn.relu(x))


class ResLayer(nn.Module):
  """``n`` blocks; the first one may stride and project."""
  block: Any
  planes: int
  n: int
  stride: int
  dilation: int
  norm: Any
  remat: bool = False
  dtype: Any = jnp.float32
  stride_on_3x3: bool = False
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, frozen: bool):
    # static_argnums counts self as 0: ``frozen`` is a Python bool.
    block = (nn.remat(self.block, static_argnums=(2,)) if self.remat
             else self.block)
    for i in range(self.n):  # explicit names: remat keeps the parameters
      x = block(self.planes, self.stride if i == 0 else 1, self.dilation,
                self.norm, self.dtype, self.stride_on_3x3, self.conv_impl,
                name=f"{self.block.__name__}_{i}")(x, frozen)
    return x


class ASPP(nn.Module):
  """DeepLab-v2 classifier: parallel dilated 3x3 convs, outputs summed."""
  out_channels: int
  rates: Sequence[int] = (6, 12, 18, 24)
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    return sum(layers.conv(self.out_channels, 3, 1, r, r,
                           kernel_init=nn.initializers.normal(0.01),
                           dtype=self.dtype, impl=self.conv_impl)(x)
               for r in self.rates)


class Heads(nn.Module):
  """Main ASPP on layer4 and, if ``multi_level``, auxiliary ASPP on layer3."""
  out_channels: int
  multi_level: bool
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, feat3, feat4) -> Dict[str, jax.Array]:
    aspp = functools.partial(ASPP, self.out_channels, dtype=self.dtype,
                             conv_impl=self.conv_impl)
    out = {"main": aspp(name="main")(feat4)}
    if self.multi_level:
      out["aux"] = aspp(name="aux")(feat3)
    return out


def sown_features(collections) -> Dict[str, jax.Array]:
  """``{head: [N, H/8, W/8, channels]}`` from the collections an apply with
  ``mutable=[FEATURES]`` returned."""
  return {h: v[0] for h, v in collections[FEATURES].items()}


class TaskNetPair(nn.Module):
  """F_S and F_T (DeepLab-v2), optionally sharing their last ``share_last``
  units. ``__call__(x, domain, train)``: x ``[N, H, W, 3]``, domain 'S' or
  'T' (``None`` at init builds both and returns F_S's output)."""
  arch: str = "resnet101"
  out_channels: int = 19
  multi_level: bool = True
  share_last: int = 0
  frozen_bn: bool = False
  bn_axis_name: Optional[str] = None
  upsample: bool = True
  remat: bool = False
  dtype: Any = jnp.float32
  width: int = 64  # channels of the stem; layer widths scale with it
  stride_on_3x3: bool = False  # torchvision bottlenecks (see module doc)
  conv_impl: str = "xla"  # layers.CONV_IMPLS: 'gemm' is faster on XLA:CPU
  # > 1: inputs are that many stacked batches, each normalised by its own
  # statistics (layers.BatchNorm); the same variables.
  bn_groups: int = 1

  def setup(self):
    if self.arch not in ARCHS:
      raise ValueError(f"task_net.arch={self.arch!r} is not one of "
                       f"{sorted(ARCHS)}.")
    if not 0 <= self.share_last <= len(UNITS):
      raise ValueError(f"task_net.share_last={self.share_last} must lie in "
                       f"[0, {len(UNITS)}] (units: {', '.join(UNITS)}).")
    first_shared = len(UNITS) - self.share_last
    for i, unit in enumerate(UNITS):
      if i >= first_shared:
        setattr(self, unit, self._make_unit(unit))
      else:
        for d in DOMAINS:
          setattr(self, f"{unit}_{d}", self._make_unit(unit))

  def _make_unit(self, unit: str) -> nn.Module:
    block, counts = ARCHS[self.arch]
    if unit == "stem":
      return Stem(self._norm, self.width, self.dtype, self.conv_impl)
    if unit == "heads":
      return Heads(self.out_channels, self.multi_level, self.dtype,
                   self.conv_impl)
    i = int(unit[-1]) - 1
    planes, stride, dilation = LAYER_SPECS[i]
    return ResLayer(block, planes * self.width // 64, counts[i], stride,
                    dilation, self._norm, self.remat, self.dtype,
                    self.stride_on_3x3, self.conv_impl)

  def _unit(self, unit: str, domain: str) -> nn.Module:
    shared = UNITS.index(unit) >= len(UNITS) - self.share_last
    return getattr(self, unit if shared else f"{unit}_{domain}")

  @property
  def _norm(self):
    return layers.batch_norm(self.bn_axis_name, self.dtype, self.bn_groups)

  def __call__(self, x: jax.Array, domain: str = None, train: bool = False):
    if domain is None:
      return [self(x, d, train) for d in DOMAINS][0]
    if domain not in DOMAINS:
      raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    # Running statistics are used (and left unchanged) in eval and when BN
    # is frozen; otherwise batch statistics are used and averaged in.
    frozen = self.frozen_bn or not train
    h = self._unit("stem", domain)(x, frozen)
    h = self._unit("layer1", domain)(h, frozen)
    h = self._unit("layer2", domain)(h, frozen)
    feat3 = self._unit("layer3", domain)(h, frozen)
    feat4 = self._unit("layer4", domain)(feat3, frozen)
    # What each head reads, for discriminators on the features
    # (disc.feat_input='features'); kept only when 'intermediates' is mutable.
    self.sow(FEATURES, "main", feat4)
    if self.multi_level:
      self.sow(FEATURES, "aux", feat3)
    out = self._unit("heads", domain)(feat3, feat4)
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    if self.upsample:
      out = {k: layers.resize_bilinear_align_corners(v, x.shape[1:3])
             for k, v in out.items()}
    return out
