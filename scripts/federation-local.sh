#!/usr/bin/env bash
# Start a whole feddx federation on this machine (loopback only) and stop exactly what it started.
#
#   scripts/federation-local.sh [--run-dir DIR] [--rounds N] [--data SOURCE[:PATH]]
#                               [--max-cases N] [--isolation subprocess|process]
#                               [-- "key=value ..."]      # extra run-config overrides
#
# Steps: split the data into the server's validation set and one training shard per institution
# (UCI Heart: 4 hospitals), generate a CA, the SuperLink certificate and one key per
# institution, then `feddx deploy local`: a TLS SuperLink with SuperNode authentication on
# 127.0.0.1, one SuperNode process per institution (each given only its own data path), one
# `flwr run`. Everything lands in the run folder (logs/, pids, federation.json, out/).
#
# Cleanup: the Python runner stops every process it started (and their children) on success,
# error, Ctrl-C or SIGTERM. This script's EXIT trap is the safety net if the runner itself dies:
# it stops the runner, then every PID the runner recorded in <run-dir>/pids that is still a
# Flower process -- never anything by name.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir="runs/federation-local-$(date +%Y%m%d-%H%M%S)"
rounds=1
data="uci-heart"
max_cases=0
isolation="subprocess"
extra=""
while [ $# -gt 0 ]; do
  case "$1" in
    --run-dir) run_dir="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --max-cases) max_cases="$2"; shift 2 ;;
    --isolation) isolation="$2"; shift 2 ;;
    --) shift; extra="$*"; break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "federation-local.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ -x .venv/bin/feddx ]; then feddx=.venv/bin/feddx; else feddx=feddx; fi
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"
export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
  FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 TOKENIZERS_PARALLELISM=false

runner=""
stop_recorded() {
  # PIDs the runner recorded ("<pid> <name>" lines); each leads its own process group.
  local signal="$1" pid name
  [ -f "$run_dir/pids" ] || return 0
  while read -r pid name; do
    if kill -0 "$pid" 2>/dev/null && ps -o command= -p "$pid" | grep -qE 'flower-|flwr'; then
      echo "federation-local.sh: stopping leftover $name (pid $pid) with SIG$signal" >&2
      kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid" 2>/dev/null || true
    fi
  done < "$run_dir/pids"
}
recorded_alive() {
  local pid name
  [ -f "$run_dir/pids" ] || return 1
  while read -r pid name; do
    if kill -0 "$pid" 2>/dev/null && ps -o command= -p "$pid" | grep -qE 'flower-|flwr'; then
      return 0
    fi
  done < "$run_dir/pids"
  return 1
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
    # The runner stops its federation itself on SIGTERM; give it time to.
    kill -TERM "$runner" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$runner" 2>/dev/null || break; sleep 0.5; done
  fi
  # The runner's own process group (it and its short-lived `flwr` CLI calls), if still there.
  [ -n "$runner" ] && kill -KILL -- "-$runner" 2>/dev/null || true
  if recorded_alive; then
    stop_recorded TERM
    for _ in $(seq 1 20); do recorded_alive || break; sleep 0.5; done
    stop_recorded KILL
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$feddx" deploy prepare --data "$data" --out "$run_dir/data" --limit "$max_cases"
"$feddx" deploy certs --out "$run_dir/certs" --partition "$run_dir/data/shards"
n_nodes=$(find "$run_dir/data/shards" -name 'client_*.jsonl' | wc -l | tr -d ' ')

# In the background, in its own process group (job control on), so the traps above can act
# while it runs and can reach its children.
set -m
"$feddx" deploy local \
  --certs "$run_dir/certs" \
  --partition "$run_dir/data/shards" \
  --run-dir "$run_dir" \
  --isolation "$isolation" \
  --run-config "num-rounds=$rounds min-train-clients=$n_nodes min-available-clients=$n_nodes" \
  --run-config "data='$data' eval-data='jsonl:$run_dir/data/eval.jsonl' out-dir='$run_dir/out'" \
  ${extra:+--run-config "$extra"} &
runner=$!
wait "$runner"
