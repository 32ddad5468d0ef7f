#!/bin/bash
# Seeds 0/1 of the demo's default CrDoCo (and no_consistency) adaptation,
# each from a checkpoint with the other seed's translators.
# Usage (from the repository root): run.sh TABLE_WORKDIR OUT
# (TABLE_WORKDIR: a demo table's workdir with seeds 0 and 1 pretrained.)
TABLE=${1:?table workdir}
P=$TABLE/_pretraining/crdoco
OUT=${2:?output folder}
for m in crdoco no_consistency; do
pairs=("0 1" "1 0"); [ $m = crdoco ] && pairs=("0 0" "0 1" "1 0")
for pair in "${pairs[@]}"; do
  set -- $pair; tr=$1; rest=$2
  W=$OUT/$m/translators${tr}_rest${rest}
  rm -rf $W; mkdir -p $W
  python benchmarks/swap_translators.py --translators=$P/seed_$tr/checkpoints/4000 --rest=$P/seed_$rest/checkpoints/4000 --out=$W/checkpoints/4000 > $W/splice.txt 2>&1
  s=$(date +%s)
  JAX_COMPILATION_CACHE_DIR=$TABLE/_jax_cache python launch.py --config=configs/seg.py:demo,$m --workdir=$W --config.seed=$rest > $W/log.txt 2>&1
  echo "$m translators=$tr rest/batches=$rest $(grep -o '\[5000\] eval/target_miou=[0-9.]*' $W/log.txt) $(( $(date +%s) - s ))s"
done; done
