r"""A/B step time of two step_time.py settings in one process, steps
alternated so both see the same machine load; prints one JSON line.

  python benchmarks/ab_step.py --preset demo --b-flags="--subpixel"
  python benchmarks/ab_step.py --task-net resnet18 --image-size 64 --batch 1 \
      --gen-blocks 6 --ngf 32 --b-flags="--subpixel" --vs-torch

``--a-layers=NAME=VALUE[,...]`` (and ``--b-layers``) set module constants of
``crdoco_jax.models.layers`` while that side is traced, e.g.

  python benchmarks/ab_step.py --subpixel --conv gemm --steps 12 \
      --a-layers=KERNEL_GRAD_ROWS=False

``--vs-torch`` then runs the PyTorch reference on the same work (right
after, in the same process tree) and reports both ratios.
"""
import ast
import json
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator  # pylint: disable=g-import-not-at-top,wrong-import-position


def _constants(text):
  """'A=1,B=False' -> {'A': 1, 'B': False}: constants of models.layers."""
  from crdoco_jax.models import layers  # pylint: disable=g-import-not-at-top
  out = {}
  for item in text.split(","):
    name, _, value = item.partition("=")
    if not hasattr(layers, name):
      raise SystemExit(f"--a-layers / --b-layers: crdoco_jax.models.layers "
                       f"has no {name!r}.")
    out[name] = ast.literal_eval(value)
  return out


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  b_flags, constants = [], {"a": {}, "b": {}}
  for a in list(argv):
    if a.startswith("--b-flags="):
      b_flags = shlex.split(a.split("=", 1)[1])
      argv.remove(a)
    for side in constants:
      if a.startswith(f"--{side}-layers="):
        constants[side] = _constants(a.split("=", 1)[1])
        argv.remove(a)
  import jax  # pylint: disable=g-import-not-at-top
  from crdoco_jax.models import layers  # pylint: disable=g-import-not-at-top
  runs = {}
  for name, extra in (("a", []), ("b", b_flags)):
    args = step_time.parse_args(argv + extra + ["--steps", "1", "--warmup",
                                                "0"])
    saved = {k: getattr(layers, k) for k in constants[name]}
    for k, v in constants[name].items():
      setattr(layers, k, v)
    try:
      result, (compiled, state, batch) = step_time.run_jax(
          args, return_compiled=True)
    finally:
      for k, v in saved.items():
        setattr(layers, k, v)
    runs[name] = dict(flags=" ".join(
        extra + [f"layers.{k}={v!r}" for k, v in constants[name].items()]),
                      compiled=compiled, state=state,
                      batch=batch, times=[], compile_s=result["compile_s"])
  steps = step_time.parse_args(argv).steps
  for _ in range(steps):
    for r in runs.values():
      t0 = time.perf_counter()
      r["state"], metrics = r["compiled"](r["state"], r["batch"])
      jax.block_until_ready(metrics)
      r["times"].append(time.perf_counter() - t0)
  out = {k: dict(flags=r["flags"], compile_s=r["compile_s"],
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
