#!/usr/bin/env bash
# Gemma 3 270M beside SmolLM2-135M on a dataset's development data (results/gemma-vs-smollm2.md).
#
#   bash benchmarks/gemma_vs_smollm2.sh s2d|ddxplus [OUT_DIR]        (default OUT_DIR: runs/gvs)
#
# The test split is never used: benchmarks/dev_split.py writes the training split of the usual
# split (--seed 0 --test-fraction 0.2, the one `feddx train` uses) as JSONL; each model trains on
# that file's own training split and is scored on its held-out 20%, the validation split. Each
# model trains with its config (below) from an empty activation cache, under /usr/bin/time -v
# (wall time and peak RSS of the whole command: model load, caching, training, saving); scoring
# is `feddx evaluate` (constrained scoring against the dataset's candidates) on the validation
# split. Every step runs under $RUN_PREFIX (e.g. "taskset -c 1"); $TRAIN_ARGS are added to both
# `feddx train` commands (e.g. "--epochs 2" where the configs' 8 epochs do not fit the time at
# hand: every epoch after the first costs the same, so the script also prints the configs' full
# training time as model load + activation caching + the loop's time per epoch x their epochs).
# The last step prints one markdown row per model.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:?usage: gemma_vs_smollm2.sh s2d|ddxplus [OUT_DIR]}
out=${2:-runs/gvs}
prefix=${RUN_PREFIX:-}
read -r -a train_args <<<"${TRAIN_ARGS:-}"
extra=()
case "$which" in
s2d)
    data=csv:../shared/data/symptom2disease/symptom2disease_sample.csv
    smollm2_config=configs/train-symptom2disease.yaml
    gemma_config=configs/train-symptom2disease-gemma3.yaml
    ;;
ddxplus)
    data=ddxplus:../shared/data/ddxplus
    smollm2_config=configs/train-ddxplus.yaml
    gemma_config=configs/train-ddxplus.yaml # top 4 layers: within Gemma's 18 as SmolLM2's 30
    extra=(--extra-data ddxplus-v0:../shared/data/ddxplus_v0/patients_49_pathologies.csv
        --drop-overlapping-extra)
    ;;
*)
    echo "gemma_vs_smollm2.sh: unknown dataset '$which' (s2d or ddxplus)" >&2
    exit 2
    ;;
esac
export HF_HUB_OFFLINE=1
mkdir -p "$out"
dev="$out/$which-dev.jsonl"
.venv/bin/python benchmarks/dev_split.py "$data" "$dev"

for model in smollm2-135m-instruct gemma3-270m; do
    config=$smollm2_config
    [[ $model == gemma3-270m ]] && config=$gemma_config
    run="$out/$which-$model"
    rm -rf "$run" "$run-acts"
    echo "# $(date -u +%FT%TZ) train $model ($config)"
    $prefix /usr/bin/time -v -o "$run.train.time" .venv/bin/feddx train --model "$model" \
        --data "jsonl:$dev" "${extra[@]}" --config "$config" --out "$run" \
        --feature-cache "$run-acts" "${train_args[@]}" >"$run.train.log" 2>&1
    echo "# $(date -u +%FT%TZ) evaluate $model on the validation split"
    $prefix /usr/bin/time -v -o "$run.eval.time" .venv/bin/feddx evaluate --model "$model" \
        --data "jsonl:$dev" --adapter "$run" --no-baseline --json \
        --result "$run.val.json" >/dev/null 2>"$run.eval.log"
done
echo "# $(date -u +%FT%TZ) done"

.venv/bin/python - "$out" "$which" "$smollm2_config" "$gemma_config" <<'EOF'
import json, re, sys
from pathlib import Path

import yaml

out, which = Path(sys.argv[1]), sys.argv[2]
configs = dict(zip(("smollm2-135m-instruct", "gemma3-270m"), sys.argv[3:5]))


def peak_gib(path: Path) -> float:
    kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    return int(kb.group(1)) / 1024**2 if kb else float("nan")


def wall_min(path: Path) -> float:
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", path.read_text())
    parts = [float(p) for p in m.group(1).split(":")] if m else [float("nan")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return seconds / 60


print("| dataset | model | epochs run | validation n | top-1 | macro-F1 | training min (wall) "
      "| caching s | loop s per epoch | config's epochs: min (wall, projected) "
      "| scoring ms/case (p50) | peak RSS training GiB | peak RSS scoring GiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for model in ("smollm2-135m-instruct", "gemma3-270m"):
    run = out / f"{which}-{model}"
    s = json.loads((run.parent / f"{run.name}.val.json").read_text())
    trained = json.loads((run / "train_result.json").read_text())
    epochs = trained["config"]["epochs"]
    full = yaml.safe_load(Path(configs[model]).read_text())["epochs"]
    stats = trained["result"]["stats"]
    wall = wall_min(Path(f"{run}.train.time"))
    per_epoch = stats["loop_seconds"] / epochs
    projected = wall + (full - epochs) * per_epoch / 60
    print(
        f"| {which} | {model} | {epochs} | {int(s['n'])} | {s['top1']:.3f} | {s['macro_f1']:.3f} "
        f"| {wall:.1f} | {stats['cache_seconds']:.0f} | {per_epoch:.0f} | {full}: {projected:.1f} "
        f"| {s['latency_ms_p50']:.0f} | {peak_gib(Path(f'{run}.train.time')):.2f} "
        f"| {peak_gib(Path(f'{run}.eval.time')):.2f} |"
    )
EOF
