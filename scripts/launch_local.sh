#!/usr/bin/env bash
# Runs `python -m experiments` as N processes on this machine, joined by
# JAX's multi-process runtime (CPU collectives through gloo): a way to try
# the multi-host mode of docs/several_hosts.md on a laptop, and what the
# tests use.
#
#   scripts/launch_local.sh N PRESET [options of python -m experiments]
#   scripts/launch_local.sh 2 f1 --dataset digits --quick --out runs/f1-2p
#
# Each process sees DEVICES_PER_PROCESS CPU devices (default 1). Only
# process 0 prints and writes files. The script returns when every process
# has ended, with the first failure's exit status; processes still running
# GRACE seconds (default 20) after a failure are stopped, so a bad run
# never hangs. Set PYTHON to pick the interpreter. Needs bash 5.1 or later.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N PRESET [options]  (N >= 1 processes)" >&2
  exit 2
fi
count=$1
shift
PYTHON=${PYTHON:-python}
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
flags=$(echo "${XLA_FLAGS:-}" | sed 's/--xla_force_host_platform_device_count=[0-9]*//g')
export XLA_FLAGS="$flags --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
export JAX_PLATFORMS=cpu

pids=()
for ((index = 0; index < count; index++)); do
  "$PYTHON" -m experiments "$@" --coordinator "localhost:$port" \
    --num-processes "$count" --process-id "$index" &
  pids+=($!)
done

# Wait for every process; after the first failure, stop those still
# running after GRACE seconds (they fail by themselves within seconds when
# the run stops together, or when JAX misses the failed one's heartbeat).
status=0
running=("${pids[@]}")
stopper=
while ((${#running[@]} > 0)); do
  code=0
  wait -n -p ended "${running[@]}" || code=$?
  left=()
  for pid in "${running[@]}"; do
    [[ $pid == "$ended" ]] || left+=("$pid")
  done
  running=("${left[@]}")
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    (sleep "${GRACE:-20}" && kill "${running[@]}") >/dev/null 2>&1 &
    stopper=$!
  fi
done
if [[ -n $stopper ]]; then
  kill "$stopper" 2>/dev/null || true
fi
exit "$status"
