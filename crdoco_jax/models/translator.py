"""Image translators G_{S->T} and G_{T->S}: the CycleGAN ResNet generator.

Layout (CycleGAN ``resnet_{n}blocks``, instance norm, conv biases on):
reflect-pad 3, 7x7 conv -> two 3x3 stride-2 convs -> n residual blocks ->
two 3x3 stride-2 transposed convs -> reflect-pad 3, 7x7 conv, tanh.
Images are NHWC in [-1, 1]. With ngf=64 and 9 blocks: 11,378,179 parameters.

``residual=True`` (not CycleGAN's) adds the input to the output layer's
pre-activation, ``tanh(atanh(x) + conv(...))``: a translator that starts at
the identity (its output conv is zero-initialised) and learns a change of
appearance, so fine texture the decoder could not redraw (the grain flow
matching needs) passes through. Same parameters either way.

The generator is split into an ``Encoder`` (stem, downsampling and the first
``encoder_blocks`` residual blocks) and a ``Decoder`` (the remaining blocks and
the upsampling), so that the two translators can share their encoder, the
memory-saving option the paper proposes.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crdoco_jax.models import layers

DIRECTIONS = ("S2T", "T2S")
_SKIP_MAX = 0.995  # atanh(0.995) = 3.0


class ResidualBlock(nn.Module):
  """x + IN(conv(pad(ReLU(IN(conv(pad(x))))))), no ReLU after the sum."""
  dtype: Any = jnp.float32
  conv_impl: str = "xla"  # layers.CONV_IMPLS

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    y = x
    for i in range(2):
      y = layers.conv(dim, 3, dtype=self.dtype, impl=self.conv_impl)(
          layers.reflect_pad(y, 1))
      y = layers.instance_norm(self.dtype)(y)
      if i == 0:
        y = nn.relu(y)
    return x + y


def _residual_blocks(x, n: int, remat: bool, dtype, conv_impl: str):
  """``n`` ResidualBlocks, named as without remat (checkpoints load either
  way); called inside a compact module, whose submodules they become."""
  block = nn.remat(ResidualBlock) if remat else ResidualBlock
  for i in range(n):
    x = block(dtype, conv_impl, name=f"ResidualBlock_{i}")(x)
  return x


class SubpixelConvTranspose(nn.Module):
  """PyTorch ``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)`` (what
  ``nn.ConvTranspose`` with padding ((1, 2), (1, 2)) computes, same
  ``kernel``/``bias`` parameters) as four small stride-1 convolutions on the
  input, one per output phase, interleaved: output pixel (2u+a, 2v+b) sums
  the taps of kernel rows {1} (a=0) or {0, 2} (a=1), likewise columns.

  The same sums without the zeros of the dilated input; XLA:CPU runs a
  transposed convolution's forward pass and kernel gradient through its
  slow generic convolution, these four through its fast one.
  """
  features: int
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", layers.gan_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    n, h, w, _ = x.shape
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # x[h] = x[w] = 0
    taps = ((1,), (0, 2))  # kernel rows (columns) of output phase 0 and 1
    rows = []
    for a in (0, 1):
      cols = []
      for b in (0, 1):
        k = kernel[jnp.array(taps[a])][:, jnp.array(taps[b])]
        y = layers.conv_general_dilated_fn(self.conv_impl)(
            x[:, :h + a, :w + b], k, (1, 1), ((0, 0), (0, 0)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        cols.append(y)
      rows.append(jnp.stack(cols, axis=3))  # [n, h, w, 2(b), c]
    y = jnp.stack(rows, axis=2)  # [n, h, 2(a), w, 2(b), c]
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias


class Encoder(nn.Module):
  """Stem + two stride-2 downsamples + ``n_blocks`` residual blocks.

  ``[N, H, W, 3] -> [N, H/4, W/4, 4*ngf]``.
  """
  ngf: int = 64
  n_blocks: int = 0
  remat: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    x = layers.conv(self.ngf, 7, dtype=self.dtype, impl=self.conv_impl)(
        layers.reflect_pad(x, 3))
    x = nn.relu(layers.instance_norm(self.dtype)(x))
    for mult in (2, 4):
      x = layers.conv(self.ngf * mult, 3, stride=2, padding=1,
                      dtype=self.dtype, impl=self.conv_impl)(x)
      x = nn.relu(layers.instance_norm(self.dtype)(x))
    return _residual_blocks(x, self.n_blocks, self.remat, self.dtype,
                            self.conv_impl)


class Decoder(nn.Module):
  """``n_blocks`` residual blocks + two stride-2 transposed convs + output.

  ``[N, h, w, 4*ngf] -> [N, 4h, 4w, 3]`` in [-1, 1] (float32).
  """
  ngf: int = 64
  n_blocks: int = 9
  remat: bool = False
  dtype: Any = jnp.float32
  subpixel: bool = False  # SubpixelConvTranspose: same maths, same params
  residual: bool = False  # tanh(atanh(image) + ...); output conv starts at 0
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, image):
    """``image``: the translator's input ``[N, 4h, 4w, 3]`` (read only when
    residual)."""
    x = _residual_blocks(x, self.n_blocks, self.remat, self.dtype,
                         self.conv_impl)
    for i, mult in enumerate((2, 1)):
      # PyTorch ConvTranspose2d(k=3, s=2, p=1, output_padding=1) == exact 2x;
      # in lax.conv_transpose terms: padding (k-1-p, k-1-p+output_padding).
      if self.subpixel:
        x = SubpixelConvTranspose(self.ngf * mult, self.dtype,
                                  self.conv_impl, name=f"ConvTranspose_{i}")(x)
      else:
        x = nn.ConvTranspose(self.ngf * mult, (3, 3), strides=(2, 2),
                             padding=((1, 2), (1, 2)),
                             kernel_init=layers.gan_init,
                             bias_init=nn.initializers.zeros,
                             dtype=self.dtype)(x)
      x = nn.relu(layers.instance_norm(self.dtype)(x))
    x = layers.conv(3, 7, dtype=self.dtype, impl=self.conv_impl,
                    kernel_init=(nn.initializers.zeros if self.residual
                                 else layers.gan_init))(
                                     layers.reflect_pad(x, 3))
    x = x.astype(jnp.float32)
    if self.residual:
      # Clipped so that saturated pixels (|x| = 1) stay finite.
      x = x + jnp.arctanh(jnp.clip(image.astype(jnp.float32), -_SKIP_MAX,
                                   _SKIP_MAX))
    return jnp.tanh(x)


class ResnetGenerator(nn.Module):
  """One CycleGAN ResNet generator ``[N, H, W, 3] -> [N, H, W, 3]``.

  ``H`` and ``W`` must be multiples of 4.
  """
  ngf: int = 64
  n_blocks: int = 9
  encoder_blocks: int = 0
  remat: bool = False
  dtype: Any = jnp.float32
  subpixel: bool = False
  residual: bool = False
  conv_impl: str = "xla"

  def setup(self):
    _check_blocks(self.n_blocks, self.encoder_blocks)
    self.encoder = Encoder(self.ngf, self.encoder_blocks, self.remat,
                           self.dtype, self.conv_impl)
    self.decoder = Decoder(self.ngf, self.n_blocks - self.encoder_blocks,
                           self.remat, self.dtype, self.subpixel,
                           self.residual, self.conv_impl)

  def __call__(self, x):
    return self.decoder(self.encoder(x), x)


class TranslatorPair(nn.Module):
  """G_{S->T} and G_{T->S}, optionally sharing one encoder.

  Parameters: ``{'G_S2T': {encoder, decoder}, 'G_T2S': {...}}``, or with
  ``share_encoder``: ``{'encoder', 'decoder_S2T', 'decoder_T2S'}``.
  ``__call__(x, direction)`` translates ``[N, H, W, 3]`` images; direction is
  'S2T' or 'T2S'. ``init`` with ``direction=None`` builds both.
  """
  ngf: int = 64
  n_blocks: int = 9
  share_encoder: bool = False
  encoder_blocks: int = 0
  remat: bool = False
  dtype: Any = jnp.float32
  subpixel: bool = False  # upsampling by SubpixelConvTranspose
  residual: bool = False  # output = tanh(atanh(input) + decoder's)
  conv_impl: str = "xla"  # layers.CONV_IMPLS: 'gemm' is faster on XLA:CPU

  def setup(self):
    _check_blocks(self.n_blocks, self.encoder_blocks)
    if self.share_encoder:
      self.encoder = Encoder(self.ngf, self.encoder_blocks, self.remat,
                             self.dtype, self.conv_impl)
      dec_blocks = self.n_blocks - self.encoder_blocks
      dec = lambda: Decoder(self.ngf, dec_blocks, self.remat, self.dtype,
                            self.subpixel, self.residual, self.conv_impl)
      self.decoder_S2T, self.decoder_T2S = dec(), dec()
    else:
      gen = lambda: ResnetGenerator(self.ngf, self.n_blocks,
                                    self.encoder_blocks, self.remat,
                                    self.dtype, self.subpixel, self.residual,
                                    self.conv_impl)
      self.G_S2T, self.G_T2S = gen(), gen()

  def __call__(self, x: jax.Array, direction: str = None):
    if direction is None:  # initialise both directions
      return self(x, "S2T"), self(x, "T2S")
    if direction not in DIRECTIONS:
      raise ValueError(f"direction must be one of {DIRECTIONS}, got "
                       f"{direction!r}")
    if self.share_encoder:
      decoder = self.decoder_S2T if direction == "S2T" else self.decoder_T2S
      return decoder(self.encoder(x), x)
    return (self.G_S2T if direction == "S2T" else self.G_T2S)(x)


def _check_blocks(n_blocks: int, encoder_blocks: int):
  if not 0 <= encoder_blocks <= n_blocks:
    raise ValueError(f"translator.encoder_blocks={encoder_blocks} must lie in "
                     f"[0, n_blocks={n_blocks}].")
