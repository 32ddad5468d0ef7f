r"""Splices two checkpoints: the translators (and image discriminators) of
one, everything else (task nets, output-space discriminators, step, RNG key)
of the other. A diagnostic for where a seed's score comes from: the
CycleGAN pretraining, or the task nets' initialisation and batches.

  python benchmarks/swap_translators.py \
      --translators=W/_pretraining/crdoco/seed_0/checkpoints/4000 \
      --rest=W/_pretraining/crdoco/seed_1/checkpoints/4000 \
      --out=RUN/checkpoints/4000
  python launch.py --config=configs/seg.py:demo,crdoco --workdir=RUN \
      --config.seed=1

(the run then adapts from the spliced step-4000 state with seed 1's
batches). Both checkpoints must come from the same config but for the seed.
"""
import argparse
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

TRANSLATOR_GROUPS = ("translator", "d_img")


def splice(translators: dict, rest: dict) -> dict:
  """``rest`` with its translator groups taken from ``translators``."""
  for group in TRANSLATOR_GROUPS:
    a, b = translators[group], rest[group]
    if (jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b)
        or [np.shape(x) for x in jax.tree_util.tree_leaves(a)]
        != [np.shape(x) for x in jax.tree_util.tree_leaves(b)]):
      raise ValueError(f"The two checkpoints' {group!r} differ in structure "
                       "or shapes: they come from different configs.")
  return {**rest, **{g: translators[g] for g in TRANSLATOR_GROUPS}}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--translators", required=True,
                 help="checkpoint step folder whose translators to take")
  p.add_argument("--rest", required=True,
                 help="checkpoint step folder for everything else")
  p.add_argument("--out", required=True, help="new step folder (absent)")
  args = p.parse_args()
  if os.path.exists(args.out):
    raise SystemExit(f"--out {args.out} exists; give a new folder.")
  ckpt = ocp.StandardCheckpointer()
  read = lambda path: ckpt.restore(os.path.join(os.path.abspath(path),
                                                "default"))
  state = splice(read(args.translators), read(args.rest))
  out = os.path.abspath(args.out)
  # A CheckpointManager step folder: <out>/default holds the state.
  manager = ocp.CheckpointManager(os.path.dirname(out))
  manager.save(int(os.path.basename(out)), args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  print(f"wrote {out}: translators from {args.translators}, the rest from "
        f"{args.rest}")


if __name__ == "__main__":
  main()
