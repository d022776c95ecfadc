#!/usr/bin/env bash
# The Docker stack, end to end, on a machine that reaches Debian's apt mirror and PyPI but no
# image registry (docs/docker.md, "Smoke test"):
#
#   sudo docker/smoke.sh            # as root: debootstrap and the Docker engine need it
#
# 1. base: a Debian bookworm image made with debootstrap from the mirror apt itself uses
#    (read from /etc/apt/sources.list*), imported as resnet-smoke/bookworm:local
# 2. wheels: a wheelhouse of every image's Python packages (pip download, on this host, by a
#    Python of the base's exact version; kept in build/smoke/wheels and reused while the
#    requirements are unchanged)
# 3. images: postgres and moto stand-ins, the MLflow server and the CPU image, built on it
#    (their Dockerfiles' base ARGs set to the local base, pip pointed at the wheelhouse,
#    apt through the host's network); SMOKE_GPU_IMAGE=1 also builds docker/Dockerfile
# 4. secrets: the stack refuses a placeholder password (one service started with it)
# 5. up: compose.yaml + compose.smoke.yaml with random passwords in a temporary env file,
#    until every service is healthy
# 6. pipeline: `prefect deploy --all` and a tiny run of resnet-pipeline/cifar10-resnet20 on
#    a CIFAR-10 subset, through the Prefect worker container
# 7. checks: the MLflow run, the registered model version, the artifacts in the S3 bucket
# 8. dvc push: the run's outputs to the S3 bucket, and the objects there
# then `down -v` (always, also on failure or Ctrl-C), and the time of each phase.
#
# Environment: PYTHON (a Python with pip and PyYAML, of the base's exact version, 3.11.2 on
# bookworm; default: Debian's /usr/bin/python3 where it is there, else python3), SMOKE_MIRROR
# (default: apt's own), SMOKE_CIFAR (the CIFAR-10 class-folder archive; default
# ../shared/datasets/cifar10-jpg.tar.gz), SMOKE_REBUILD_BASE=1 (debootstrap again),
# SMOKE_GPU_IMAGE=1, SMOKE_KEEP=1 (leave the stack up; `down -v` is then yours to run).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER_DIR=$REPO/docker
STATE=$REPO/build/smoke
WHEELS=$STATE/wheels
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    [[ -x /usr/bin/python3 ]] && PYTHON=/usr/bin/python3
fi
CIFAR=${SMOKE_CIFAR:-$REPO/../shared/datasets/cifar10-jpg.tar.gz}
BASE_IMAGE=resnet-smoke/bookworm:local
PROJECT=resnet-smoke
MODEL_NAME=cifar10-classifier  # register.name: auto on CIFAR-10
# The classic builder: BuildKit would fetch the `# syntax=` line's frontend from a registry.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

die() {
    echo "smoke.sh: $*" >&2
    exit 1
}

# ---- timing: one line per phase, and the total, however the run ends
PHASES=()
PHASE=""
PHASE_START=0
RUN_START=$(date +%s)
phase() {
    local now
    now=$(date +%s)
    [[ -z $PHASE ]] || PHASES+=("$(printf '%-10s %5ds' "$PHASE" $((now - PHASE_START)))")
    PHASE=$1
    PHASE_START=$now
    [[ $1 == done ]] || echo "==> $1 ($(date -u +%H:%M:%S) UTC)"
}

# ---- cleanup: the stack (containers, network, volumes), the wheel server, the scratch files
TMP=""
SERVER_PID=""
STACK=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local failed_in=$PHASE
    if [[ -n $STACK && -f $STACK ]]; then
        if [[ ${SMOKE_KEEP:-0} == 1 && $status == 0 ]]; then
            echo "smoke.sh: SMOKE_KEEP=1: the stack is up; remove it with:"
            echo "  docker-compose -p $PROJECT -f $STACK down -v"
        else
            phase down
            docker-compose -p $PROJECT -f "$STACK" down -v --remove-orphans >"$TMP/down.log" 2>&1 ||
                { echo "smoke.sh: down -v failed:" >&2; tail -20 "$TMP/down.log" >&2; }
        fi
    fi
    [[ -z $SERVER_PID ]] || kill "$SERVER_PID" 2>/dev/null || true
    phase done
    echo "---- phase      time"
    printf '%s\n' "${PHASES[@]}"
    printf '%-10s %5ds\n' total $(($(date +%s) - RUN_START))
    if [[ $status == 0 ]]; then
        echo "smoke.sh: PASSED"
    else
        echo "smoke.sh: FAILED in phase '$failed_in' (exit $status); logs: $TMP" >&2
    fi
    # The scratch folder goes only on success: its logs tell what failed.
    if [[ $status == 0 && -n $TMP && ${SMOKE_KEEP:-0} != 1 ]]; then
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites, checked before anything is built
[[ $(id -u) == 0 ]] || die "run as root (debootstrap needs it)"
for tool in docker docker-compose debootstrap tar; do
    command -v $tool >/dev/null || die "$tool is missing (apt-get install docker.io docker-compose debootstrap)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (start one: dockerd --iptables=false &)"
