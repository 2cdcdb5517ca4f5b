#!/usr/bin/env bash
# Choose our top layers and learning rate for bench_train.py on VALIDATION only: each setting
# trains 3 epochs (the reference's budget) and is scored on the 49 validation cases after every
# epoch; no test case is scored (--validation-only). The choice is the best validation top-1
# after 3 epochs (ties: the earlier epoch to reach it). Output: one JSON line per setting.
# Usage: bash benchmarks/bench_train_grid.sh [OUT_DIR]   (about 4 minutes per setting, one core)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-train-grid}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
for top in 4 8; do
  for lr in 0.002 0.005; do
    .venv/bin/python benchmarks/bench_train.py --train 96 --test 98 --epochs 3 \
      --top-layers "$top" --lr "$lr" --threads 1 --method ours --target-top1 1.0 \
      --validation-only --result-file "$out/top$top-lr$lr.json" >/dev/null 2>&1
    .venv/bin/python -c "import json,sys; d=json.load(open(sys.argv[1])); \
print(json.dumps({'top_layers': $top, 'lr': $lr, **{k: round(v, 4) for k, v in d.items() \
if k.endswith('validation_top1') or k.endswith('_seconds') and k.startswith('epoch')}}))" \
      "$out/top$top-lr$lr.json"
  done
done
