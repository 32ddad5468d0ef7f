r"""How much of the CPU step the `gemm` path's copies cost: an upper bound.

  python benchmarks/copy_bound.py --subpixel --conv gemm --steps 5 --warmup 1
  python benchmarks/copy_bound.py --no-stand-in --subpixel --conv gemm ...

The profile of the CPU step (profile_step.py) books about half of its op
time to elementwise fusions, most of them the `gemm` backward pass's copies:
the kernel gradient's shifted input windows (one per tap) and the pads and
adds of the input gradient (im2col's transpose). Op times summed over
threads overlap, so they do not say what the copies cost the step's wall
time. This runs step_time.py's step with every shifted window of the
backward pass (``layers._shifted``) replaced by the unshifted input where
the two have the same shape: the copies and their transposes' pads vanish,
every matmul keeps its shapes, and the gradients are WRONG. So the step time
here bounds what any faster form of those copies could gain. Prints
step_time.py's JSON line plus ``"stand_in"``. Benchmark only.
"""
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step_time  # pylint: disable=g-import-not-at-top,wrong-import-position
from crdoco_jax import host_allocator  # pylint: disable=g-import-not-at-top,wrong-import-position


@contextlib.contextmanager
def stand_in():
  """Within it, the `gemm` backward pass traces with free windows (see
  above); the original backward pass is restored on exit."""
  from crdoco_jax.models import layers  # pylint: disable=g-import-not-at-top
  shifted, bwd = layers._shifted, layers._conv_gemm_bwd  # pylint: disable=protected-access

  def free_window(a, offset, strides, out_hw):
    if strides == (1, 1) and a.shape[1:3] == tuple(out_hw):
      return a
    return shifted(a, offset, strides, out_hw)

  def bwd_with_free_windows(*args):
    layers._shifted = free_window  # pylint: disable=protected-access
    try:
      return bwd(*args)
    finally:
      layers._shifted = shifted  # pylint: disable=protected-access

  layers._conv_gemm.defvjp(layers._conv_gemm_fwd, bwd_with_free_windows)  # pylint: disable=protected-access
  try:
    yield
  finally:
    layers._conv_gemm.defvjp(layers._conv_gemm_fwd, bwd)  # pylint: disable=protected-access


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  use_stand_in = "--no-stand-in" not in argv
  if not use_stand_in:
    argv.remove("--no-stand-in")
  args = step_time.parse_args(argv)
  with stand_in() if use_stand_in else contextlib.nullcontext():
    result = step_time.run_jax(args)
  result["stand_in"] = use_stand_in
  print(json.dumps(result))


if __name__ == "__main__":
  host_allocator.reexec_with_huge_pages()
  main()
