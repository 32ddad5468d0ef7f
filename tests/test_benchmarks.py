"""benchmarks/step_time.py on a tiny architecture: runs, prints valid JSON."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "32", "--batch", "1", "--ngf", "4", "--gen-blocks",
        "1", "--task-net", "resnet18", "--width", "8", "--disc-ndf", "4",
        "--num-classes", "3"]


def _run(*flags):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "step_time.py"),
       *TINY, *flags], capture_output=True, text=True, check=True,
      timeout=900, cwd=ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_step_time_runs_and_prints_json():
  r = _run("--steps", "1", "--warmup", "0")
  assert r["median_step_s"] > 0 and len(r["step_seconds"]) == 1
  assert r["peak_bytes_compiled"] > 0 and r["params_total"] > 0
  assert r["source_size"] == r["target_size"] == [32, 32]


def test_step_time_compile_only_with_memory_options():
  r = _run("--compile-only", "--share-encoder", "--share-last", "2",
           "--remat", "--source-size", "32x48")
  assert "median_step_s" not in r
  assert r["source_size"] == [32, 48] and r["share_last"] == 2
  assert r["memory_analysis"]["temp_bytes"] > 0
