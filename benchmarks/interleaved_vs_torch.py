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
/ PyTorch ratio of block medians and the median of those ratios, and
each library's CPU seconds per step and cores busy (step_time.py). Each
process is idle (a blocking read) while the other runs.

  python benchmarks/interleaved_vs_torch.py --subpixel --conv gemm \
      --rounds 6 --block 3
  python benchmarks/interleaved_vs_torch.py --task-net resnet18 \
      --image-size 64 --batch 1 --gen-blocks 6 --ngf 32 --subpixel \
      --conv gemm --rounds 10 --block 4

Takes step_time.py's flags (the architecture must be the reference's, as
for ``--vs-torch``; ``--steps`` and ``--warmup`` are not used). JAX runs
with glibc's huge-page tunable (crdoco_jax/host_allocator.py), PyTorch
as its users run it, without ``GLIBC_TUNABLES``; ``--torch-tunables T``
gives the child ``GLIBC_TUNABLES=T`` instead.
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position
import step_time
import torch_flops
from crdoco_jax import host_allocator

CHILD = "--torch-child"


def torch_child(args) -> None:
  """Reads 'step' lines from stdin; runs one reference step for each and
  writes its ``step_time.measured`` record to stdout."""
  model, x_s, y_s, x_t = torch_flops.build_reference(args)
  print("ready", flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    losses, record = step_time.measured(
        lambda: model.train_step(x_s, y_s, x_t))
    finite = all(float(v) == float(v) for v in losses.values())
    print(json.dumps(dict(record, finite=finite)), flush=True)


def _parse(argv):
  """``(step_time args, extra)``: ``--rounds R --block B
  --torch-tunables T`` taken out of ``argv`` first."""
  extra = dict(rounds=6, block=3, torch_tunables="")
  for name in list(extra):
    flag = "--" + name.replace("_", "-")
    if flag in argv:
      i = argv.index(flag)
      extra[name] = argv[i + 1]
      argv = argv[:i] + argv[i + 2:]
  extra["rounds"], extra["block"] = int(extra["rounds"]), int(extra["block"])
  if extra["block"] < 2:
    raise SystemExit("--block must be at least 2 (its first step is not "
                     "timed).")
  args = step_time.parse_args(argv + ["--vs-torch"])
  args.image_size = args.source_size[0]
  args.batch_total = args.batch * args.devices
  return args, extra


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == CHILD:
    args, _ = _parse(argv[1:])
    args.batch = args.batch_total
    torch_child(args)
    return
  args, extra = _parse(argv)
  rounds, block = extra["rounds"], extra["block"]
  torch_env = step_time.torch_environment(extra["torch_tunables"])
  import jax
  args.steps, args.warmup = 1, 0  # run_jax compiles and runs one step
  result, (compiled, state, batch) = step_time.run_jax(args,
                                                       return_compiled=True)
  child = subprocess.Popen([sys.executable, os.path.abspath(__file__), CHILD]
                           + argv, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=torch_env)
  try:
    if child.stdout.readline().strip() != "ready":
      raise RuntimeError("the PyTorch child did not start; run "
                         f"{step_time.TORCH_REFERENCE} alone to see why.")

    def torch_step():
      child.stdin.write("step\n")
      child.stdin.flush()
      out = json.loads(child.stdout.readline())
      assert out.pop("finite"), "PyTorch reference: non-finite losses"
      return out

    def jax_step():
      nonlocal state
      (state, _), record = step_time.measured(
          lambda: jax.block_until_ready(compiled(state, batch)))
      return record

    records, ratios = dict(jax=[], torch=[]), []
    for _ in range(rounds):
      medians = {}
      for name, step in (("jax", jax_step), ("torch", torch_step)):
        timed = [step() for _ in range(block)][1:]
        records[name] += timed
        medians[name] = statistics.median(r["wall"] for r in timed)
      ratios.append(medians["jax"] / medians["torch"])
  finally:
    child.stdin.close()
    child.wait(timeout=60)
  out = {k: result[k] for k in ("jax_version", "device", "glibc_tunables",
                                "source_size",
                                "batch", "ngf", "gen_blocks", "task_net",
                                "num_classes", "subpixel", "conv",
                                "batch_passes", "params_total",
                                "compile_s")}
  times = {k: [r["wall"] for r in v] for k, v in records.items()}
  out.update(
      rounds=rounds, block=block,
      jax_step_seconds=times["jax"], torch_step_seconds=times["torch"],
      jax_median_step_s=statistics.median(times["jax"]),
      torch_median_step_s=statistics.median(times["torch"]),
      round_ratios=ratios, median_round_ratio=statistics.median(ratios),
      rounds_jax_faster=sum(r < 1 for r in ratios),
      cpu={k: step_time.cpu_summary(v) for k, v in records.items()},
      torch_glibc_tunables=torch_env.get("GLIBC_TUNABLES"),
      loadavg=os.getloadavg())
  print(json.dumps(out))


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
