"""Test setup: several fake CPU devices so pmap runs over more than one."""
import os

# Must be set before JAX is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Threefry's partitionable variant takes XLA:CPU 2-3 s to compile per random
# shape; the classic one compiles in well under a second. pmap code does not
# need partitionable keys (see crdoco_jax/train.py, which does the same).
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
