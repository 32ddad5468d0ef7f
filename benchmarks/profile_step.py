r"""Where the pmapped CrDoCo train step spends its time: per-op profile.

  python benchmarks/profile_step.py --preset demo --steps 3
  python benchmarks/profile_step.py --task-net resnet18 --image-size 64 \
      --batch 1 --gen-blocks 6 --ngf 32

Takes step_time.py's flags, compiles the step, runs ``--warmup`` steps, then
traces ``--steps`` steps with ``jax.profiler`` and reads the XPlane file
back (TensorFlow's copy of the XPlane proto). Every XLA op (thunk) event is
matched to its HLO instruction and sorted into a category: convolution
forward, input gradient and weight gradient (by the instruction's metadata
and output layout), dot, reduction, other fusions, copies/transposes,
collectives, control flow. Prints per-category and top-op tables (ms per
step) and, with ``--json``, one JSON line; ``--ops-json F`` writes every op's
ms per step to F. ``--by-source`` also sums the ops that are neither
convolutions nor matmuls by where they come from in the model (their
HLO ``op_name``, with layer indices folded: every residual block's
kernel-gradient windows are one line).
"""
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator  # pylint: disable=g-import-not-at-top,wrong-import-position


def classify(hlo_text):
  """``{instruction name: category}`` for the scheduled instructions of the
  entry computation and any computation they call (fusions included)."""
  comps, current = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      current = comps.setdefault(m.group(1), [])
      continue
    if current is not None and "=" in line:
      current.append(line)
  def conv_kind(line):
    name = re.search(r'op_name="([^"]*)"', line)
    name = name.group(1) if name else ""
    if "transpose(" not in name:
      return "conv fwd"
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", line)
    # A kernel gradient's output is a kernel: no batch dimension first.
    if labels and not labels.group(1).startswith("b"):
      return "conv weight grad"
    return "conv input grad"
  def category(lines):
    ops = " ".join(lines)
    if " convolution(" in ops:
      for line in lines:
        if " convolution(" in line:
          return conv_kind(line)
    if re.search(r" (dot|custom-call)\(", ops):
      return "dot/custom-call"
    if re.search(r" (all-reduce|all-gather|reduce-scatter)\(", ops):
      return "collective"
    if re.search(r" (reduce|reduce-window)\(", ops):
      return "reduction"
    if re.search(r" (conditional|while|call)\(", ops):
      return "control flow"
    if re.search(r" (copy|transpose)\(", ops) and not re.search(
        r" (add|multiply|subtract|divide|maximum|select)\(", ops):
      return "copy/transpose"
    return "elementwise fusion"
  result = {}
  for lines in comps.values():
    for line in lines:
      m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([a-z\-]+)\(", line)
      if not m:
        continue
      inst, op = m.groups()
      called = re.search(r"calls=%?([\w.\-]+)", line)
      if called and called.group(1) in comps:
        result[inst] = category(comps[called.group(1)])
      else:
        result[inst] = category([line])
  return result


def source_groups(hlo_text, per_op, kinds):
  """``Counter``: ms of the ops in ``per_op`` that are neither convolutions
  nor matmuls, summed by their instruction's ``op_name`` metadata with
  ``jit(...)/`` scopes dropped and module indices folded (``Conv_3`` ->
  ``Conv_i``); ops without one count under ``(no op_name)``."""
  names = {}
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    src = re.search(r'op_name="([^"]*)"', line)
    if m and src:
      key = re.sub(r"jit\([^)]*\)/", "", src.group(1))
      names[m.group(1)] = re.sub(r"_\d+(?=/|$)", "_i", key)
  groups = collections.Counter()
  for name, ms in per_op.items():
    if not kinds[name].startswith(("conv", "dot")):
      groups[names.get(name, "(no op_name)")] += ms
  return groups


def read_events(trace_dir):
  """(name, duration in ns) of every event on the host's XLA threads."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                          recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  events = []
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      for ev in line.events:
        events.append((plane.name, line.name, names.get(ev.metadata_id, ""),
                       ev.duration_ps / 1e3))
  return events


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  as_json = "--json" in argv
  if as_json:
    argv.remove("--json")
  by_source = "--by-source" in argv
  if by_source:
    argv.remove("--by-source")
  ops_json = None
  if "--ops-json" in argv:  # every op's ms per step, for ad-hoc grouping
    i = argv.index("--ops-json")
    ops_json = argv[i + 1]
    del argv[i:i + 2]
  args = step_time.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top

  args.compile_only = False
  result, (compiled, state, batch) = step_time.run_jax(args,
                                                       return_compiled=True)
  kinds = classify(compiled.as_text())
  trace_dir = tempfile.mkdtemp(prefix="crdoco_profile_")
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
  wall = (time.perf_counter() - t0) / args.steps
  per_op = collections.Counter()
  for _, _, name, ns in read_events(trace_dir):
    if name in kinds:
      per_op[name] += ns / 1e6 / args.steps
  per_cat = collections.Counter()
  for name, ms in per_op.items():
    per_cat[kinds[name]] += ms
  total = sum(per_cat.values())
  print(f"traced wall time per step {wall * 1e3:.1f} ms; XLA ops "
        f"{total:.1f} ms (ops overlap when run on several threads)",
        file=sys.stderr)
  for cat, ms in per_cat.most_common():
    print(f"  {cat:20s} {ms:9.1f} ms  {100 * ms / total:5.1f}%",
          file=sys.stderr)
  print("top ops:", file=sys.stderr)
  for name, ms in per_op.most_common(15):
    print(f"  {name:40s} {kinds[name]:20s} {ms:8.1f} ms", file=sys.stderr)
  if by_source:
    print("elementwise, reductions and copies by source:", file=sys.stderr)
    for key, ms in source_groups(compiled.as_text(), per_op,
                                 kinds).most_common(20):
      print(f"  {ms:8.1f} ms  {key}", file=sys.stderr)
  if ops_json:
    with open(ops_json, "w") as f:
      json.dump({n: (kinds[n], ms) for n, ms in per_op.most_common()}, f)
  if args.dump_hlo:  # names there match the ones here
    with open(args.dump_hlo, "w") as f:
      f.write(compiled.as_text())
    for cat, _ in per_cat.most_common(3):
      print(f"top {cat} ops:", file=sys.stderr)
      for name, ms in [(n, ms) for n, ms in per_op.most_common()
                       if kinds[n] == cat][:5]:
        print(f"  {name:40s} {ms:8.1f} ms", file=sys.stderr)
  if as_json:
    print(json.dumps(dict(
        config={k: result[k] for k in (
            "preset", "source_size", "target_size", "batch", "ngf",
            "gen_blocks", "task_net", "width", "dtype", "platform")},
        median_step_s=result["median_step_s"], traced_step_s=wall,
        op_ms_per_step=dict(per_cat.most_common()),
        top_ops=[(n, kinds[n], ms) for n, ms in per_op.most_common(15)])))


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
