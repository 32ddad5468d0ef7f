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

``--profile`` also splits each network's time by kind of op, from
``jax.profiler`` (ops matched to the HLO as in profile_step.py) and
``torch.profiler`` (self CPU time): convolutions and matmuls, and all
the rest (normalisation, activations, pads, copies). Op times overlap
where two ops run at once, and XLA's plain ``dot`` thunks book only their
dispatch, so compare the split, not the sums with the wall times.
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


PROFILED_CALLS = 6
# PyTorch ops that are convolutions or matmuls (their self CPU time).
TORCH_CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward",
                  "aten::_convolution", "aten::convolution", "aten::mm",
                  "aten::addmm", "aten::bmm")


def jax_split(fn, *args):
  """``{'conv+dot': ms, 'other': ms}`` per call of the jitted ``fn`` on
  ``args``, from a ``jax.profiler`` trace of ``PROFILED_CALLS`` calls."""
  import collections  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import profile_step  # pylint: disable=g-import-not-at-top
  compiled = fn.lower(*args).compile()
  kinds = profile_step.classify(compiled.as_text())
  jax.block_until_ready(compiled(*args))
  trace_dir = tempfile.mkdtemp(prefix="crdoco_components_")
  with jax.profiler.trace(trace_dir):
    for _ in range(PROFILED_CALLS):
      jax.block_until_ready(compiled(*args))
  split = collections.Counter()
  for _, _, name, ns in profile_step.read_events(trace_dir):
    if name in kinds:
      conv = kinds[name].startswith(("conv", "dot"))
      split["conv+dot" if conv else "other"] += ns / 1e6 / PROFILED_CALLS
  return dict(split)


def torch_split(step):
  """The same split of PyTorch's self CPU time per call of ``step``."""
  from torch.profiler import profile, ProfilerActivity  # pylint: disable=g-import-not-at-top
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(PROFILED_CALLS):
      step()
  split = {"conv+dot": 0.0, "other": 0.0}
  for event in prof.key_averages():
    key = "conv+dot" if event.key in TORCH_CONV_OPS else "other"
    split[key] += event.self_cpu_time_total / 1e3 / PROFILED_CALLS
  return split


def jax_ms(module, x, domain, train=False, profile=False):
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
  ms = median_ms(lambda: jax.block_until_ready(
      grad(variables["params"], x)))
  return (ms, jax_split(grad, variables["params"], x)) if profile else ms


def torch_ms(net, x_nhwc, profile=False):
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.tensor(x_nhwc).permute(0, 3, 1, 2).contiguous()
  net.train()

  def step():
    x_ = x.clone().requires_grad_(True)
    out = net(x_)
    (out * out).sum().backward()
    net.zero_grad(set_to_none=True)
  ms = median_ms(step)
  return (ms, torch_split(step)) if profile else ms


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  profile = "--profile" in argv
  if profile:
    argv.remove("--profile")
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
      ("G_S->T", lambda: jax_ms(nets.translator, jnp.asarray(image), "S2T",
                                profile=profile),
       lambda: torch_ms(ref.ResnetGenerator(args.ngf, args.gen_blocks),
                        image, profile)),
      ("F_S", lambda: jax_ms(nets.task, jnp.asarray(image), "S", train=True,
                             profile=profile),
       lambda: torch_ms(ref.DeepLabV2(args.task_net, c), image, profile)),
      ("D_img_S", lambda: jax_ms(nets.d_img, jnp.asarray(image), "S",
                                 profile=profile),
       lambda: torch_ms(ref.PatchGAN(args.disc_ndf, 3), image, profile)),
      ("D_feat_S", lambda: jax_ms(nets.d_feat, jnp.asarray(probs), "S",
                                  profile=profile),
       lambda: torch_ms(ref.FCDiscriminator(c, args.disc_ndf), probs,
                        profile)),
  ]
  for name, run_jax, run_torch in rows:
    t_jax, t_torch = run_jax(), run_torch()
    splits = ""
    if profile:
      (t_jax, s_jax), (t_torch, s_torch) = t_jax, t_torch
      fmt = lambda s: (f"conv+dot {s.get('conv+dot', 0.0):7.1f}, other "
                       f"{s.get('other', 0.0):6.1f}")
      splits = f"  op ms: JAX {fmt(s_jax)}; PyTorch {fmt(s_torch)}"
    print(f"{name:9s} JAX {t_jax:8.2f} ms  PyTorch {t_torch:8.2f} ms  "
          f"JAX/PyTorch {t_jax / t_torch:.2f}{splits}", flush=True)


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
