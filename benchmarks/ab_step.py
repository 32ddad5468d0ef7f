r"""A/B step time of two step_time.py settings in one process, steps
alternated so both see the same machine load; prints one JSON line.

  python benchmarks/ab_step.py --preset demo --b-flags="--subpixel"
  python benchmarks/ab_step.py --task-net resnet18 --image-size 64 --batch 1 \
      --gen-blocks 6 --ngf 32 --b-flags="--subpixel" --vs-torch

``--vs-torch`` then runs the PyTorch reference on the same work (right
after, in the same process tree) and reports both ratios.
"""
import json
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  b_flags = []
  for a in list(argv):
    if a.startswith("--b-flags="):
      b_flags = shlex.split(a.split("=", 1)[1])
      argv.remove(a)
  import jax  # pylint: disable=g-import-not-at-top
  runs = {}
  for name, extra in (("a", []), ("b", b_flags)):
    args = step_time.parse_args(argv + extra + ["--steps", "1", "--warmup",
                                                "0"])
    result, (compiled, state, batch) = step_time.run_jax(
        args, return_compiled=True)
    runs[name] = dict(flags=extra, compiled=compiled, state=state,
                      batch=batch, times=[], compile_s=result["compile_s"])
  steps = step_time.parse_args(argv).steps
  for _ in range(steps):
    for r in runs.values():
      t0 = time.perf_counter()
      r["state"], metrics = r["compiled"](r["state"], r["batch"])
      jax.block_until_ready(metrics)
      r["times"].append(time.perf_counter() - t0)
  out = {k: dict(flags=" ".join(r["flags"]), compile_s=r["compile_s"],
                 step_seconds=r["times"],
                 median_step_s=statistics.median(r["times"]))
         for k, r in runs.items()}
  out["base_flags"] = " ".join(argv)
  out["b_over_a"] = out["b"]["median_step_s"] / out["a"]["median_step_s"]
  args = step_time.parse_args(argv)
  if args.vs_torch:
    ref = step_time.run_torch(args)
    out["torch"] = {k: ref[k] for k in ("median_step_s", "step_seconds",
                                        "params_total", "torch_version",
                                        "threads") if k in ref}
    for k in ("a", "b"):
      out[f"{k}_over_torch"] = (out[k]["median_step_s"]
                                / ref["median_step_s"])
  out["loadavg"] = os.getloadavg()
  print(json.dumps(out))


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
