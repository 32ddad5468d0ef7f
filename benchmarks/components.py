r"""Per network: forward pass plus both gradients, JAX vs the PyTorch reference.

  python benchmarks/components.py --subpixel --conv gemm --task-net resnet18 \
      --image-size 64 --batch 1 --gen-blocks 6 --ngf 32

Takes step_time.py's architecture flags and times, for one network of each
pair (G_S->T, F_S, D_img_S, D_feat_S) on ``--batch`` random inputs, the
gradient of sum(output^2) with respect to the parameters and the input:
the JAX module (jitted, the step's conv implementation) and the reference's
PyTorch module (``torch.set_num_threads(2)``). Prints one line per network
(median ms over repeats) and the ratio: where the whole step's gap to
PyTorch comes from. Needs torch. Both run in this process, so both with
the huge-page tunable this script re-executes itself with
(crdoco_jax/host_allocator.py; PyTorch is no faster with it).
"""
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator  # pylint: disable=g-import-not-at-top,wrong-import-position


def median_ms(fn, repeats=15, warmup=2):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def jax_ms(module, x, domain, train=False):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  train_kw = {"train": True} if train else {}
  variables = module.init(jax.random.PRNGKey(0), x, domain, **train_kw)
  kwargs = {**train_kw, "mutable": ["batch_stats"]} if train else {}
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(params, x):
    out = module.apply({"params": params, **rest}, x, domain, **kwargs)
    out = out[0] if train else out
    out = out["main"] if isinstance(out, dict) else out
    return jnp.sum(out * out)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return median_ms(lambda: jax.block_until_ready(
      grad(variables["params"], x)))


def torch_ms(net, x_nhwc):
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.tensor(x_nhwc).permute(0, 3, 1, 2).contiguous()
  net.train()

  def step():
    x_ = x.clone().requires_grad_(True)
    out = net(x_)
    (out * out).sum().backward()
    net.zero_grad(set_to_none=True)
  return median_ms(step)


def main(argv=None):
  args = step_time.parse_args(argv)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from crdoco_jax import models  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("torch_reference",
                                                step_time.TORCH_REFERENCE)
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  torch.set_num_threads(2)

  nets = models.build_networks(step_time.make_config(args))
  (h, w), b, c = args.source_size, args.batch, args.num_classes
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  probs = rng.dirichlet(np.ones(c), (b, h, w)).astype(np.float32)
  rows = [
      ("G_S->T", lambda: jax_ms(nets.translator, jnp.asarray(image), "S2T"),
       lambda: torch_ms(ref.ResnetGenerator(args.ngf, args.gen_blocks),
                        image)),
      ("F_S", lambda: jax_ms(nets.task, jnp.asarray(image), "S", train=True),
       lambda: torch_ms(ref.DeepLabV2(args.task_net, c), image)),
      ("D_img_S", lambda: jax_ms(nets.d_img, jnp.asarray(image), "S"),
       lambda: torch_ms(ref.PatchGAN(args.disc_ndf, 3), image)),
      ("D_feat_S", lambda: jax_ms(nets.d_feat, jnp.asarray(probs), "S"),
       lambda: torch_ms(ref.FCDiscriminator(c, args.disc_ndf), probs)),
  ]
  for name, run_jax, run_torch in rows:
    t_jax, t_torch = run_jax(), run_torch()
    print(f"{name:9s} JAX {t_jax:8.2f} ms  PyTorch {t_torch:8.2f} ms  "
          f"JAX/PyTorch {t_jax / t_torch:.2f}", flush=True)


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
