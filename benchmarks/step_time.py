r"""Times the full pmapped CrDoCo train step; prints one JSON line.

  python benchmarks/step_time.py                     # torch reference defaults
  python benchmarks/step_time.py --task-net resnet18 --image-size 64 \
      --batch 1 --gen-blocks 6 --ngf 32              # demo-like sizes
  python benchmarks/step_time.py --vs-torch          # also run the PyTorch
                                                     # reference, print ratio

Architecture flags mirror ../shared/bench/torch_crdoco_step.py (single-level
DeepLab-v2, one source and one target batch of ``--batch`` images, the same
optimizers and loss weights), so both time identical work. Reported: median
step time after compilation, images/s (source + target images per second),
compile time, FLOPs per step and achieved FLOP/s from XLA's cost analysis,
peak memory from the compiled executable's memory analysis, and the device's
own peak where the platform reports it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TORCH_REFERENCE = os.environ.get("CRDOCO_TORCH_REFERENCE", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench",
    "torch_crdoco_step.py"))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image-size", type=int, default=128)
  p.add_argument("--batch", type=int, default=2, help="per device")
  p.add_argument("--ngf", type=int, default=64)
  p.add_argument("--gen-blocks", type=int, default=9)
  p.add_argument("--task-net", default="resnet50",
                 choices=["resnet18", "resnet34", "resnet50", "resnet101"])
  p.add_argument("--num-classes", type=int, default=19)
  p.add_argument("--multi-level", action="store_true")
  p.add_argument("--dtype", default="float32",
                 choices=["float32", "bfloat16"])
  p.add_argument("--remat", action="store_true")
  p.add_argument("--share-encoder", action="store_true")
  p.add_argument("--share-last", type=int, default=0)
  p.add_argument("--frozen-translator", action="store_true")
  p.add_argument("--devices", type=int, default=1,
                 help="local devices to pmap over")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--vs-torch", action="store_true")
  p.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"])
  return p.parse_args(argv)


def make_config(args):
  from configs import seg  # pylint: disable=g-import-not-at-top
  c = seg.get_config()
  c.data.num_classes = args.num_classes
  c.data.class_names = tuple(str(i) for i in range(args.num_classes))
  c.data.per_device_batch = args.batch
  c.source.image_size = c.target.image_size = (args.image_size,) * 2
  c.translator.update(ngf=args.ngf, n_blocks=args.gen_blocks,
                      share_encoder=args.share_encoder, remat=args.remat,
                      frozen=args.frozen_translator)
  c.task_net.update(arch=args.task_net, multi_level=args.multi_level,
                    share_last=args.share_last, remat=args.remat)
  c.optim.task_net.head_lr_mult = 1.0  # the reference uses one rate
  c.compute.dtype = args.dtype
  return c


def run_jax(args):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from crdoco_jax import models, parallel  # pylint: disable=g-import-not-at-top
  from crdoco_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from crdoco_jax import train_step  # pylint: disable=g-import-not-at-top

  config = make_config(args)
  jax.config.update("jax_threefry_partitionable",
                    config.compute.threefry_partitionable)
  devices = jax.local_devices()[:args.devices]
  n, b, s, c = len(devices), args.batch, args.image_size, args.num_classes
  host_state = state_lib.create_train_state(
      config, models.build_networks(config), jax.random.PRNGKey(0))
  counts = state_lib.parameter_counts(host_state)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, c, (n, b, s, s)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = 255
  batch = dict(
      source_image=rng.uniform(-1, 1, (n, b, s, s, 3)).astype(np.float32),
      target_image=rng.uniform(-1, 1, (n, b, s, s, 3)).astype(np.float32),
      source_label=labels)
  nets = models.build_networks(config, bn_axis_name=parallel.AXIS)
  p_step = jax.pmap(train_step.make_train_step(config, nets),
                    axis_name=parallel.AXIS, devices=devices,
                    donate_argnums=(0,))
  state = parallel.shard(jax.tree_util.tree_map(
      lambda x: np.stack([np.asarray(x)] * n), host_state), devices=devices)
  batch = parallel.shard(batch, devices=devices)

  t0 = time.perf_counter()
  compiled = p_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  mem = compiled.memory_analysis()
  peak_compiled = None
  if mem is not None:
    peak_compiled = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes)

  times = []
  for i in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
    losses = {k: float(v[0]) for k, v in metrics.items()}
    assert all(np.isfinite(list(losses.values()))), losses
  median = statistics.median(times)
  stats = devices[0].memory_stats() or {}
  return dict(
      impl="jax", jax_version=jax.__version__,
      device=devices[0].device_kind, platform=devices[0].platform,
      devices=n, image_size=s, batch=b, ngf=args.ngf,
      gen_blocks=args.gen_blocks, task_net=args.task_net, num_classes=c,
      dtype=args.dtype, remat=args.remat, share_encoder=args.share_encoder,
      share_last=args.share_last, frozen_translator=args.frozen_translator,
      params=counts, params_total=sum(counts.values()),
      compile_s=compile_s, step_seconds=times, median_step_s=median,
      images_per_s=2 * b * n / median,
      flops_per_step=flops, flops_per_s=flops / median,
      peak_bytes_compiled=peak_compiled,
      peak_bytes_in_use=stats.get("peak_bytes_in_use"),
      last_losses=losses)


def run_torch(args):
  cmd = [sys.executable, TORCH_REFERENCE, "--json",
         "--image-size", str(args.image_size), "--batch",
         str(args.batch * args.devices), "--ngf", str(args.ngf),
         "--gen-blocks", str(args.gen_blocks), "--task-net", args.task_net,
         "--num-classes", str(args.num_classes), "--steps", str(args.steps),
         "--warmup", str(args.warmup), "--device", args.torch_device]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  args = parse_args(argv)
  result = run_jax(args)
  for name, n in result["params"].items():
    print(f"params {name:10s} {n:>12,d}", file=sys.stderr)
  if args.vs_torch:
    ref = run_torch(args)
    result["torch"] = {k: ref[k] for k in ("median_step_s", "images_per_s",
                                           "params", "params_total",
                                           "torch_version", "device",
                                           "threads")}
    result["jax_over_torch_step_time"] = (result["median_step_s"]
                                          / ref["median_step_s"])
  print(json.dumps(result))


if __name__ == "__main__":
  main()