"$PYTHON" -c 'import yaml, pip' 2>/dev/null || die "$PYTHON has no pip or no PyYAML; set PYTHON"
[[ -f $CIFAR ]] || die "$CIFAR: no CIFAR-10 archive (set SMOKE_CIFAR)"
mkdir -p "$STATE"
TMP=$(mktemp -d "$STATE/run.XXXXXX")
chmod 700 "$TMP"
echo "smoke.sh: scratch folder $TMP"

# Every compose command of the run: the rendered stack, this project name.
dc() { docker-compose -p $PROJECT -f "$STACK" "$@"; }
# A command's output to a log; on failure its tail, then stop.
logged() {
    local log=$TMP/$1.log
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -40 "$log" >&2
        die "failed: $* (log: $log)"
    fi
}
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- 1. base
phase base
# apt's own mirror for bookworm: deb822 .sources stanzas first, then one-line sources.list.
apt_mirror() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
            /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|$|\n)/ || /(^|\n)Suites:[ \t]*bookworm([ \t]|$|\n)/ {
                for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, f, /[ \t]+/); print f[2]; exit }
            }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { if ($(i + 1) == "bookworm") print $i; break } }' "$file"
    done
}
MIRROR=${SMOKE_MIRROR:-$(apt_mirror | head -1)}
[[ -n $MIRROR ]] || die "no bookworm mirror in /etc/apt/sources.list*: set SMOKE_MIRROR"
if [[ ${SMOKE_REBUILD_BASE:-0} != 1 ]] && docker image inspect $BASE_IMAGE >/dev/null 2>&1; then
    echo "reused $BASE_IMAGE (SMOKE_REBUILD_BASE=1 makes it again)"
else
    echo "debootstrap bookworm from $MIRROR"
    # python3-venv and python-is-python3: what the python:3.11-slim images give the Dockerfiles
    # (`python -m venv`); ca-certificates for the images' own https clients.
    logged debootstrap debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$TMP/rootfs" "$MIRROR"
    logged import sh -c "tar -C '$TMP/rootfs' -c . | docker import - $BASE_IMAGE"
    rm -rf "$TMP/rootfs"
fi

# ---- 2. wheels
phase wheels
# The resolving Python must be the base's own version, to the patch level: pip evaluates
# environment markers with the running interpreter (--python-version does not change them), and
# some differ within 3.11 (redis needs async-timeout below 3.11.3; bookworm has 3.11.2).
BASE_PYTHON=$(docker run --rm $BASE_IMAGE python3 -c 'import platform; print(platform.python_version())')
HOST_PYTHON=$("$PYTHON" -c 'import platform; print(platform.python_version())')
[[ $BASE_PYTHON == "$HOST_PYTHON" ]] ||
    die "$PYTHON is Python $HOST_PYTHON, the base image's is $BASE_PYTHON: set PYTHON to a $BASE_PYTHON with pip and PyYAML"
# One resolve per image: their pins conflict with each other (boto3 against dvc-s3's
# aiobotocore), not within one image.
REQS_CPU=(torch==2.14.1 torchvision==0.29.1 nvidia-dali-cuda130==2.4.0 dvc-s3==3.3.0
    mlflow==3.17.2 prefect==3.9.1 "setuptools>=77" wheel)
