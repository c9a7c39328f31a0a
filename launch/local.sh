#!/usr/bin/env bash
# Train on this machine's devices (all local GPUs/TPU chips, or the CPU):
#
#   launch/local.sh configs/demo.yaml                       # the demo job
#   launch/local.sh configs/8b.yaml run_dir=runs/8b data.prepared=/data/prepared train.init_from=/models/Qwen3-8B-Base
#
# Pass PROCESSES=N to start N processes on this host instead (each with
# DEVICES_PER_PROCESS simulated CPU devices, logs in LOG_DIR; a rehearsal of a multi-host
# run with gloo collectives; tests/test_train_processes.py runs it). SIGTERM checkpoints
# at the current step and exits 0 (in multi-process mode, Ctrl-C forwards SIGTERM to every
# process).
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG [key=value ...]}
shift
PROCESSES=${PROCESSES:-1}

if [ "$PROCESSES" -eq 1 ]; then
  exec bagpiper-train --config "$CONFIG" "$@"
fi

PORT=${PORT:-$((20000 + RANDOM % 20000))}
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
for ((i = 0; i < PROCESSES; i++)); do
  BAGPIPER_COORDINATOR=localhost:$PORT BAGPIPER_NUM_PROCESSES=$PROCESSES BAGPIPER_PROCESS_ID=$i \
    bagpiper-train --config "$CONFIG" --no-progress "$@" > "${LOG_DIR:-.}/local-process-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
