#!/usr/bin/env bash
# MedQA (100 dev questions of ../shared) under both multiple-choice protocols, for SmolLM2-135M
# and Gemma 3 270M, one model after the other on one core: the figures of results/mcq.md.
# Usage: bash benchmarks/mcq_medqa.sh [OUT_DIR]   (default results/mcq)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/mcq}
data=mcq:${FEDDX_SHARED_DATA:-../shared/data}/medqa/medqa_usmle_4opt_dev100.jsonl
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out"
for model in smollm2-135m-instruct gemma3-270m; do
  .venv/bin/feddx evaluate --data "$data" --model "$model" \
    --protocol likelihood --protocol flowertune --seed 0 --resamples 10000 --json \
    --result "$out/$model.json" --predictions "$out/$model.answers.jsonl" > /dev/null
done
