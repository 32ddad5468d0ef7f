"""Small building blocks shared by the networks (NHWC throughout)."""
import functools
from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crdoco_jax.models import normalization
from crdoco_jax.models import winograd

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


def batch_norm(axis_name=None, dtype: Dtype = jnp.float32, groups: int = 1):
  """PyTorch BatchNorm2d's defaults (its momentum 0.1 is flax's 0.9; eps
  1e-5) as a module factory, synchronised over the pmap axis
  ``axis_name``; ``groups`` > 1 normalises that many slices of the batch
  apart (:class:`normalization.BatchNorm`)."""
  return functools.partial(normalization.BatchNorm, groups=groups,
                           momentum=0.9, epsilon=1e-5, axis_name=axis_name,
                           dtype=dtype)


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2,
                  pad: int = 1) -> jax.Array:
  """Max pooling with PyTorch's ``ceil_mode=True`` output size (DeepLab stem).

  Extra right/bottom padding makes the last, partial window count, except a
  window that would start in the right padding (PyTorch drops that one).

  Computed as the maximum of the window's ``window**2`` strided slices of
  the padded input: the same values, and a gradient that is an
  elementwise select instead of XLA's select-and-scatter (forward and
  backward on XLA:CPU: 1.4 against 4.3 ms at 2x65x65x64; PyTorch 3.0
  ms). Unlike it, the gradient is split evenly between tied maxima, which
  no network gradient sees when the input is a ReLU's output (its own
  gradient is zero where the ties are, at zero).
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size + 2 * pad - window) // stride) + 1  # ceil division
    if (out - 1) * stride >= size + pad:
      out -= 1
    extra = max((out - 1) * stride + window - (size + 2 * pad), 0)
    pads.append((pad, pad + extra))
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  n, h, w, c = xp.shape
  oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
  taps = [jax.lax.slice(xp, (0, i, j, 0),
                        (n, i + (oh - 1) * stride + 1,
                         j + (ow - 1) * stride + 1, c),
                        (1, stride, stride, 1))
          for i in range(window) for j in range(window)]
  return functools.reduce(jnp.maximum, taps)


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


CONV_IMPLS = ("xla", "gemm")


def conv(features: int, kernel: int, stride: int = 1, padding: Any = 0,
         dilation: int = 1, use_bias: bool = True, kernel_init=gan_init,
         dtype: Dtype = jnp.float32, name: str = None,
         impl: str = "xla") -> nn.Conv:
  """``nn.Conv`` with PyTorch-style integer padding (symmetric).

  ``impl='gemm'`` computes it with ``conv_general_dilated_gemm`` (matmul
  gradients; an XLA:CPU speed option) instead of XLA's convolutions: the
  same function and gradients to float tolerance.
  """
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, kernel_dilation=(dilation, dilation),
                 use_bias=use_bias, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype, name=name,
                 conv_general_dilated=conv_general_dilated_fn(impl))


def conv_general_dilated_fn(impl: str):
  """``lax.conv_general_dilated`` or a drop-in with the same signature."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv implementation (config compute.conv) must be "
                     f"one of {CONV_IMPLS}, got {impl!r}")
  return (conv_general_dilated_gemm if impl == "gemm"
          else jax.lax.conv_general_dilated)


