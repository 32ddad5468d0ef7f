"""Small building blocks shared by the networks (NHWC throughout)."""
import functools
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# CycleGAN / pix2pix initialisation: N(0, 0.02) weights, zero biases.
gan_init = nn.initializers.normal(stddev=0.02)
# He (fan_out, relu) as torchvision and DeepLab-v2 initialise ResNets.
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv2d weight init (kaiming_uniform, a=sqrt(5)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                      "uniform")


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding of the two spatial axes of ``[N, H, W, C]``."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(dtype: Dtype = jnp.float32) -> nn.Module:
  """InstanceNorm2d without affine parameters (CycleGAN's ``norm='instance'``)."""
  return nn.InstanceNorm(epsilon=1e-5, use_scale=False, use_bias=False,
                         dtype=dtype)


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2,
                  pad: int = 1) -> jax.Array:
  """Max pooling with PyTorch's ``ceil_mode=True`` output size (DeepLab stem).

  Extra right/bottom padding makes the last, partial window count, except a
  window that would start in the right padding (PyTorch drops that one).
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * pad - window) // stride) + 1  # ceil division
    if (out - 1) * stride >= size + pad:
      out -= 1
    extra = max((out - 1) * stride + window - (size + 2 * pad), 0)
    pads.append((pad, pad + extra))
  return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


@functools.lru_cache(maxsize=64)
def _interp_matrix(out_size: int, in_size: int) -> np.ndarray:
  """``[out, in]`` matrix of 1-D linear interpolation with align_corners."""
  if out_size == 1 or in_size == 1:
    m = np.zeros((out_size, in_size), np.float32)
    m[:, 0] = 1.0
    return m
  pos = np.arange(out_size) * (in_size - 1) / (out_size - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, in_size - 2)
  frac = (pos - lo).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  m[np.arange(out_size), lo] = 1.0 - frac
  m[np.arange(out_size), lo + 1] += frac
  return m


def resize_bilinear_align_corners(x: jax.Array,
                                  size: Tuple[int, int]) -> jax.Array:
  """Bilinear resize of ``[N, h, w, C]`` to ``[N, H, W, C]`` with
  ``align_corners=True`` (DeepLab / AdaptSegNet upsampling of logits).

  Written as two small matmuls with constant interpolation matrices, which
  run on the MXU / tensor cores and have a cheap, exact transpose.
  """
  mh = jnp.asarray(_interp_matrix(size[0], x.shape[1]), x.dtype)
  mw = jnp.asarray(_interp_matrix(size[1], x.shape[2]), x.dtype)
  x = jnp.einsum("Hh,nhwc->nHwc", mh, x)
  return jnp.einsum("Ww,nhwc->nhWc", mw, x)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (works on ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def conv(features: int, kernel: int, stride: int = 1, padding: Any = 0,
         dilation: int = 1, use_bias: bool = True, kernel_init=gan_init,
         dtype: Dtype = jnp.float32, name: str = None) -> nn.Conv:
  """``nn.Conv`` with PyTorch-style integer padding (symmetric)."""
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype, name=name)

