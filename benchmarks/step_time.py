r"""Times the full pmapped CrDoCo train step; prints one JSON line.

  python benchmarks/step_time.py                     # torch reference defaults
  python benchmarks/step_time.py --task-net resnet18 --image-size 64 \
      --batch 1 --gen-blocks 6 --ngf 32              # demo-like sizes
  python benchmarks/step_time.py --vs-torch          # also run the PyTorch
                                                     # reference, print ratio
  python benchmarks/step_time.py --preset paper --compile-only \
      --share-encoder --share-last 2 --remat        # memory at paper sizes

``--preset`` picks the sizes: ``torch`` (default) the reference's defaults,
``paper`` configs/seg.py's GTA5 -> Cityscapes setting (720x1280 source,
512x1024 target, DeepLab-v2 ResNet-101 multi-level, ngf 64 / 9 blocks,
batch 1), ``demo`` configs/seg.py:demo (64x64, batch 2, ResNet-18 width 32,
ngf 16 / 3 blocks, discriminators ndf 16, demo recipe); explicit flags
override the preset. ``--compile-only`` builds the state abstractly
(jax.eval_shape), compiles and reports cost and memory analysis without
running a step.

Architecture flags mirror ../shared/bench/torch_crdoco_step.py (single-level
DeepLab-v2, one source and one target batch of ``--batch`` images, the same
optimizers and loss weights), so both time identical work. Reported: median
step time after compilation, images/s (source + target images per second),
compile time, FLOPs per step and achieved FLOP/s from XLA's cost analysis,
peak memory from the compiled executable's memory analysis, and the device's
own peak where the platform reports it. On CPU, the process's user and
system CPU seconds per step and the cores they kept busy
(``(user + sys) / wall``) tell an idle core from slower work.
"""
import argparse
import contextlib
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator

TORCH_REFERENCE = os.environ.get("CRDOCO_TORCH_REFERENCE", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench",
    "torch_crdoco_step.py"))


# Sizes of each preset; flags given explicitly override them.
PRESETS = dict(
    torch=dict(config="", source_size=(128, 128), target_size=(128, 128),
               batch=2, ngf=64, gen_blocks=9, task_net="resnet50", width=64,
               num_classes=19, multi_level=False, disc_ndf=64),
    paper=dict(config="", source_size=(720, 1280), target_size=(512, 1024),
               batch=1, ngf=64, gen_blocks=9, task_net="resnet101", width=64,
               num_classes=19, multi_level=True, disc_ndf=64),
    demo=dict(config="demo", source_size=(64, 64), target_size=(64, 64),
              batch=2, ngf=16, gen_blocks=3, task_net="resnet18", width=32,
              num_classes=7, multi_level=False, disc_ndf=16),
)


def _size(text):
  """'128' -> (128, 128); '720x1280' -> (720, 1280) (height x width)."""
  hw = tuple(int(v) for v in text.lower().split("x"))
  return hw * 2 if len(hw) == 1 else hw


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="torch", choices=sorted(PRESETS))
  p.add_argument("--image-size", type=_size, default=None,
                 help="source and target size: S or HxW")
  p.add_argument("--source-size", type=_size, default=None)
  p.add_argument("--target-size", type=_size, default=None)
  p.add_argument("--batch", type=int, default=None, help="per device")
  p.add_argument("--ngf", type=int, default=None)
  p.add_argument("--gen-blocks", type=int, default=None)
  p.add_argument("--task-net", default=None,
                 choices=["resnet10", "resnet18", "resnet34", "resnet50",
                          "resnet101"],
                 help="resnet10: a test-size net, not in the reference")
  p.add_argument("--width", type=int, default=None,
                 help="task-net stem channels (64: standard ResNets)")
  p.add_argument("--disc-ndf", type=int, default=None,
                 help="image and output-space discriminator width")
  p.add_argument("--num-classes", type=int, default=None)
  p.add_argument("--multi-level", action="store_true", default=None)
  p.add_argument("--dtype", default="float32",
                 choices=["float32", "bfloat16"])
  p.add_argument("--remat", action="store_true",
                 help="remat every translator and task-net block")
  p.add_argument("--remat-networks", action="store_true",
                 help="jax.checkpoint around every network pass of the step")
  p.add_argument("--share-encoder", action="store_true")
  p.add_argument("--share-last", type=int, default=0)
  p.add_argument("--frozen-translator", action="store_true")
  p.add_argument("--subpixel", action="store_true",
                 help="translator upsampling as four stride-1 convs")
  p.add_argument("--conv", default="xla", choices=["xla", "gemm"],
                 help="compute.conv: 'gemm' computes every convolution's "
                 "gradients as matmuls")
  p.add_argument("--batch-passes", action="store_true",
                 help="compute.batch_passes: one pass per network over the "
                 "inputs it sees together")
  p.add_argument("--devices", type=int, default=1,
                 help="local devices to pmap over")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--compile-only", action="store_true",
                 help="compile and analyse only; no step is run")
  p.add_argument("--dump-hlo", default="",
                 help="write the optimised HLO of the step to this file")
  p.add_argument("--vs-torch", action="store_true")
  p.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"])
  p.add_argument("--time-lock", default="",
                 help="a file: benchmark processes sharing one device and "
                 "naming the same file compile in parallel but time their "
                 "steps (and the PyTorch run) one at a time")
  args = p.parse_args(argv)
  if args.image_size is not None:
    args.source_size = args.source_size or args.image_size
    args.target_size = args.target_size or args.image_size
  for k, v in PRESETS[args.preset].items():
    if getattr(args, k, None) is None:
      setattr(args, k, v)
  if args.vs_torch and (args.source_size != args.target_size
                        or args.source_size[0] != args.source_size[1]
                        or args.width != 64 or args.disc_ndf != 64
                        or args.multi_level or args.config
                        or args.task_net == "resnet10"):
    p.error("--vs-torch needs the reference's architecture: square equal "
            "sizes, width 64, disc ndf 64, single level, a standard ResNet, "
            "--preset torch.")
  if args.vs_torch and args.compile_only:
    p.error("--vs-torch times steps; drop --compile-only.")
  return args


