r"""JAX and the PyTorch reference step in alternating blocks; one JSON line.

``step_time.py --vs-torch`` times all of JAX's steps, then all of
PyTorch's. On a host whose speed drifts over minutes (PyTorch's own step
moved 21-34% between runs minutes apart in session 30, README "Speed"),
that ratio measures the drift as well as the libraries. Here a child
process holds the reference's networks and batch
(../shared/bench/torch_crdoco_step.py) and the parent alternates blocks of
``--block`` JAX steps and ``--block`` PyTorch steps for ``--rounds``
rounds, so the two blocks of a round see the same machine. The first step
of every block is not timed: a step that follows the other library's (or
any idle spell of seconds) runs slower than back-to-back steps do (JAX at
the reference defaults: 3-10%, session 31), and training runs back to
back. Reported: each library's timed steps and median, every round's JAX
/ PyTorch ratio of block medians and the median of those ratios. Each
process is idle (a blocking read) while the other runs.

  python benchmarks/interleaved_vs_torch.py --subpixel --conv gemm \
      --rounds 6 --block 3
  python benchmarks/interleaved_vs_torch.py --task-net resnet18 \
      --image-size 64 --batch 1 --gen-blocks 6 --ngf 32 --subpixel \
      --conv gemm --rounds 10 --block 4

Takes step_time.py's flags (the architecture must be the reference's, as
for ``--vs-torch``; ``--steps`` and ``--warmup`` are not used).
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import step_time
import torch_flops

CHILD = "--torch-child"


def torch_child(args) -> None:
  """Reads 'step' lines from stdin; runs one reference step for each and
  writes its seconds to stdout."""
  model, x_s, y_s, x_t = torch_flops.build_reference(args)
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    t0 = time.perf_counter()
    losses = model.train_step(x_s, y_s, x_t)
    seconds = time.perf_counter() - t0
    finite = all(float(v) == float(v) for v in losses.values())
    print(json.dumps(dict(seconds=seconds, finite=finite)), flush=True)


def _parse(argv):
  """``(step_time args, rounds, block)``; ``--rounds R --block B`` taken
  out of ``argv`` first."""
  extra = dict(rounds=6, block=3)
  for name in list(extra):
    flag = f"--{name}"
    if flag in argv:
      i = argv.index(flag)
      extra[name] = int(argv[i + 1])
      argv = argv[:i] + argv[i + 2:]
  if extra["block"] < 2:
    raise SystemExit("--block must be at least 2 (its first step is not "
                     "timed).")
  args = step_time.parse_args(argv + ["--vs-torch"])
  args.image_size = args.source_size[0]
  args.batch_total = args.batch * args.devices
  return args, extra["rounds"], extra["block"]


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == CHILD:
    args, _, _ = _parse(argv[1:])
    args.batch = args.batch_total
    torch_child(args)
    return
  args, rounds, block = _parse(argv)
  import jax
  args.steps, args.warmup = 1, 0  # run_jax compiles and runs one step
  result, (compiled, state, batch) = step_time.run_jax(args,
                                                       return_compiled=True)
  child = subprocess.Popen([sys.executable, os.path.abspath(__file__), CHILD]
                           + argv, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
  try:
    if child.stdout.readline().strip() != "ready":
      raise RuntimeError("the PyTorch child did not start; run "
                         f"{step_time.TORCH_REFERENCE} alone to see why.")

    def torch_step():
      child.stdin.write("step\n")
      child.stdin.flush()
      out = json.loads(child.stdout.readline())
      assert out["finite"], "PyTorch reference: non-finite losses"
      return out["seconds"]

    def jax_step():
      nonlocal state
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      return time.perf_counter() - t0

    times, ratios = dict(jax=[], torch=[]), []
    for _ in range(rounds):
      medians = {}
      for name, step in (("jax", jax_step), ("torch", torch_step)):
        timed = [step() for _ in range(block)][1:]
        times[name] += timed
        medians[name] = statistics.median(timed)
      ratios.append(medians["jax"] / medians["torch"])
  finally:
    child.stdin.close()
    child.wait(timeout=60)
  out = {k: result[k] for k in ("jax_version", "device", "source_size",
                                "batch", "ngf", "gen_blocks", "task_net",
                                "num_classes", "subpixel", "conv",
                                "batch_passes", "params_total",
                                "compile_s")}
  out.update(
      rounds=rounds, block=block,
      jax_step_seconds=times["jax"], torch_step_seconds=times["torch"],
      jax_median_step_s=statistics.median(times["jax"]),
      torch_median_step_s=statistics.median(times["torch"]),
      round_ratios=ratios, median_round_ratio=statistics.median(ratios),
      rounds_jax_faster=sum(r < 1 for r in ratios),
      loadavg=os.getloadavg())
  print(json.dumps(out))


if __name__ == "__main__":
  main()
