r"""FLOPs of one CrDoCo training iteration, counted by PyTorch.

  python benchmarks/torch_flops.py                   # reference defaults
  python benchmarks/torch_flops.py --task-net resnet18 --image-size 64 \
      --batch 1 --gen-blocks 6 --ngf 32

Runs one iteration of ../shared/bench/torch_crdoco_step.py (the same
networks, losses and updates that ``step_time.py --vs-torch`` times) on the
CPU under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matmuls and convolutions of the forward and backward passes (2 FLOPs per
multiply-add; elementwise work, normalisation and optimizer updates are not
counted). Prints one JSON line: the total and the FLOPs of each operator.
Dividing the total by a measured step time gives the achieved FLOP/s that
XLA's GPU cost analysis cannot report (it leaves out library convolutions).
"""
import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import TORCH_REFERENCE  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_reference(path: str = TORCH_REFERENCE):
  """The reference script as a module (it needs only torch)."""
  spec = importlib.util.spec_from_file_location("torch_crdoco_step", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def build_reference(args):
  """``(model, x_s, y_s, x_t)``: the reference's networks and random batch
  (images in [-1, 1], about 10% of labels ignored), as its own main makes
  them, for ``args``' image size, batch, ngf, blocks, task net, classes."""
  import torch  # pylint: disable=g-import-not-at-top
  ref = load_reference()
  torch.manual_seed(0)
  model = ref.CrDoCo(args.ngf, args.gen_blocks, args.task_net,
                     args.num_classes)
  n, s, c = args.batch, args.image_size, args.num_classes
  x_s = torch.rand(n, 3, s, s) * 2 - 1
  x_t = torch.rand(n, 3, s, s) * 2 - 1
  y_s = torch.randint(0, c, (n, s, s))
  y_s[torch.rand(n, s, s) < 0.1] = 255
  return model, x_s, y_s, x_t


def count_step_flops(args) -> dict:
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  model, x_s, y_s, x_t = build_reference(args)
  n, s, c = args.batch, args.image_size, args.num_classes
  counter = FlopCounterMode(display=False)
  with counter:
    model.train_step(x_s, y_s, x_t)
  by_op = {str(op): int(v) for op, v in
           counter.get_flop_counts().get("Global", {}).items()}
  return dict(impl="torch", image_size=s, batch=n, ngf=args.ngf,
              gen_blocks=args.gen_blocks, task_net=args.task_net,
              num_classes=c, flops_per_step=int(counter.get_total_flops()),
              flops_by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--image-size", type=int, default=128)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--ngf", type=int, default=64)
  p.add_argument("--gen-blocks", type=int, default=9)
  p.add_argument("--task-net", default="resnet50")
  p.add_argument("--num-classes", type=int, default=19)
  print(json.dumps(count_step_flops(p.parse_args(argv))))


if __name__ == "__main__":
  main()
