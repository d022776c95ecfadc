#!/usr/bin/env bash
# The GPU device check in one command (issue 20; bench/device/README.md says how to call it).
#
#   bash bench/device/run.sh --commit <sha> [measure.py options...]
#
# 1. checks the GPU (nvidia-smi, torch.cuda); 2. joins the carried parts (.device/parts/,
# checked against manifest.json) into $CARRY; 3. installs the carried wheels (DALI) with
# pip --no-deps --no-index into .device/site, on PYTHONPATH; 4. runs bench/device/measure.py,
# which writes one JSON record per step to $OUT as each step ends, and summary.json.
# Steps 2 and 3 are skipped when an earlier call on the same machine did them.
# --dry-run (passed on to measure.py) skips the GPU check, for this CPU.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

PYTHON=${PYTHON:-python3}
PARTS=${PARTS:-.device/parts}
CARRY=${CARRY:-/tmp/device-carry}
SITE=${SITE:-$PWD/.device/site}
OUT=${OUT:-$PWD/.device/out}
# Not under $OUT: the device tool brings back 8 files, and the records and the CIFAR run take
# them all. The call's reply holds the output's tail; a later call can read the whole log.
LOG=${LOG:-$PWD/.device/log.txt}
mkdir -p "$OUT" "$(dirname "$LOG")"
export PYTHONUNBUFFERED=1

dry=0
for arg in "$@"; do [ "$arg" = --dry-run ] && dry=1; done

say() { echo "run.sh: $*" | tee -a "$LOG"; }
fail() { echo "error: $*" | tee -a "$LOG" >&2; exit 1; }
# Replace a folder only if this script wrote it (its marker file is there) or it is empty.
ours() { [ ! -e "$1" ] || [ -e "$1/$2" ] || [ -z "$(ls -A "$1")" ] \
    || fail "$1: exists and was not written by run.sh (no $2); choose another or remove it"; }

say "start $(date -u +%FT%TZ) in $PWD"
if [ "$dry" = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 \
        | tee -a "$LOG" || fail "nvidia-smi does not answer: no GPU here"
    "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
        || fail "torch ($("$PYTHON" -c 'import torch; print(torch.__version__)')) sees no CUDA device"
fi

# Join only when these parts were not joined before (the manifest's bundle sha256 is the key).
[ -f "$PARTS/manifest.json" ] || fail "$PARTS/manifest.json: no such file (carry it with the last part)"
key=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["bundle"]["sha256"])' \
    "$PARTS/manifest.json") || fail "$PARTS/manifest.json: not a manifest"
if [ "$(cat "$CARRY/.joined" 2>/dev/null)" != "$key" ]; then
    started=$SECONDS
    ours "$CARRY" .joined
    rm -rf "$CARRY"  # this script's own unpacked copy of an earlier bundle
    "$PYTHON" bench/device/split_wheels.py join --parts "$PARTS" --into "$CARRY" 2>&1 \
        | tee -a "$LOG" || fail "joining the parts failed (above)"
    echo "$key" > "$CARRY/.joined"
    say "joined in $((SECONDS - started)) s"
fi

shopt -s nullglob
wheels=("$CARRY"/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ] && [ "$(cat "$SITE/.installed" 2>/dev/null)" != "$key" ]; then
    started=$SECONDS
    ours "$SITE" .installed
    rm -rf "$SITE"  # this script's own install from an earlier bundle
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "${wheels[@]}" 2>&1 | tee -a "$LOG" \
        || fail "pip install of the carried wheels failed (above)"
    echo "$key" > "$SITE/.installed"
    say "installed ${#wheels[@]} wheels in $((SECONDS - started)) s"
fi
export PYTHONPATH="$SITE:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" bench/device/measure.py --out "$OUT" \
    --imagenet "$CARRY/data/imagenet-repeat" --cifar-archive "$CARRY/data/cifar10-jpg.tar.gz" \
    "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
say "end $(date -u +%FT%TZ), measure.py exit $status"
exit "$status"
