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
# process 0 prints and writes files. When a process fails, the others are
# stopped after GRACE seconds (default 20), so a bad run never hangs; the
# exit status is the first failure's. Set PYTHON to pick the interpreter.
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

status=0
for ((done = 0; done < count; done++)); do
  code=0
  wait -n || code=$?
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    sleep "${GRACE:-20}"
    kill "${pids[@]}" 2>/dev/null || true
  fi
done
exit "$status"