def _conv_nhwc(x, kernel, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_nhwc_padded(x, kernel, strides, padding, dilation):
  """``_conv_nhwc``; an unpadded stride-1 convolution runs as a zero-padded
  one, cropped. XLA:CPU (YNNPACK) runs unpadded convolutions up to 24x
  slower than padded ones (a 7x7 64->3 conv on 2x134x134: 100 ms vs 4.2
  ms, benchmarks/micro_convs.py); the crop removes exactly the outputs
  that read the zeros."""
  kh, kw = kernel.shape[:2]
  ho, wo = _out_hw(x.shape, kernel.shape, strides, padding, dilation)
  # Only where the crop keeps at least half of the padded outputs (not,
  # e.g., a rate-4 3x3 on a 17x17 map).
  if (strides != (1, 1) or padding != ((0, 0), (0, 0))
      or (kh, kw) == (1, 1) or 2 * ho * wo < x.shape[1] * x.shape[2]):
    return _conv_nhwc(x, kernel, strides, padding, dilation)
  ph, pw = (kh - 1) * dilation[0] // 2, (kw - 1) * dilation[1] // 2
  y = _conv_nhwc(x, kernel, strides, ((ph, ph), (pw, pw)), dilation)
  return y[:, ph:ph + ho, pw:pw + wo]


def _tap_offsets(kernel_shape, padding, dilation):
  """``[(i, j, (row offset, column offset))]``: where each kernel tap reads
  the unpadded input, relative to the output position times the stride."""
  return [(i, j, (i * dilation[0] - padding[0][0],
                  j * dilation[1] - padding[1][0]))
          for i in range(kernel_shape[0]) for j in range(kernel_shape[1])]


def _window(offset, strides, in_hw, out_hw):
  """``((r0, r1), (c0, c1))``: the outputs whose tap, at ``offset``, reads
  inside the unpadded input; None when there are none (it reads only
  padding)."""
  ranges = []
  for off, s, size, n_out in zip(offset, strides, in_hw, out_hw):
    lo, hi = max(0, (s - 1 - off) // s), min(n_out, (size - 1 - off) // s + 1)
    if hi <= lo:
      return None
    ranges.append((lo, hi))
  return tuple(ranges)


def _shifted(a, offset, strides, out_hw):
  """``out[:, o, p] = a[:, o*sh + dr, p*sw + dc]`` where that lies inside
  ``a`` (``[N, H, W, ...]``), zero elsewhere: one tap's window of a
  zero-padded input, without padding the input."""
  window = _window(offset, strides, a.shape[1:3], out_hw)
  if window is None:
    return jnp.zeros(a.shape[:1] + tuple(out_hw) + a.shape[3:], a.dtype)
  (r0, r1), (c0, c1) = window
  (dr, dc), (sh, sw), rest = offset, strides, a.shape[3:]
  a = jax.lax.slice(a, (0, r0 * sh + dr, c0 * sw + dc) + (0,) * len(rest),
                    (a.shape[0], (r1 - 1) * sh + dr + 1,
                     (c1 - 1) * sw + dc + 1) + rest,
                    (1, sh, sw) + (1,) * len(rest))
  pads = ((0, 0, 0), (r0, out_hw[0] - r1, 0), (c0, out_hw[1] - c1, 0))
  return jax.lax.pad(a, jnp.zeros((), a.dtype),
                     pads + ((0, 0, 0),) * len(rest))


def _im2col(x, kernel_shape, strides, padding, dilation, out_hw):
  """``[N, Ho, Wo, kh*kw*C]``: the kernel's strided windows of the padded
  input, tap after tap on the channel axis (row-major over (kh, kw, C), the
  order of an HWIO kernel reshaped to ``[kh*kw*C, O]``)."""
  cols = [_shifted(x, offset, strides, out_hw)
          for _, _, offset in _tap_offsets(kernel_shape, padding, dilation)]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _live_taps(x_shape, kernel_shape, strides, padding, dilation, out_hw):
  """The taps that read some of the input (a dilated kernel on a small
  feature map, e.g. DeepLab's ASPP at rates 18 and 24 on a 17x17 map,
  reads mostly padding)."""
  return [(i, j, off)
          for i, j, off in _tap_offsets(kernel_shape, padding, dilation)
          if _window(off, strides, x_shape[1:3], out_hw) is not None]


def _conv_output_taps(x, kernel, strides, padding, dilation, out_hw):
  """The convolution as one matmul into the live taps' output channels,
  then the taps' shifted, strided windows summed: the fast form when the
  output has few channels (XLA:CPU's convolution is slow for, e.g., 64 -> 3
  and 2048 -> 19); autodiff gives matmul gradients."""
  cin, cout = kernel.shape[2:]
  live = _live_taps(x.shape, kernel.shape, strides, padding, dilation,
                    out_hw)
  if not live:  # every output reads only padding
    return jnp.zeros(x.shape[:1] + tuple(out_hw) + (cout,), x.dtype)
  w = jnp.stack([kernel[i, j] for i, j, _ in live], axis=1)
  # f32 sums, as XLA's convolutions accumulate bf16 inputs.
  z = pixel_matmul(x, w.reshape(cin, len(live) * cout),
                   preferred_element_type=jnp.float32)
  z = z.reshape(z.shape[:3] + (len(live), cout))
  y = sum(_shifted(z[:, :, :, t], off, strides, out_hw)
          for t, (_, _, off) in enumerate(live))
  return y.astype(x.dtype)


def pixel_matmul(x: jax.Array, w: jax.Array, **kwargs) -> jax.Array:
  """``[N, H, W, C] @ [C, D] -> [N, H, W, D]``, as a 2-D matmul.

  The same product as ``dot_general`` over the channel axis, but its
  kernel gradient contracts one flat pixel axis: over the three axes N, H,
  W, XLA:CPU first copies the output gradient into a transposed layout
  (a 512 -> 2048 1x1 conv on 2x17x17, forward and both gradients: 15.5 ms
  against 13.5 ms; the reference-default step 2.8% faster;
  docs/performance_log.md, session 34).
  """
  y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), w,
                          (((1,), (0,)), ((), ())), **kwargs)
  return y.reshape(x.shape[:-1] + (w.shape[-1],))


