#!/usr/bin/env bash
# Train Bagpiper on a Cloud TPU pod slice: every host runs the same `bagpiper-train`.
#
#   launch/tpu_pod.sh create   # create the TPU VM slice (queued resource-free, on-demand)
#   launch/tpu_pod.sh setup    # on every host: install bagpiper-jax + jax[tpu], mount the bucket
#   launch/tpu_pod.sh train [key=value ...]   # start (or resume) the run on every host
#   launch/tpu_pod.sh logs     # follow host 0's log
#   launch/tpu_pod.sh stop     # SIGTERM on every host: checkpoint at the current step, exit 0
#   launch/tpu_pod.sh delete
#
# Settings (environment):
#   TPU_NAME, ZONE, PROJECT        the slice (PROJECT defaults to gcloud's current project)
#   ACCELERATOR                    v5p-256 | v6e-256 | ... (default v5p-256)
#   RUNTIME                        TPU software version (default from ACCELERATOR)
#   CONFIG                         config file inside the repo (default configs/8b_${ACCELERATOR//-/}.yaml)
#   BUCKET                         gs://bucket holding the prepared data and the runs
#   DATA                           prepared shards, relative to the bucket (default data/prepared)
#   RUN                            run name (default bagpiper-8b); checkpoints go to
#                                  $BUCKET/runs/$RUN/checkpoints (Orbax writes GCS directly),
#                                  logs to $BUCKET/runs/$RUN through the gcsfuse mount
#   INIT_FROM                      optional, relative to the bucket: a Qwen3-8B-Base directory,
#                                  a model checkpoint, or an earlier stage's run (runs/<RUN>)
#   REPO                           git URL of bagpiper-jax (default: the origin of this checkout)
#   REF                            git ref to check out on the hosts (default: this checkout's HEAD)
#
# Data and logs are read/written through a gcsfuse mount of $BUCKET at /mnt/bagpiper on
# every host (ArrayRecord reads are random access; gcsfuse's file cache serves them), the
# Orbax checkpoints go straight to gs://. `jax.distributed.initialize()` auto-detects the
# pod (BAGPIPER_DISTRIBUTED=auto), so the same command runs on every host.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v5p-256}
case "$ACCELERATOR" in
  v6e-*) DEFAULT_RUNTIME=v2-alpha-tpuv6e ;;
  v5p-*) DEFAULT_RUNTIME=v2-alpha-tpuv5 ;;
  v5litepod-*) DEFAULT_RUNTIME=v2-alpha-tpuv5-lite ;;
  *) DEFAULT_RUNTIME=tpu-ubuntu2204-base ;;
esac
RUNTIME=${RUNTIME:-$DEFAULT_RUNTIME}
CONFIG=${CONFIG:-configs/8b_${ACCELERATOR//-/}.yaml}
DATA=${DATA:-data/prepared}
RUN=${RUN:-bagpiper-8b}
REPO=${REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)}
REF=${REF:-$(git -C "$(dirname "$0")/.." rev-parse HEAD)}
MOUNT=/mnt/bagpiper
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

on_all_hosts() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

need_bucket() { : "${BUCKET:?set BUCKET=gs://...}"; }

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    ;;
  setup)
    need_bucket
    : "${REPO:?set REPO to a git URL of bagpiper-jax the hosts can clone}"
    on_all_hosts "set -e
      sudo apt-get -qq update && sudo apt-get -qq install -y git
      if ! command -v gcsfuse >/dev/null; then
        export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
      fi
      [ -d bagpiper-jax ] || git clone -q $REPO bagpiper-jax
      cd bagpiper-jax && git fetch -q origin && git checkout -q $REF
      python3 -m venv ~/venv && . ~/venv/bin/activate
      pip install -q -U pip && pip install -q -c constraints.txt -e '.[tpu]' gcsfs
      sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
      mountpoint -q $MOUNT || gcsfuse --implicit-dirs --file-cache-max-size-mb=-1 --cache-dir=/tmp/gcsfuse-cache ${BUCKET#gs://} $MOUNT"
    ;;
  train)
    need_bucket
    init=${INIT_FROM:+train.init_from=$MOUNT/$INIT_FROM}
    on_all_hosts "cd bagpiper-jax && . ~/venv/bin/activate && mkdir -p $MOUNT/runs/$RUN &&
      BAGPIPER_DISTRIBUTED=auto nohup bagpiper-train --config $CONFIG --no-progress \
        run_dir=$MOUNT/runs/$RUN train.checkpoint_dir=$BUCKET/runs/$RUN/checkpoints \
        data.prepared=$MOUNT/$DATA $init $* > ~/train.log 2>&1 &"
    echo "started on every host; follow with: $0 logs"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=0 --command="tail -f ~/train.log"
    ;;
  stop)
    on_all_hosts "pkill -TERM -f bagpiper-train || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
    ;;
  *)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
