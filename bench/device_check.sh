#!/usr/bin/env bash
# Every accelerator measurement of the performance issue in one run of at most 8 minutes on
# one GPU (bench/device_check.py lists the parts): installs what the machine lacks, then
# runs the parts, one JSON line each, to stdout and to $OUT/device_check.jsonl (without
# $OUT: bench/results/<date>-<device>.jsonl).
#
#   bash bench/device_check.sh [--smoke] [--no-install] [bench/device_check.py options]
#   bash bench/device_check.sh --fetch-wheels     # on a host with PyPI, before a run on a machine without it
#
# --smoke rehearses every part at tiny size on the CPU with what is installed (no installs).
# Otherwise, before the parts (within the 8 minutes; BAGPIPER_DEVICE_BUDGET changes them):
#  1. wheels carried in .whl/ (git-ignored; --fetch-wheels downloads them) are installed
#     into a private directory put first on PYTHONPATH: the project's requirements that a
#     machine without package registries but with CUDA jax and torch lacks;
#  2. if the project then imports, JAX runs on a GPU and torch has CUDA, nothing else;
#  3. else the project from setup.py with its convert extra (torch, transformers), pinned
#     by constraints.txt (PyPI's Linux torch wheel is a CUDA build), and jax[cuda13] at the
#     pinned jax version (BAGPIPER_JAX_CUDA=cuda12 for an older driver) from the registry.
# The library always runs from this checkout (PYTHONPATH), whatever is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY=${PYTHON:-python3}
BASE_PATH=${PYTHONPATH:-}
export PYTHONPATH="$PWD${BASE_PATH:+:$BASE_PATH}" PIP_DISABLE_PIP_VERSION_CHECK=1

# The project's requirements (constraints.txt pins) and their own requirements that the
# device image lacks; that image holds CUDA jax and torch, transformers, flax, optax, orbax.
CARRIED_PINNED=(grain array-record soundfile soxr)
CARRIED_UNPINNED=(portpicker cffi pycparser)
WHEEL_PYTHON=${BAGPIPER_WHEEL_PYTHON:-3.12}
SITE=/tmp/bagpiper-site
JAX_CUDA=${BAGPIPER_JAX_CUDA:-cuda13}

pinned() { grep -i "^$1==" constraints.txt; }

fetch_wheels() {
    local specs=() name
    for name in "${CARRIED_PINNED[@]}"; do specs+=("$(pinned "$name")"); done
    mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${specs[@]}" "${CARRIED_UNPINNED[@]}" && ls -l .whl
}

READY_CHECK='
import jax, torch, transformers
import bagpiper_jax.generate.decode, bagpiper_jax.train.program
assert jax.default_backend() == "gpu", f"JAX runs on {jax.default_backend()}"
assert torch.cuda.is_available(), f"torch {torch.__version__} has no CUDA device"
'

# Prints why the machine is not ready to measure (nothing when it is).
not_ready() {
    local out
    out=$("$PY" -c "$READY_CHECK" 2>&1) || echo "$out" | tail -n 1
}

install() {
    local how=() why
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
            && export PYTHONPATH="$PWD:$SITE${BASE_PATH:+:$BASE_PATH}" \
            && how+=("carried wheels: $(ls .whl | tr '\n' ' ')")
    fi
    why=$(not_ready)
    if [ -n "$why" ]; then
        echo "device_check: not ready ($why); installing from the registry" >&2
        timeout 420 "$PY" -m pip install -q --retries 1 --timeout 15 -c constraints.txt -e ".[convert]" \
            "jax[$JAX_CUDA]==$(pinned jax | cut -d= -f3)" >&2 \
            && how+=("pip: -c constraints.txt -e .[convert] jax[$JAX_CUDA]")
        why=$(not_ready)
    fi
    INSTALL="${how[*]:-preinstalled}${why:+; NOT READY: $why}"
}

mode=install
args=()
for arg in "$@"; do
    case $arg in
        --fetch-wheels) mode=fetch ;;
        --smoke) mode=smoke; args+=("$arg") ;;
        --no-install) mode=none ;;
        *) args+=("$arg") ;;
    esac
done
case $mode in
    fetch) fetch_wheels; exit ;;
    smoke) exec "$PY" bench/device_check.py "${args[@]}" ;;
    none) INSTALL="not checked (--no-install)" ;;
    install) install ;;
esac
budget=$(( ${BAGPIPER_DEVICE_BUDGET:-480} - (SECONDS - start) ))
exec "$PY" bench/device_check.py --budget "$budget" --install "$INSTALL" "${args[@]}"