def make_config(args):
  from configs import seg  # pylint: disable=g-import-not-at-top
  c = seg.get_config(args.config)
  if args.num_classes != c.data.num_classes:
    c.data.num_classes = args.num_classes
    c.data.class_names = tuple(str(i) for i in range(args.num_classes))
  c.data.per_device_batch = args.batch
  c.source.image_size = tuple(args.source_size)
  c.target.image_size = tuple(args.target_size)
  c.translator.update(ngf=args.ngf, n_blocks=args.gen_blocks,
                      share_encoder=args.share_encoder, remat=args.remat,
                      frozen=args.frozen_translator, subpixel=args.subpixel)
  # The PyTorch reference trains its BatchNorm scales and offsets.
  c.task_net.update(arch=args.task_net, multi_level=args.multi_level,
                    share_last=args.share_last, remat=args.remat,
                    width=args.width, bn_affine="train")
  c.disc.update(img_ndf=args.disc_ndf, feat_ndf=args.disc_ndf)
  if args.preset == "torch":
    c.optim.task_net.head_lr_mult = 1.0  # the reference uses one rate
  c.compute.dtype = args.dtype
  c.compute.conv = args.conv
  c.compute.remat_networks = args.remat_networks
  c.compute.batch_passes = args.batch_passes
  return c


def memory_summary(compiled):
  """Byte sizes of the compiled executable's memory analysis, and its peak:
  arguments + outputs + temporaries - outputs aliased to (donated) inputs."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}, None
  fields = ("argument", "output", "temp", "alias", "generated_code")
  sizes = {f"{f}_bytes": int(getattr(mem, f"{f}_size_in_bytes"))
           for f in fields}
  peak = (sizes["argument_bytes"] + sizes["output_bytes"]
          + sizes["temp_bytes"] - sizes["alias_bytes"])
  return sizes, peak


@contextlib.contextmanager
def exclusive(path):
  """Holds an exclusive advisory lock on file `path` ('' : no lock)."""
  if not path:
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def measured(fn):
  """``(fn(), record)``: ``record`` holds the call's wall seconds and this
  process's user and system CPU seconds over it (all threads)."""
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  out = fn()
  wall = time.perf_counter() - t0
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return out, dict(wall=wall, user=r1.ru_utime - r0.ru_utime,
                   sys=r1.ru_stime - r0.ru_stime)


def cpu_summary(records) -> dict:
  """Medians over per-step ``measured`` records: CPU seconds per step and
  cores busy."""
  med = lambda f: statistics.median(f(r) for r in records)
  return dict(cpu_user_s_per_step=med(lambda r: r["user"]),
              cpu_sys_s_per_step=med(lambda r: r["sys"]),
              cores_busy=med(lambda r: (r["user"] + r["sys"]) / r["wall"]))


