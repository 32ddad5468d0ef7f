"""One residual-block conv of the small setting's translator (3x3, 128 -> 128
on 16x16 maps), forward only, in JAX (XLA:CPU) and PyTorch, on the cores this
process may use. docs/performance_log.md (session 12) compares one core with two:

  taskset -c 0 python benchmarks/small_conv_threads.py
  python benchmarks/small_conv_threads.py

Prints one JSON line per framework and batch: median ms over 300 calls
(``--calls N``); PyTorch's lines only where torch is installed.
"""
import argparse
import json
import os

import jax
import jax.numpy as jnp

from components import median_ms  # beside this script (sys.path[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--calls", type=int, default=300)
  calls = parser.parse_args().calls
  cores = len(os.sched_getaffinity(0))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  w = jnp.full((3, 3, 128, 128), 0.01, jnp.float32)
  for batch in (1, 2):
    x = jnp.ones((batch, 16, 16, 128), jnp.float32)
    ms = median_ms(lambda x=x: conv(x, w).block_until_ready(), calls, 20)
    print(json.dumps(dict(framework="jax", cores=cores, batch=batch, ms=ms)))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  torch.set_num_threads(cores)
  layer = torch.nn.Conv2d(128, 128, 3, padding=1)
  for batch in (1, 2):
    x = torch.ones(batch, 128, 16, 16)
    with torch.no_grad():
      ms = median_ms(lambda x=x: layer(x), calls, 20)
    print(json.dumps(dict(framework="torch", cores=cores, batch=batch,
                          ms=ms)))


if __name__ == "__main__":
  main()
