"""Environments for the launch.py processes tests start."""
import os
import re


def env_with_devices(n: int) -> dict:
  """``os.environ`` with ``n`` fake CPU devices; the other XLA flags (the cheap
  LLVM options of conftest.py) stay, so the processes compile as fast as
  the test process and share its compilation-cache entries."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}"
  return env
