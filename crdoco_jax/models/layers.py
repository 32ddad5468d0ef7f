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


WGRAD = ("xla", "matmul")


def conv(features: int, kernel: int, stride: int = 1, padding: Any = 0,
         dilation: int = 1, use_bias: bool = True, kernel_init=gan_init,
         dtype: Dtype = jnp.float32, name: str = None,
         wgrad: str = "xla") -> nn.Conv:
  """``nn.Conv`` with PyTorch-style integer padding (symmetric).

  ``wgrad='matmul'`` computes the kernel gradient as one matmul over im2col
  windows (``conv_general_dilated_matmul_wgrad``) instead of XLA's
  kernel-gradient convolution: same function, same gradients to float
  tolerance; an opt-in for XLA:CPU.
  """
  if wgrad not in WGRAD:
    raise ValueError(f"wgrad must be one of {WGRAD}, got {wgrad!r}")
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  impl = conv_general_dilated_matmul_wgrad if wgrad == "matmul" else None
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype, name=name,
                 conv_general_dilated=impl)



def _conv_nhwc(x, kernel, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_wgrad(x, kernel, strides, padding, dilation):
  return _conv_nhwc(x, kernel, strides, padding, dilation)


def _conv_matmul_wgrad_fwd(x, kernel, strides, padding, dilation):
  return _conv_nhwc(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_matmul_wgrad_bwd(strides, padding, dilation, res, g):
  x, kernel = res
  _, input_vjp = jax.vjp(
      lambda x_: _conv_nhwc(x_, kernel, strides, padding, dilation), x)
  (dx,) = input_vjp(g)
  # dW[i, j, c, o] = sum_{n,h,w} x_pad[n, h*s + i*d, w*s + j*d, c] g[n,h,w,o]:
  # the kh*kw strided windows of the padded input side by side on the
  # channel axis (im2col) times the output gradient, one matmul.
  kh, kw, cin, cout = kernel.shape
  n, ho, wo, _ = g.shape
  x_pad = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  (sh, sw), (dh, dw) = strides, dilation
  cols = [jax.lax.slice(x_pad, (0, i * dh, j * dw, 0),
                        (n, i * dh + (ho - 1) * sh + 1,
                         j * dw + (wo - 1) * sw + 1, cin), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  cols = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  dk = jax.lax.dot_general(
      cols.reshape(-1, kh * kw * cin), g.reshape(-1, cout),
      (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_conv_matmul_wgrad.defvjp(_conv_matmul_wgrad_fwd, _conv_matmul_wgrad_bwd)


def conv_general_dilated_matmul_wgrad(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1,
    precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` (the subset ``nn.Conv`` uses on NHWC
  inputs) whose kernel gradient is one matmul over im2col windows.

  The same function and the same gradients (up to float summation order);
  XLA:CPU computes its own kernel-gradient convolutions several times slower
  than the forward pass. Costs a ``kh*kw``-times copy of the input in the
  backward pass. Anything it does not cover goes to ``lax``.
  """
  spatial = lhs.ndim - 2
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        ("NHWC", "HWIO", "NHWC"))
  dn = (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                       dimension_numbers)
        if dimension_numbers is not None else None)
  plain = (spatial == 2 and dn == nhwc and feature_group_count == 1
           and batch_group_count == 1 and precision is None
           and preferred_element_type is None
           and (lhs_dilation is None or all(d == 1 for d in lhs_dilation)))
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * spatial
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation)]
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], dilated,
                                      window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_matmul_wgrad(lhs, rhs, tuple(window_strides), padding,
                            dilation)
