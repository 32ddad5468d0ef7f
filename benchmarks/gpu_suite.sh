#!/usr/bin/env bash
# The GPU step-time suite behind the README's H200 tables: float32 and
# bfloat16 steps at the PyTorch reference's sizes and at the paper's
# (GTA5 -> Cityscapes) sizes, the paper-size step with the memory options,
# and the PyTorch reference on the same GPU. All jobs compile at once (XLA's
# GPU compile is CPU-bound and long); --time-lock makes them time their
# steps one at a time, so no two timed loops share the GPU.
#
#   benchmarks/gpu_suite.sh OUTDIR [per-job timeout in s, default 420]
#
# Writes OUTDIR/results.jsonl (step_time.py's JSON line per job, plus "job"
# and "xla_flags") and OUTDIR/log.txt (each job's exit status and stderr
# tail). Env: CRDOCO_TORCH_REFERENCE (path of torch_crdoco_step.py),
# TORCH_DEVICE (default cuda), EXTRA (flags appended to every job: a dry run
# on the CPU with tiny sizes), ONLY (job names to run, space-separated).
set -u
out=${1:?usage: gpu_suite.sh OUTDIR [timeout_s]}
limit=${2:-420}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/jobs"
# Several processes share the GPU: each allocates what it uses, so the
# device's live-memory peak is the job's own.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
lock="$out/jobs/time.lock"
torch="--vs-torch --torch-device ${TORCH_DEVICE:-cuda}"
small="--task-net resnet18 --image-size 64 --batch 1 --gen-blocks 6 --ngf 32"
no_triton="--xla_gpu_enable_triton_gemm=false"
jobs=(
  "default_f32||$torch --steps 20 --warmup 3"
  "default_bf16||--dtype bfloat16 --steps 20 --warmup 3"
  "default_bf16_cublas|$no_triton|--dtype bfloat16 --steps 20 --warmup 3"
  "small_bf16||$small --dtype bfloat16 $torch --steps 20 --warmup 3"
  "paper_f32||--preset paper --steps 10 --warmup 2"
  "paper_bf16|$no_triton|--preset paper --dtype bfloat16 --steps 10 --warmup 2"
  "paper_f32_shared_remat||--preset paper --share-encoder --share-last 2 --remat-networks --steps 10 --warmup 2"
)
if [ -n "${ONLY:-}" ]; then
  kept=()
  for j in "${jobs[@]}"; do
    [[ " $ONLY " == *" ${j%%|*} "* ]] && kept+=("$j")
  done
  jobs=("${kept[@]}")
fi
for j in "${jobs[@]}"; do
  IFS='|' read -r name xla flags <<<"$j"
  (
    XLA_FLAGS="$xla" timeout "$limit" python3 "$here/step_time.py" $flags \
      ${EXTRA:-} --time-lock "$lock" >"$out/jobs/$name.json" \
      2>"$out/jobs/$name.err"
    echo "$?" >"$out/jobs/$name.rc"
  ) &
done
wait
python3 - "$out" "${jobs[@]}" <<'EOF'
import json, os, sys
out, jobs = sys.argv[1], sys.argv[2:]
with open(os.path.join(out, "results.jsonl"), "w") as res, \
     open(os.path.join(out, "log.txt"), "w") as log:
  for j in jobs:
    name, xla, flags = j.split("|")
    path = lambda ext: os.path.join(out, "jobs", f"{name}.{ext}")
    rc = open(path("rc")).read().strip()
    err = open(path("err")).read().splitlines()
    log.write(f"== {name} rc={rc} flags={flags} XLA_FLAGS={xla}\n")
    log.write("\n".join(err[-15:]) + "\n")
    lines = open(path("json")).read().strip().splitlines()
    if rc == "0" and lines:
      r = json.loads(lines[-1])
      res.write(json.dumps(dict(job=name, xla_flags=xla, **r)) + "\n")
EOF
cat "$out/log.txt" | grep '^=='