REQS_MLFLOW=(mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.8)
REQS_MOTO=("moto[server]==5.2.5")
stamp=$(printf '%s\n' "$BASE_PYTHON" "${REQS_CPU[@]}" "${REQS_MLFLOW[@]}" "${REQS_MOTO[@]}" |
    cat - "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
if [[ -f $WHEELS/.complete-$stamp ]]; then
    echo "reused $WHEELS ($(du -sh "$WHEELS" | cut -f1))"
else
    mkdir -p "$WHEELS"
    # The k8s extra: the GPU image installs it (SMOKE_GPU_IMAGE=1).
    logged pip-cpu "$PYTHON" -m pip download --dest "$WHEELS" "$REPO[k8s]" "${REQS_CPU[@]}"
    logged pip-mlflow "$PYTHON" -m pip download --dest "$WHEELS" "${REQS_MLFLOW[@]}"
    logged pip-moto "$PYTHON" -m pip download --dest "$WHEELS" "${REQS_MOTO[@]}"
    touch "$WHEELS/.complete-$stamp"
    echo "downloaded to $WHEELS ($(du -sh "$WHEELS" | cut -f1))"
fi
# The builds reach it on the host's loopback (they run with --network host), on a fixed port
# when it is free: the URL is a build argument, and a new one misses every pip layer's cache.
WHEEL_PORT=${SMOKE_WHEEL_PORT:-41137}
if ! "$PYTHON" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$WHEEL_PORT" 2>/dev/null; then
    WHEEL_PORT=$(free_port)
    echo "port ${SMOKE_WHEEL_PORT:-41137} is taken: the wheelhouse on $WHEEL_PORT (no layer cache for pip steps)"
fi
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$WHEEL_PORT" >"$TMP/wheel-server.log" 2>&1 &
SERVER_PID=$!
FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/

# ---- 3. images
phase images
build() {
    local name=$1 tag=$2 dockerfile=$3 context=$4
    shift 4
    echo "build $tag"
    logged "build-$name" docker build --network host "$@" -f "$dockerfile" -t "$tag" "$context"
}
PIP_ARGS=(--build-arg PIP_NO_INDEX=1 --build-arg "PIP_FIND_LINKS=$FIND_LINKS")
build postgres resnet-smoke/postgres:15 "$DOCKER_DIR/smoke/postgres.Dockerfile" \
    "$DOCKER_DIR/smoke" --build-arg BASE_IMAGE=$BASE_IMAGE
build moto resnet-smoke/moto:5.2.5 "$DOCKER_DIR/smoke/moto.Dockerfile" \
    "$DOCKER_DIR/smoke" --build-arg PYTHON_IMAGE=$BASE_IMAGE "${PIP_ARGS[@]}"
build mlflow resnet-smoke/mlflow:3.17.2 "$DOCKER_DIR/mlflow.Dockerfile" "$DOCKER_DIR" \
    --build-arg PYTHON_IMAGE=$BASE_IMAGE "${PIP_ARGS[@]}"
build cpu resnet-smoke/cpu:latest "$DOCKER_DIR/Dockerfile.cpu" "$REPO" \
    --build-arg PYTHON_IMAGE=$BASE_IMAGE "${PIP_ARGS[@]}"
if [[ ${SMOKE_GPU_IMAGE:-0} == 1 ]]; then
    build gpu resnet-smoke/gpu:latest "$DOCKER_DIR/Dockerfile" "$REPO" \
        --build-arg CUDA_IMAGE=$BASE_IMAGE "${PIP_ARGS[@]}"
fi
kill "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

# ---- the run's settings: random passwords, free ports, the scratch workspace and data
secret() { "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))'; }
WORKSPACE=$TMP/workspace
DATA=$TMP/cifar-subset
ENV_FILE=$TMP/stack.env
MLFLOW_PORT=$(free_port)
PREFECT_PORT=$(free_port)
(
    umask 077
    cat >"$ENV_FILE" <<EOF
POSTGRES_USER=resnet
POSTGRES_PASSWORD=$(secret)
MINIO_ROOT_USER=resnet
MINIO_ROOT_PASSWORD=$(secret)
BIND_ADDRESS=127.0.0.1
MLFLOW_PORT=$MLFLOW_PORT
PREFECT_PORT=$PREFECT_PORT
MINIO_PORT=$(free_port)
MINIO_CONSOLE_PORT=$(free_port)
RESNET_WORKSPACES=
HOST_UID=1000
HOST_GID=1000
SMOKE_WORKSPACE=$WORKSPACE
SMOKE_DATA=$DATA
EOF
)
# The stack as compose resolves it, less the GPU reservations Compose v1 cannot drop in an
# override (compose.smoke.yaml says why). It holds the passwords: mode 600, in $TMP.
render() {
    local env_file=$1 out=$2
    (
        umask 077
        docker-compose --env-file "$env_file" -f "$DOCKER_DIR/compose.yaml" \
            -f "$DOCKER_DIR/compose.smoke.yaml" config >"$out.full"
    )
    "$PYTHON" - "$out.full" "$out" <<'EOF'
import sys
import yaml

with open(sys.argv[1]) as f:
    stack = yaml.safe_load(f)
for service in stack["services"].values():
    service.pop("deploy", None)
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(stack, f, sort_keys=False)
EOF
    rm "$out.full"
}

# ---- 4. secrets: a placeholder password stops the service before it starts
phase secrets
sed 's/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=change-me-postgres/' "$ENV_FILE" >"$TMP/placeholder.env"
render "$TMP/placeholder.env" "$TMP/placeholder.yaml"
set +e
docker-compose -p $PROJECT-secrets -f "$TMP/placeholder.yaml" run --rm --no-deps -T postgres \
    >"$TMP/placeholder.log" 2>&1
refused=$?
set -e
docker-compose -p $PROJECT-secrets -f "$TMP/placeholder.yaml" down -v >>"$TMP/placeholder.log" 2>&1
grep -q "^error: POSTGRES_PASSWORD is still the .env.example placeholder" "$TMP/placeholder.log" &&
    [[ $refused == 1 ]] || { cat "$TMP/placeholder.log" >&2; die "the placeholder password was not refused"; }
echo "refused: $(grep '^error:' "$TMP/placeholder.log")"

# ---- the scratch workspace: the checkout's files (tracked and new, not ignored) in a new git
# repository, and 20 training and 10 test images a class from the CIFAR-10 archive
mkdir -p "$WORKSPACE"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf -) | tar -C "$WORKSPACE" -xf -
(
    cd "$WORKSPACE"
    export GIT_AUTHOR_NAME=smoke GIT_AUTHOR_EMAIL=smoke@localhost \
        GIT_COMMITTER_NAME=smoke GIT_COMMITTER_EMAIL=smoke@localhost
    git init -q && git add -A && git commit -qm "smoke test workspace"
)
"$PYTHON" - "$CIFAR" "$DATA" <<'EOF'
import sys
import tarfile
from pathlib import Path

archive, out = sys.argv[1], Path(sys.argv[2])
per_split = {"train": 20, "test": 10}
taken: dict[tuple[str, str], int] = {}
with tarfile.open(archive) as tar:
    for member in tar:
        parts = Path(member.name).parts
        if not member.isfile() or len(parts) < 3 or parts[-3] not in per_split:
            continue
        key = (parts[-3], parts[-2])
        if taken.get(key, 0) >= per_split[key[0]]:
            continue
        taken[key] = taken.get(key, 0) + 1
        target = out / key[0] / key[1] / parts[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tar.extractfile(member).read())
print(f"CIFAR-10 subset: {sum(taken.values())} images in {len(taken)} class folders")
EOF
chown -R 1000:1000 "$WORKSPACE" "$DATA"

# ---- 5. up
phase up
STACK=$TMP/stack.yaml
render "$ENV_FILE" "$STACK"
logged up dc up -d --no-build
wait_healthy() {
    local deadline=$(($(date +%s) + $1)) service id state
    shift
    for service in "$@"; do
        id=$(dc ps -q "$service")
        while :; do
            state=$(docker inspect -f '{{.State.Health.Status}}' "$id")
            [[ $state == healthy ]] && break
            if [[ $state == unhealthy || $(date +%s) -gt $deadline ]]; then
                dc logs --tail 40 "$service" >&2
                die "$service is $state"
            fi
            sleep 3
        done
        echo "$service healthy"
    done
}
wait_healthy 600 postgres minio mlflow prefect-server prefect-worker
dc ps

# ---- 6. pipeline: the deployments of prefect.yaml, one tiny run through the worker
phase pipeline
OVERRIDES='["prepare.cifar10.source=/smoke-data", "prepare.workers=1",
 "preprocess.cifar10.val_size=50", "preprocess.workers=1", "loader.num_threads=1",
 "train.batch_size=32", "train.schedule.length=10", "train.schedule.milestones=[]",
 "train.log_every=5", "train.checkpoint_every=0", "evaluate.batch_size=100",
 "report.response_images=100"]'
