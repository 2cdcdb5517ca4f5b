#!/usr/bin/env bash
# One SuperNode per GPU on one multi-GPU host: node i sees only GPU i (CUDA_VISIBLE_DEVICES=i),
# so with the run config's device = "auto" its ClientApp trains on cuda:0 = that GPU.
#
#   deploy/gpu/supernodes-per-gpu.sh --superlink HOST:9093 --certs CERTS \
#       hospital-a=jsonl:/data/a.jsonl hospital-b=jsonl:/data/b.jsonl ...
#
# Each NAME needs CERTS/nodes/NAME.key registered on the SuperLink (feddx deploy certs; see
# deploy/README.md) and CERTS/ca.pem. The i-th NAME gets GPU i and runtime port 9094+i. Logs and
# PIDs go to ./supernodes-gpu/ ; Ctrl-C or SIGTERM stops exactly the processes started here.
set -euo pipefail

superlink=""; certs=""; nodes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --certs) certs="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *=*) nodes+=("$1"); shift ;;
    *) echo "supernodes-per-gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$superlink" ] && [ -n "$certs" ] && [ ${#nodes[@]} -gt 0 ] || {
  echo "supernodes-per-gpu.sh: need --superlink, --certs and at least one NAME=SOURCE:PATH" >&2; exit 2; }
gpus=$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)
if [ "${#nodes[@]}" -gt "$gpus" ]; then
  echo "supernodes-per-gpu.sh: ${#nodes[@]} nodes but $gpus GPU(s) visible" >&2; exit 2
fi

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1
mkdir -p supernodes-gpu
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait || true; }
trap stop EXIT INT TERM

for i in "${!nodes[@]}"; do
  name="${nodes[$i]%%=*}"; spec="${nodes[$i]#*=}"
  CUDA_VISIBLE_DEVICES="$i" FLWR_HOME="$PWD/supernodes-gpu/$name" flower-supernode \
    --superlink "$superlink" \
    --root-certificates "$certs/ca.pem" \
    --auth-supernode-private-key "$certs/nodes/$name.key" \
    --host 127.0.0.1 --port "$((9094 + i))" \
    --node-config "data-source='${spec%%:*}' data-path='${spec#*:}'" \
    > "supernodes-gpu/$name.log" 2>&1 &
  pids+=("$!")
  echo "$!" >> supernodes-gpu/pids
  echo "SuperNode $name on GPU $i (pid $!, log supernodes-gpu/$name.log)"
done
wait
