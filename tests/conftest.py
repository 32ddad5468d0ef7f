"""Test setup: several fake CPU devices so pmap runs over more than one."""
import os

# Must be set before JAX is imported anywhere in the test session.
# The other options only make XLA:CPU's code generation cheaper, which is
# most of this suite's time on a cold compilation cache, as in CI: the LLVM
# options took the tiny train step's compile from 31 s to 24.5 s (same HLO);
# the legacy fusion emitters and one LLVM module instead of parallel split
# ones cut the CPU time of the compile by about a third again (session 24,
# paired runs of the step's compile: 23.8 / 20.5 s -> 15.0 / 11.1 s).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4"
                           + " --xla_backend_optimization_level=0"
                           + " --xla_llvm_disable_expensive_passes=true"
                           + " --xla_cpu_use_fusion_emitters=false"
                           + " --xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Threefry's partitionable variant takes XLA:CPU 2-3 s to compile per random
# shape; the classic one compiles in well under a second. pmap code does not
# need partitionable keys (see crdoco_jax/train.py, which does the same).
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
# One persistent compilation cache per test session: tests that compile the
# same step in several processes (resume, launch.py) compile it once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(__file__), "..",
                                   ".pytest_cache", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A tfds data dir holding the demo pair with small splits."""
  from crdoco_jax.data import demo_seg
  from tests.demo_data import build_small_demo
  return build_small_demo(demo_seg, str(tmp_path_factory.mktemp("tfds")),
                          train=16, val=8)


@pytest.fixture
def tiny_config(tfds_dir):
  from configs import seg
  config = seg.get_config("tiny")
  config.data.tfds_data_dir = tfds_dir
  return config


# Modules whose tests run for a minute or more (training subprocesses,
# several step compiles) go first: with pytest-xdist's load scheduling the
# tests handed out last decide how long one worker waits for the other.
_LONG_FIRST = ("test_experiments.py", "test_reliability.py",
               "test_multiprocess.py", "test_train.py", "test_depth_flow.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