logged deploy dc exec -T prefect-worker prefect --no-prompt deploy --all
if ! dc exec -T prefect-worker prefect deployment run resnet-pipeline/cifar10-resnet20 \
    --param "overrides=$OVERRIDES" --watch --watch-timeout 1800 >"$TMP/flow-run.log" 2>&1; then
    tail -60 "$TMP/flow-run.log" >&2
    dc logs --tail 80 prefect-worker >"$TMP/worker.log" 2>&1 || true
    die "the flow run failed (logs: $TMP/flow-run.log, $TMP/worker.log)"
fi
grep -E "Flow run finished|UUID" "$TMP/flow-run.log" || true

# ---- 7. checks: MLflow's run and model version, its artifacts in the bucket
phase checks
S3_ENV=(-e "AWS_ACCESS_KEY_ID=$(sed -n 's/^MINIO_ROOT_USER=//p' "$ENV_FILE")"
    -e "AWS_SECRET_ACCESS_KEY=$(sed -n 's/^MINIO_ROOT_PASSWORD=//p' "$ENV_FILE")")
dc exec -T "${S3_ENV[@]}" -e MODEL_NAME=$MODEL_NAME prefect-worker python - <<'EOF'
import json
import os
import sys

import s3fs  # dvc-s3's S3 client; the image has no boto3
from mlflow import MlflowClient

