r"""The reference translator stage by stage, JAX vs PyTorch: where the
translator's gap (benchmarks/components.py) lies.

  python benchmarks/translator_stages.py --subpixel --conv gemm

Takes step_time.py's flags (image size, batch, ngf, the step's conv
implementation) and times, for each stage of the CycleGAN ResNet generator
on ``--batch`` random inputs of its own input shape (stem, the two
stride-2 convs, one residual block, the two upsampling convs, the output
conv), the gradient of sum(output^2) with respect to its parameters and
input, in JAX (jitted) and in PyTorch (2 threads, the reference's layers);
prints one line per stage (median ms) and the sums, the residual block
counted ``--gen-blocks`` times.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import components  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator  # pylint: disable=g-import-not-at-top,wrong-import-position


def stages(args):
  """``[(name, flax module, torch module, input NHWC shape, repeats)]``."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from crdoco_jax.models import layers, translator  # pylint: disable=g-import-not-at-top
  tn, impl, ngf = torch.nn, args.conv, args.ngf

  class Stage(nn.Module):
    """One generator stage; ``domain`` (components.jax_ms's) is unused."""
    kind: str
    features: int

    @nn.compact
    def __call__(self, x, domain=None):
      del domain
      if self.kind == "residual":
        return translator.ResidualBlock(conv_impl=impl)(x)
      if self.kind == "out":
        return jnp.tanh(layers.conv(3, 7, impl=impl)(layers.reflect_pad(x, 3)))
      if self.kind == "stem":
        y = layers.conv(self.features, 7, impl=impl)(layers.reflect_pad(x, 3))
      elif self.kind == "down":
        y = layers.conv(self.features, 3, stride=2, padding=1, impl=impl)(x)
      elif args.subpixel:
        y = translator.SubpixelConvTranspose(self.features, conv_impl=impl)(x)
      else:
        y = nn.ConvTranspose(self.features, (3, 3), strides=(2, 2),
                             padding=((1, 2), (1, 2)))(x)
      return nn.relu(layers.instance_norm()(y))

  def norm_relu(c):
    return [tn.InstanceNorm2d(c), tn.ReLU(True)]

  class TorchResidual(tn.Module):
    def __init__(self, d):
      super().__init__()
      self.body = tn.Sequential(
          tn.ReflectionPad2d(1), tn.Conv2d(d, d, 3), *norm_relu(d),
          tn.ReflectionPad2d(1), tn.Conv2d(d, d, 3), tn.InstanceNorm2d(d))

    def forward(self, x):
      return x + self.body(x)

  b, (h, w) = args.batch, args.source_size
  up = lambda cin, cout: tn.Sequential(
      tn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1),
      *norm_relu(cout))
  return [
      ("stem 7x7", Stage("stem", ngf),
       tn.Sequential(tn.ReflectionPad2d(3), tn.Conv2d(3, ngf, 7),
                     *norm_relu(ngf)), (b, h, w, 3), 1),
      ("down 1", Stage("down", 2 * ngf),
       tn.Sequential(tn.Conv2d(ngf, 2 * ngf, 3, 2, 1), *norm_relu(2 * ngf)),
       (b, h, w, ngf), 1),
      ("down 2", Stage("down", 4 * ngf),
       tn.Sequential(tn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1),
                     *norm_relu(4 * ngf)), (b, h // 2, w // 2, 2 * ngf), 1),
      ("residual block", Stage("residual", 4 * ngf), TorchResidual(4 * ngf),
       (b, h // 4, w // 4, 4 * ngf), args.gen_blocks),
      ("up 1", Stage("up", 2 * ngf), up(4 * ngf, 2 * ngf),
       (b, h // 4, w // 4, 4 * ngf), 1),
      ("up 2", Stage("up", ngf), up(2 * ngf, ngf),
       (b, h // 2, w // 2, 2 * ngf), 1),
      ("out 7x7", Stage("out", 3),
       tn.Sequential(tn.ReflectionPad2d(3), tn.Conv2d(ngf, 3, 7), tn.Tanh()),
       (b, h, w, ngf), 1),
  ]


def main(argv=None):
  args = step_time.parse_args(list(sys.argv[1:] if argv is None else argv))
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  rng = np.random.default_rng(0)
  total_jax = total_torch = 0.0
  for name, module, net, shape, repeats in stages(args):
    x = rng.normal(size=shape).astype(np.float32)
    t_jax = components.jax_ms(module, jnp.asarray(x), None)
    t_torch = components.torch_ms(net, x)
    total_jax, total_torch = (total_jax + repeats * t_jax,
                              total_torch + repeats * t_torch)
    print(f"{name:15s} x{repeats}  JAX {t_jax:8.2f} ms  PyTorch {t_torch:8.2f}"
          f" ms  JAX/PyTorch {t_jax / t_torch:.2f}  (difference x{repeats}: "
          f"{repeats * (t_jax - t_torch):+7.1f} ms)", flush=True)
  print(f"sum            JAX {total_jax:8.2f} ms  PyTorch {total_torch:8.2f} ms"
        f"  JAX/PyTorch {total_jax / total_torch:.2f}")


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
