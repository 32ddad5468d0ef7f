"""Transparent huge pages for the host's large buffers (glibc malloc).

XLA:CPU allocates every execution's temporary buffer with malloc (262 MB
for the small benchmark step) and frees it when the step ends. glibc
serves an allocation this large from worker threads with a fresh mmap,
so each step faults in and zeroes every 4 KiB page again: 64k page
faults and 0.13 s of system time per 0.52 s step
(docs/performance_log.md, session 33). glibc's ``glibc.malloc.hugetlb=1``
tunable makes malloc ask for transparent huge pages (2 MiB) on such
mappings: 209 faults per step. Tunables are read when a process starts,
so the entry points re-execute themselves with it before importing
anything heavy. Setting ``glibc.malloc.hugetlb`` yourself in
``GLIBC_TUNABLES`` (``=0`` to turn it off) leaves the process as it is.
"""
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"


def environment_with_huge_pages(environ, libc=None):
  """``environ`` with ``glibc.malloc.hugetlb=1`` added to
  ``GLIBC_TUNABLES``, or None where nothing is to change: not glibc, or
  the tunable already set (by the user or an earlier re-execution)."""
  libc = platform.libc_ver()[0] if libc is None else libc
  tunables = environ.get("GLIBC_TUNABLES", "")
  if libc != "glibc" or any(t.split("=")[0] == TUNABLE
                            for t in tunables.split(":")):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))
  return env


def reexec_with_huge_pages():
  """Re-executes this Python process (same interpreter, same command line,
  ``-m`` included) with the tunable set; returns where nothing is to
  change. Call it first thing in ``if __name__ == "__main__":``."""
  env = environment_with_huge_pages(os.environ)
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