client = MlflowClient()  # MLFLOW_TRACKING_URI: the stack's server
register = json.load(open("metrics/register.json"))
runs = client.search_runs(
    [e.experiment_id for e in client.search_experiments()], "tags.model = 'resnet20'"
)
if len(runs) != 1:
    sys.exit(f"expected one resnet20 run in MLflow, found {len(runs)}")
run = runs[0]
error = run.data.metrics.get("test_top1_error")
print(f"MLflow run {run.info.run_id}: {run.info.status}, test_top1_error {error}")
if run.info.status != "FINISHED" or error is None:
    sys.exit("the MLflow run is not finished with a test error")
versions = client.search_model_versions(f"name = '{os.environ['MODEL_NAME']}'")
print(f"registered {os.environ['MODEL_NAME']}: versions {[v.version for v in versions]}")
if not versions or versions[0].run_id != run.info.run_id:
    sys.exit("no model version from the run in the registry")
if str(register.get("version")) != str(versions[0].version):
    sys.exit(f"metrics/register.json names version {register.get('version')}")
s3 = s3fs.S3FileSystem(client_kwargs={"endpoint_url": "http://minio:9000"})
keys = s3.find("mlflow")
mine = [k for k in keys if run.info.run_id in k]
print(f"bucket mlflow: {len(keys)} objects, {len(mine)} of the run, e.g. {sorted(mine)[:3]}")
if not mine:
    sys.exit("no artifact of the run in the mlflow bucket")
EOF

# ---- 8. dvc push to the S3 bucket, through the worker (as a user would from the checkout)
phase dvc-push
dc exec -T "${S3_ENV[@]}" prefect-worker sh -euc '
    dvc remote add --force --default stack s3://resnet-mlops/dvc
    dvc remote modify stack endpointurl http://minio:9000
    dvc push
' >"$TMP/dvc-push.log" 2>&1 || { tail -30 "$TMP/dvc-push.log" >&2; die "dvc push failed"; }
tail -1 "$TMP/dvc-push.log"
dc exec -T "${S3_ENV[@]}" prefect-worker python - <<'EOF'
import sys

import s3fs
import yaml

s3 = s3fs.S3FileSystem(client_kwargs={"endpoint_url": "http://minio:9000"})
keys = set(s3.find("resnet-mlops/dvc"))
lock = yaml.safe_load(open("dvc.lock"))
model = next(o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt")
key = f"resnet-mlops/dvc/files/md5/{model['md5'][:2]}/{model['md5'][2:]}"
print(f"bucket resnet-mlops: {len(keys)} DVC objects; models/model.pt there: {key in keys}")
if key not in keys:
    sys.exit("models/model.pt is not in the DVC remote")
EOF