def _out_hw(x_shape, kernel_shape, strides, padding, dilation):
  return tuple((x_shape[1 + a] + sum(padding[a]) - dilation[a] *
                (kernel_shape[a] - 1) - 1) // strides[a] + 1 for a in (0, 1))


FEW_OUTPUT_CHANNELS = 4
# From this many kernel entries per tap (C_in x C_out) on, the kernel
# gradient is one matmul per tap, each reading its shifted window: XLA:CPU
# concatenates im2col's windows on the channel axis at about 1 GB/s (14 ms
# for a translator residual block's 2x32x32x2304), a tenth of the reference
# step. Below it the per-tap matmuls are the slow part (64 x 64 outputs
# over 2x128x128 positions: 210 vs 85 ms).
TAP_MATMUL_MIN = 128 * 128
# Stride-1 convolutions among those: one matmul per kernel row
# (_kernel_grad_rows); unpadded ones (the translators' residual blocks), and
# zero-padded ones (DeepLab's 3x3s) with KERNEL_GRAD_ROWS_PADDED. False: per
# tap. (A/B switches for benchmarks/ab_step.py --a-layers.)
KERNEL_GRAD_ROWS = True
KERNEL_GRAD_ROWS_PADDED = True
# True: stride-1 input gradients by XLA's own transposed convolution (a
# forward convolution of g with the flipped kernel) instead of im2col's
# transpose. Exact, but not shown faster in the reference-default step
# (1.02 of the step time, inside one A/B run's noise;
# docs/performance_log.md, sessions 37-38): an A/B switch.
INPUT_GRAD_CONV = False
# Unpadded 3x3 stride-1 float32 convolutions with at least this many kernel
# entries per tap (C_in x C_out; the translators' residual blocks) run as
# Winograd F(2x2, 3x3) (winograd.conv3x3: 2.25x fewer FLOPs, forward and
# both gradients); None: never. (An A/B switch for benchmarks/ab_step.py.)
WINOGRAD_MIN = 128 * 128


def _few_outputs(x_shape, kernel_shape, strides, padding, dilation, out_hw):
  """Whether the output-taps form is the cheaper one: the matmul's output
  (live taps x output channels) is no wider than its input."""
  cout = kernel_shape[-1]
  live = len(_live_taps(x_shape, kernel_shape, strides, padding, dilation,
                        out_hw))
  return cout <= FEW_OUTPUT_CHANNELS or live * cout <= kernel_shape[2]


def _kernel_grad_rows(x, g, kernel_shape, padding, dilation):
  """``im2col(x)^T g`` ``[kh, kw, C_in, C_out]`` of a stride-1
  convolution, one matmul per kernel row.

  Row ``i`` of the kernel reads the rows ``o + i*d - pad`` of ``x``
  ``[N, H, W, C_in]`` at every column offset; with ``g`` ``[N, Ho, Wo,
  C_out]`` placed at each tap's column offset in a ``W``-wide frame (the
  ``kw`` frames side by side on the channel axis; outputs whose tap reads
  padding cropped), that row's ``kw`` taps are one matmul over the
  ``N*rows*W`` positions it reads. That copies a few row blocks and ``kw``
  shifted ``g``s instead of ``kh*kw`` tap windows of ``x``: XLA:CPU runs
  those copies beside the step's matmuls, where each of a translator
  residual block's 2 MB windows took 1.2 ms instead of 0.23 ms alone
  (reference-default step 15% faster; docs/performance_log.md, session
  36).
  """
  kh, kw, cin, cout = kernel_shape
  (hi, wi), (ho, wo) = x.shape[1:3], g.shape[1:3]
  (top, _), (left, _) = padding
  dh, dw = dilation
  zero = jnp.zeros((), g.dtype)
  # Negative padding crops (lax.pad).
  frames = jnp.concatenate(
      [jax.lax.pad(g, zero, ((0, 0, 0), (0, 0, 0),
                             (j * dw - left, wi - wo - j * dw + left, 0),
                             (0, 0, 0)))
       for j in range(kw)], axis=-1)
  rows = []
  for i in range(kh):
    r = i * dh - top  # input row of output row 0
    o0, o1 = max(0, -r), min(ho, hi - r)
    if o1 <= o0:  # the whole kernel row reads padding
      rows.append(jnp.zeros((cin, kw * cout), jnp.float32))
      continue
    rows.append(jax.lax.dot_general(
        x[:, o0 + r:o1 + r].reshape(-1, cin),
        frames[:, o0:o1].reshape(-1, kw * cout),
        (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32))
  return jnp.stack(rows).reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3)


def _gemm_forward(x, kernel, strides, padding, dilation):
  out_hw = _out_hw(x.shape, kernel.shape, strides, padding, dilation)
  if _few_outputs(x.shape, kernel.shape, strides, padding, dilation, out_hw):
    return _conv_output_taps(x, kernel, strides, padding, dilation, out_hw)
  return _conv_nhwc_padded(x, kernel, strides, padding, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_gemm(x, kernel, strides, padding, dilation):
  return _gemm_forward(x, kernel, strides, padding, dilation)


def _conv_gemm_fwd(x, kernel, strides, padding, dilation):
  return _gemm_forward(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_gemm_bwd(strides, padding, dilation, res, g):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  out_hw = g.shape[1:3]
  if cout <= FEW_OUTPUT_CHANNELS:
    # Autodiff of the output taps would gather kh*kw shifted copies of g
    # per channel, which XLA fuses into a slow loop (1.2 s for the
    # translators' 7x7 64->3 conv at 128x128): XLA's own gradients are the
    # faster ones here.
    conv = _conv_nhwc
  elif _few_outputs(x.shape, kernel.shape, strides, padding, dilation,
                    out_hw):
    conv = functools.partial(_conv_output_taps, out_hw=out_hw)
  else:
    conv = None
  if conv is not None:
    _, vjp = jax.vjp(lambda x_, k_: conv(x_, k_, strides, padding, dilation),
                     x, kernel)
    return vjp(g)
  cols_of = lambda x_: _im2col(x_, (kh, kw), strides, padding, dilation,
                               out_hw)
  if INPUT_GRAD_CONV and strides == (1, 1):
    _, x_vjp = jax.vjp(
        lambda x_: _conv_nhwc(x_, kernel, strides, padding, dilation), x)
    (dx,) = x_vjp(g)
  else:
    # dcols = g W^T; the input gradient is im2col's transpose (pads +
    # adds), summed in f32.
    dcols = jax.lax.dot_general(g, kernel.reshape(kh * kw * cin, cout),
                                (((3,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
    _, cols_vjp = jax.vjp(cols_of, x.astype(jnp.float32))
    (dx,) = cols_vjp(dcols)
  # dk = im2col(x)^T g, as one matmul or one per tap (TAP_MATMUL_MIN).
  xt_g = lambda a: jax.lax.dot_general(
      a.reshape(-1, a.shape[-1]), g.reshape(-1, cout),
      (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  unpadded = padding == ((0, 0), (0, 0))
  if (cin * cout >= TAP_MATMUL_MIN and strides == (1, 1) and KERNEL_GRAD_ROWS
      and (unpadded or KERNEL_GRAD_ROWS_PADDED)):
    dk = _kernel_grad_rows(x, g, kernel.shape, padding, dilation)
  elif cin * cout >= TAP_MATMUL_MIN:
    dk = jnp.stack([
        xt_g(_shifted(x, offset, strides, out_hw))
        for _, _, offset in _tap_offsets(kernel.shape, padding, dilation)])
  else:
    dk = xt_g(cols_of(x))
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_conv_gemm.defvjp(_conv_gemm_fwd, _conv_gemm_bwd)


def conv_general_dilated_gemm(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1,
    precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` (the subset ``nn.Conv`` uses on NHWC
  inputs) with every gradient a matmul; anything else goes to ``lax``.

  XLA:CPU computes convolution gradients (and convolutions with few output
  channels) several times slower than the equivalent matmuls. Here a 1x1
  convolution is a matmul (so autodiff gives matmuls), and so is one with
  few outputs (``_few_outputs``: ``_conv_output_taps``; for at most
  ``FEW_OUTPUT_CHANNELS`` outputs with XLA's gradients), and a wide
  unpadded 3x3 stride-1 one is Winograd's F(2x2, 3x3) with its own
  gradients (``WINOGRAD_MIN``, ``winograd.conv3x3``). Otherwise the
  forward pass is XLA's (padded: ``_conv_nhwc_padded``), the kernel
  gradient is im2col(x)^T g (from ``TAP_MATMUL_MIN`` kernel entries per
  tap: one matmul per kernel row when stride 1 and unpadded, else one per
  tap) and the input gradient im2col's transpose
  applied to g W^T. The same
  function and gradients up to float summation order; the backward pass
  holds a ``kh*kw``-times copy of the input (a CPU option, not a memory
  one).
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
  strides = tuple(window_strides)
  if rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    # A 1x1 convolution is a matmul: autodiff gives matmul gradients.
    return pixel_matmul(lhs[:, ::strides[0], ::strides[1]], rhs[0, 0])
  if (WINOGRAD_MIN is not None and rhs.shape[2] * rhs.shape[3] >= WINOGRAD_MIN
      and winograd.applies(lhs.shape, rhs.shape, strides, padding, dilation,
                           lhs.dtype)):
    return winograd.conv3x3(lhs, rhs.astype(lhs.dtype))
  return _conv_gemm(lhs, rhs, strides, padding, dilation)
