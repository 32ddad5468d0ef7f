"""Micro-benchmarks behind README "Speed" (CPU): XLA's convolutions vs
compute.conv='gemm' (layers.conv_general_dilated_gemm), and the
translators' transposed convs vs SubpixelConvTranspose.

  PYTHONPATH=. python benchmarks/micro_convs.py [convs upsampling valid_padding winograd]

Prints, per layer: forward ms and forward + both gradients ms for each
implementation, and the gradients' largest relative difference; then the
translators' transposed convs vs SubpixelConvTranspose, XLA's unpadded
convolutions vs the same run zero-padded and cropped, and a residual
block's convolution direct vs Winograd.
"""
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crdoco_jax.models import layers
from crdoco_jax.models import translator

# (input NHWC, kernel, output channels, stride, dilation): the reference's
# translator (ngf 64 at 128x128: 7x7 stem and output, 3x3 residual blocks at
# 32x32x256), ResNet-50 bottleneck 1x1s and dilated 3x3s at 17x17.
CONVS = [((2, 134, 134, 3), 7, 64, 1, 1), ((2, 134, 134, 64), 7, 3, 1, 1),
         ((2, 128, 128, 64), 3, 128, 2, 1), ((2, 32, 32, 256), 3, 256, 1, 1),
         ((2, 17, 17, 1024), 1, 2048, 1, 1), ((2, 17, 17, 512), 3, 512, 1, 4),
         ((2, 128, 128, 64), 3, 64, 1, 1)]


def bench(fn, *args, n=5):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * np.median(times)


def compare_convs():
  rng = np.random.default_rng(0)
  for shape, k, cout, stride, dil in CONVS:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, shape[-1], cout)) * 0.05,
                    jnp.float32)
    conv = lambda impl: lambda x, w: impl(
        x, w, (stride,) * 2, "VALID", rhs_dilation=(dil, dil),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    row, grads = [], []
    for name in layers.CONV_IMPLS:
      f = conv(layers.conv_general_dilated_fn(name))
      both = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(f(x, w) ** 2),
                                        (0, 1)))
      grads.append(both(x, w)[1])
      row.append(f"{name}: fwd {bench(jax.jit(f), x, w):.1f} ms, "
                 f"fwd+grads {bench(both, x, w):.1f} ms")
    err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
              for a, b in zip(*grads))
    print(shape, k, cout, stride, dil, " | ".join(row), f"relerr {err:.1e}",
          flush=True)


def compare_upsampling():
  rng = np.random.default_rng(0)
  for shape, co in [((2, 16, 16, 64), 32), ((2, 32, 32, 32), 16)]:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    g = jnp.asarray(rng.normal(size=(shape[0], 2 * shape[1], 2 * shape[2],
                                     co)), jnp.float32)
    ref = nn.ConvTranspose(co, (3, 3), strides=(2, 2),
                           padding=((1, 2), (1, 2)))
    new = translator.SubpixelConvTranspose(co)
    p = ref.init(jax.random.PRNGKey(0), x)
    grads = []
    for name, m in (("conv_transpose", ref), ("subpixel", new)):
      gr = jax.jit(jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) * g),
                            (0, 1)))
      grads.append(jax.tree_util.tree_leaves(gr(p, x)))
      print(shape, co, name, "fwd %.2f ms, fwd+grad %.2f ms" % (
          bench(jax.jit(m.apply), p, x), bench(gr, p, x)))
    print("  grad relerr", max(float(jnp.max(jnp.abs(a - b)) /
                                     jnp.max(jnp.abs(a)))
                               for a, b in zip(*grads)))


def compare_valid_padding():
  """XLA's forward pass of the reference's unpadded (reflect-padded) convs
  as they are and zero-padded then cropped (layers._conv_nhwc_padded)."""
  rng = np.random.default_rng(0)
  for shape, k, cout in [((2, 134, 134, 64), 7, 3), ((2, 134, 134, 3), 7, 64),
                         ((2, 34, 34, 256), 3, 256)]:
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, shape[-1], cout)), jnp.float32)
    args = ((1, 1), ((0, 0), (0, 0)), (1, 1))
    valid = jax.jit(lambda x, w: layers._conv_nhwc(x, w, *args))
    padded = jax.jit(lambda x, w: layers._conv_nhwc_padded(x, w, *args))
    err = float(jnp.max(jnp.abs(valid(x, w) - padded(x, w))))
    print(shape, k, cout, f"VALID fwd {bench(valid, x, w):.1f} ms, "
          f"padded+cropped fwd {bench(padded, x, w):.1f} ms, maxerr {err:.1e}",
          flush=True)


def compare_winograd():
  """A translator residual block's convolution (3x3, 256 -> 256, unpadded,
  on 2x34x34) in the gemm path, direct (``layers.WINOGRAD_MIN = None``)
  and as Winograd F(2x2, 3x3) (the default)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 34, 34, 256)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 256, 256)) * 0.05, jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 32, 32, 256)), jnp.float32)
  default, row, grads = layers.WINOGRAD_MIN, [], []
  for name, threshold in (("direct", None), ("winograd", default)):
    layers.WINOGRAD_MIN = threshold  # read while tracing
    # A new function per setting: jit caches traces by function.
    f = lambda x, w: layers.conv_general_dilated_gemm(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fwd = jax.jit(f)
    vjp = jax.jit(lambda x, w: jax.vjp(f, x, w)[1](g))
    grads.append(vjp(x, w))
    row.append(f"{name}: fwd {bench(fwd, x, w, n=21):.2f} ms, both "
               f"gradients {bench(vjp, x, w, n=21):.2f} ms")
  layers.WINOGRAD_MIN = default
  err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
            for a, b in zip(*grads))
  print((2, 34, 34, 256), 3, 256, " | ".join(row), f"grad relerr {err:.1e}",
        flush=True)


SECTIONS = dict(convs=compare_convs, upsampling=compare_upsampling,
                valid_padding=compare_valid_padding, winograd=compare_winograd)

if __name__ == "__main__":
  # Section names on the command line run only those; none: all.
  for section in sys.argv[1:] or list(SECTIONS):
    SECTIONS[section]()
