"""crdoco_jax.host_allocator: the glibc huge-page tunable and re-execution."""
import json
import os
import platform
import subprocess
import sys

import pytest

from crdoco_jax import host_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="glibc tunables need glibc")


def test_environment_adds_the_tunable_and_keeps_the_others():
  env = host_allocator.environment_with_huge_pages({"A": "1"}, libc="glibc")
  assert env == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  env = host_allocator.environment_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, libc="glibc")
  assert env["GLIBC_TUNABLES"] == ("glibc.malloc.arena_max=2:"
                                   "glibc.malloc.hugetlb=1")


@pytest.mark.parametrize("environ,libc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "glibc"),  # user's choice
    ({"GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=1"}, "glibc"),  # done
    ({}, ""),  # not glibc (musl, macOS)
])
def test_environment_left_alone(environ, libc):
  assert host_allocator.environment_with_huge_pages(environ, libc) is None


_SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
from crdoco_jax import host_allocator
print("started", flush=True)
host_allocator.reexec_with_huge_pages()
print(json.dumps(dict(argv=sys.argv,
                      tunables=os.environ.get("GLIBC_TUNABLES"))))
"""


@glibc_only
def test_reexec_keeps_the_command_line_and_runs_once(tmp_path):
  script = tmp_path / "entry.py"
  script.write_text(_SCRIPT.format(root=ROOT))
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run([sys.executable, str(script), "--flag=a b", "x"],
                       env=env, capture_output=True, text=True, check=True,
                       timeout=60).stdout.splitlines()
  # Once before the re-execution, once after, then no third start.
  assert out[:2] == ["started", "started"] and len(out) == 3, out
  result = json.loads(out[2])
  assert result["argv"] == [str(script), "--flag=a b", "x"]
  assert result["tunables"] == "glibc.malloc.hugetlb=1"


# Plain malloc, as XLA:CPU's buffers (numpy advises huge pages itself).
_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
  p = libc.malloc(64 << 20)  # above malloc's mmap threshold: a new mmap
  ctypes.memset(p, 1, 64 << 20)
  libc.free(p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _thp_mode():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return f.read().split("[")[1].split("]")[0]
  except (OSError, IndexError):
    return None


@glibc_only
@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"),
                    reason="transparent huge pages are off on this host")
def test_tunable_cuts_the_page_faults_of_large_allocations():
  def faults(tunables):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["GLIBC_TUNABLES"] = tunables
    return int(subprocess.run([sys.executable, "-c", _FAULTS], env=env,
                              capture_output=True, text=True, check=True,
                              timeout=60).stdout)
  small_pages = faults("glibc.malloc.hugetlb=0")
  huge_pages = faults("glibc.malloc.hugetlb=1")
  # 8 x 64 MiB in 4 KiB pages is 131k faults; in 2 MiB pages about 4k
  # (each mapping's unaligned ends stay in 4 KiB pages).
  assert small_pages > 8 * (64 << 20) // 4096 // 2, small_pages
  assert huge_pages < small_pages // 10, (huge_pages, small_pages)
