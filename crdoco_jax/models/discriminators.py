"""Discriminators: image-level (PatchGAN) and feature-level (output space,
or backbone features).

* ``PatchGAN``: CycleGAN's 70x70 ``NLayerDiscriminator`` (n_layers=3, instance
  norm): ``[N, H, W, 3] -> [N, H/8 - 2, W/8 - 2, 1]`` patch scores; 2,764,737
  parameters at ndf=64.
* ``FCDiscriminator``: AdaptSegNet's fully-convolutional output-space
  discriminator on the task net's softmax map: five 4x4 stride-2 convs,
  ``[N, H, W, C] -> [N, H/32, W/32, 1]`` logits; 2,781,121 parameters for
  C=19.
* ``FeatureDiscriminator``: a discriminator on the task net's backbone
  features (``disc.feat_input='features'``, the other reading of the paper's
  "feature-level" loss): two 3x3 and one 1x1 stride-1 convs,
  ``[N, h, w, C] -> [N, h, w, 1]`` logits, so that at the backbone's stride
  of 8 each logit sees a 5x5 window of features (40x40 pixels).
* ``DiscriminatorPair``: one discriminator per domain (D_S, D_T).
"""
import functools
from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from crdoco_jax.models import layers

DOMAINS = ("S", "T")


class PatchGAN(nn.Module):
  ndf: int = 64
  n_layers: int = 3
  dtype: Any = jnp.float32
  conv_impl: str = "xla"  # layers.CONV_IMPLS

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.conv, padding=1, dtype=self.dtype,
                             impl=self.conv_impl)
    x = conv(self.ndf, 4, stride=2)(x.astype(self.dtype))
    x = nn.leaky_relu(x, 0.2)
    for n in range(1, self.n_layers + 1):
      stride = 2 if n < self.n_layers else 1  # last hidden conv keeps size
      x = conv(self.ndf * min(2 ** n, 8), 4, stride=stride)(x)
      x = nn.leaky_relu(layers.instance_norm(self.dtype)(x), 0.2)
    x = conv(1, 4, stride=1)(x)
    return x.astype(jnp.float32)


class _ConvStack(nn.Module):
  """Convs ``hidden`` = ``(width multiplier of ndf, kernel, stride,
  padding)``, each followed by a leaky ReLU (0.2), then ``last`` = ``(kernel,
  stride, padding)`` to one logit channel; no normalisation."""
  ndf: int = 64
  dtype: Any = jnp.float32
  conv_impl: str = "xla"
  hidden: Sequence[Tuple[int, int, int, int]] = ()
  last: Tuple[int, int, int] = (1, 1, 0)

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(layers.conv, kernel_init=layers.torch_default_init,
                             dtype=self.dtype, impl=self.conv_impl)
    x = x.astype(self.dtype)
    for mult, kernel, stride, padding in self.hidden:
      x = nn.leaky_relu(conv(self.ndf * mult, kernel, stride, padding)(x), 0.2)
    kernel, stride, padding = self.last
    return conv(1, kernel, stride, padding)(x).astype(jnp.float32)


class FCDiscriminator(_ConvStack):
  hidden: Sequence[Tuple[int, int, int, int]] = tuple(
      (mult, 4, 2, 1) for mult in (1, 2, 4, 8))
  last: Tuple[int, int, int] = (4, 2, 1)


class FeatureDiscriminator(_ConvStack):
  hidden: Sequence[Tuple[int, int, int, int]] = ((1, 3, 1, 1), (2, 3, 1, 1))
  last: Tuple[int, int, int] = (1, 1, 0)


class DiscriminatorPair(nn.Module):
  """``D_S`` and ``D_T`` built by ``make()``; ``__call__(x, domain)`` with
  domain 'S' or 'T' (``None`` at init builds both)."""
  make: Callable[[], nn.Module]

  def setup(self):
    self.D_S = self.make()
    self.D_T = self.make()

  def __call__(self, x, domain: str = None):
    if domain is None:
      return self.D_S(x), self.D_T(x)
    if domain not in DOMAINS:
      raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return (self.D_S if domain == "S" else self.D_T)(x)