def run_jax(args, return_compiled=False, timing=None):
  """Compiles (and unless --compile-only, times) the step. `timing`: an
  ExitStack that takes the --time-lock just before the timed steps and
  keeps it until the caller closes the stack."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from crdoco_jax import models, parallel  # pylint: disable=g-import-not-at-top
  from crdoco_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from crdoco_jax import train_step  # pylint: disable=g-import-not-at-top

  config = make_config(args)
  jax.config.update("jax_threefry_partitionable",
                    config.compute.threefry_partitionable)
  devices = jax.local_devices()[:args.devices]
  n, b, c = len(devices), args.batch, args.num_classes
  (hs, ws), (ht, wt) = args.source_size, args.target_size
  init = lambda: state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
  p_step = jax.pmap(train_step.make_train_step(config, nets),
                    axis_name=parallel.AXIS, devices=devices,
                    donate_argnums=(0,))
  sharding = parallel.device_sharding(devices=devices)
  if args.compile_only:
    # Nothing is initialised or run: shapes only.
    host_state = jax.eval_shape(init)
    state = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((n,) + x.shape, x.dtype,
                                       sharding=sharding), host_state)
    f32 = lambda *shape: jax.ShapeDtypeStruct((n,) + shape, np.float32,
                                              sharding=sharding)
    batch = dict(source_image=f32(b, hs, ws, 3), target_image=f32(b, ht, wt, 3),
                 source_label=jax.ShapeDtypeStruct((n, b, hs, ws), np.int32,
                                                   sharding=sharding))
  else:
    host_state = init()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, c, (n, b, hs, ws)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.1] = 255
    batch = dict(
        source_image=rng.uniform(-1, 1, (n, b, hs, ws, 3)).astype(np.float32),
        target_image=rng.uniform(-1, 1, (n, b, ht, wt, 3)).astype(np.float32),
        source_label=labels)
    state = parallel.shard(jax.tree_util.tree_map(
        lambda x: np.stack([np.asarray(x)] * n), host_state), devices=devices)
    batch = parallel.shard(batch, devices=devices)
  counts = state_lib.parameter_counts(host_state)

  t0 = time.perf_counter()
  lowered = p_step.lower(state, batch)
  lower_s = time.perf_counter() - t0
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if args.dump_hlo:
    with open(args.dump_hlo, "w") as f:
      f.write(compiled.as_text())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  mem_sizes, peak_compiled = memory_summary(compiled)

  result = dict(
      impl="jax", jax_version=jax.__version__,
      device=devices[0].device_kind, platform=devices[0].platform,
      glibc_tunables=os.environ.get("GLIBC_TUNABLES"),
      devices=n, preset=args.preset, source_size=[hs, ws],
      target_size=[ht, wt], image_size=hs if (hs, ws) == (ht, wt) == (hs, hs)
      else None, batch=b, ngf=args.ngf, gen_blocks=args.gen_blocks,
      task_net=args.task_net, width=args.width, multi_level=args.multi_level,
      disc_ndf=args.disc_ndf, num_classes=c, dtype=args.dtype,
      remat=args.remat, remat_networks=args.remat_networks,
      share_encoder=args.share_encoder,
      share_last=args.share_last, frozen_translator=args.frozen_translator,
      subpixel=args.subpixel, conv=args.conv,
      batch_passes=args.batch_passes,
      params=counts, params_total=sum(counts.values()),
      lower_s=lower_s, compile_s=compile_s, flops_per_step=flops,
      peak_bytes_compiled=peak_compiled, memory_analysis=mem_sizes)
  if args.compile_only:
    return result

  if timing is not None:
    timing.enter_context(exclusive(args.time_lock))
  records = []
  for i in range(args.warmup + args.steps):
    (state, metrics), record = measured(
        lambda: jax.block_until_ready(compiled(state, batch)))
    if i >= args.warmup:
      records.append(record)
    losses = {k: float(v[0]) for k, v in metrics.items()}
    assert all(np.isfinite(list(losses.values()))), losses
  times = [r["wall"] for r in records]
  median = statistics.median(times)
  stats = devices[0].memory_stats() or {}
  result.update(
      step_seconds=times, median_step_s=median, **cpu_summary(records),
      images_per_s=2 * b * n / median, flops_per_s=flops / median,
      peak_bytes_in_use=stats.get("peak_bytes_in_use"), last_losses=losses)
  if return_compiled:
    return result, (compiled, state, batch)
  return result


def torch_environment(tunables=""):
  """The PyTorch reference's environment: this process's, with
  ``GLIBC_TUNABLES=tunables`` ('' unsets it: PyTorch as its users run it,
  not with the tunable this process re-executed itself with)."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables:
    env["GLIBC_TUNABLES"] = tunables
  return env


def run_torch(args):
  cmd = [sys.executable, TORCH_REFERENCE, "--json",
         "--image-size", str(args.source_size[0]), "--batch",
         str(args.batch * args.devices), "--ngf", str(args.ngf),
         "--gen-blocks", str(args.gen_blocks), "--task-net", args.task_net,
         "--num-classes", str(args.num_classes), "--steps", str(args.steps),
         "--warmup", str(args.warmup), "--device", args.torch_device]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                       env=torch_environment())
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  args = parse_args(argv)
  with contextlib.ExitStack() as timing:
    result = run_jax(args, timing=timing)
    ref = run_torch(args) if args.vs_torch else None
  for name, n in result["params"].items():
    print(f"params {name:10s} {n:>12,d}", file=sys.stderr)
  if ref is not None:
    result["torch"] = {k: ref[k] for k in ("median_step_s", "images_per_s",
                                           "params", "params_total",
                                           "torch_version", "device",
                                           "threads")}
    result["jax_over_torch_step_time"] = (result["median_step_s"]
                                          / ref["median_step_s"])
  print(json.dumps(result))


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
