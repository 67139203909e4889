#!/usr/bin/env bash
# `make docker-smoke`: build the cpu image and check it against a real Docker engine.
#
# Starts a private dockerd (socket, data and exec roots in a temp folder; nothing else on the
# machine is touched), makes sure python:3.11-slim exists (docker/base-image.sh builds a
# stand-in when it cannot be pulled), builds the images, then runs tests/docker with pytest:
# hadolint, `docker-compose config` of every profile, and the container checks (healthy,
# non-root, classifies a real photo through the published port, drains an in-flight request
# on `docker-compose down` and exits 0). The builds: the cpu service with `docker-compose build`
# and the classic builder (DOCKER_BUILDKIT=0), in an engine that has no CUDA image and cannot
# pull one, so it fails if the cpu target reaches the gpu stages; then a plain `docker build .`
# with BuildKit, which pytest compares with the cpu image (the default target). The engine is
# stopped by its PID whatever happened; exit status non-zero when any step or check failed.
#
# Needs root, Debian's docker.io and debootstrap (the make target installs them) and the dev
# extra in .venv. Environment:
#   BIN                    the venv's bin folder (default .venv/bin)
#   DOCKER                 the docker CLI (default: docker.io's /usr/bin/docker, whose built-in
#                          BuildKit needs no buildx plugin)
#   CNNSERVE_DOCKER_CACHE  a persistent folder for the base image's rootfs and .debs, so a
#                          second run skips debootstrap (default /var/cache/cnnserve-docker;
#                          empty: no cache)
#   CNNSERVE_SMOKE_KEEP=1  keep the temp folder (logs, data root) for a post-mortem
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
DOCKER=${DOCKER:-/usr/bin/docker}
export CNNSERVE_DOCKER_CACHE=${CNNSERVE_DOCKER_CACHE-/var/cache/cnnserve-docker}
IMAGE=cnnserve:cpu
DEFAULT_IMAGE=cnnserve:default

started=$SECONDS
step_started=$SECONDS
step() {
  printf '\n=== [%4ss] %s\n' "$((SECONDS - started))" "$*"
  step_started=$SECONDS
}
log() { printf '[smoke] %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "dockerd needs root"; exit 1; }
command -v dockerd >/dev/null && [ -x "$DOCKER" ] || {
  log "no dockerd or $DOCKER: apt-get install docker.io (make docker-smoke does)"
  exit 1
}

work=$(mktemp -d /tmp/cnnserve-docker.XXXXXX)
dockerd_pid=""
export DOCKER_HOST="unix://$work/docker.sock"
export COMPOSE_PROJECT_NAME=cnnserve-smoke

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    step "stopping dockerd (pid $dockerd_pid)"
    # Whatever a failed check left running goes first, so dockerd stops quickly.
    timeout 60 "$BIN/docker-compose" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    log "compose project down after $((SECONDS - step_started)) s"
    kill -TERM "$dockerd_pid"
    for _ in $(seq 1 30); do
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      log "dockerd did not stop in 30 s: SIGKILL"
      kill -KILL "$dockerd_pid"
    fi
    wait "$dockerd_pid" 2>/dev/null
    log "dockerd stopped after $((SECONDS - step_started)) s"
    # A killed dockerd leaves its containerd and shims running: theirs are the only command
    # lines that name this temp folder.
    for pid in $(pgrep -f -- "$work/"); do
      kill -KILL "$pid" 2>/dev/null && log "killed $pid, left by dockerd"
    done
  fi
  if [ "$rc" -ne 0 ] && [ -f "$work/dockerd.log" ]; then
    log "dockerd.log, last lines:"
    tail -n 20 "$work/dockerd.log" >&2
  fi
  # A dockerd that had to be killed can leave its overlay mounts behind.
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  if [ "${CNNSERVE_SMOKE_KEEP:-}" = 1 ]; then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  printf '\n=== docker-smoke %s in %ss\n' "$([ "$rc" -eq 0 ] && echo passed || echo FAILED)" \
    "$((SECONDS - started))"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# How pip reaches the index on this machine, for the build: only what is reachable from inside
# a container (http(s) indexes, proxies); local folders (file://, find-links) are not.
build_args=()
pip_setting() {
  "$BIN/pip" config list 2>/dev/null |
    sed -n "s/^\(global\|install\|:env:\)\.$1='\(.*\)'$/\2/p" | tail -n 1
}
http_only() { tr ' ' '\n' | grep -E '^https?://' | paste -sd ' ' - || true; }
index_url=$(pip_setting index-url | http_only)
extra_index_url=$(pip_setting extra-index-url | http_only)
trusted_host=$(pip_setting trusted-host)
[ -n "$index_url" ] && build_args+=(--build-arg "PIP_INDEX_URL=$index_url")
[ -n "$extra_index_url" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra_index_url")
[ -n "$trusted_host" ] && build_args+=(--build-arg "PIP_TRUSTED_HOST=$trusted_host")
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!var:-}" ] && build_args+=(--build-arg "$var=${!var}")
done

step "starting dockerd in $work"
dockerd --host "$DOCKER_HOST" --data-root "$work/data" --exec-root "$work/exec" \
  --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 60); do
  "$DOCKER" version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { log "dockerd exited"; exit 1; }
  sleep 0.5
done
"$DOCKER" version --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}'

step "base image python:3.11-slim"
bash docker/base-image.sh "$work"

# The gpu target's CUDA base image. It is never in this engine and cannot be pulled here; on an
# engine that could pull it, its appearance would show that a cpu build reached for it.
cuda_image=$(sed -n 's/^ARG CUDA_IMAGE=//p' Dockerfile)
[ -n "$cuda_image" ] || { log "no ARG CUDA_IMAGE= in the Dockerfile"; exit 1; }
no_cuda_image() {
  if "$DOCKER" image inspect "$cuda_image" >/dev/null 2>&1; then
    log "$cuda_image is in the engine $1"
    exit 1
  fi
}
# Which builder made an image: BuildKit writes buildkit.dockerfile.v0 as the comment of each
# step it adds, the classic builder none.
builder_of() {
  local comments
  comments=$("$DOCKER" history --no-trunc --format '{{.Comment}}' "$1") || return 1
  if grep -q buildkit <<<"$comments"; then echo buildkit; else echo classic; fi
}
build() {
  local log_file=$1
  shift
  if ! BUILDKIT_PROGRESS=plain "$@" >"$log_file" 2>&1; then
    tail -n 60 "$log_file"
    return 1
  fi
  grep -E 'Successfully installed' "$log_file" | sed 's/^#[0-9]* [0-9.]* /  /' || true
}

# `docker compose up --build` of the cpu service as Compose without buildx runs it: the classic
# builder, which walks every stage above the target (cpu), so this fails if any of them needs
# the CUDA image. Compose sends the engine the same build as `DOCKER_BUILDKIT=0 docker build
# --target cpu`. The image is the one pytest runs (`up --no-build`).
step "classic builder: DOCKER_BUILDKIT=0 docker-compose build cnnserve (target cpu)"
no_cuda_image "before any build"
if ! DOCKER_BUILDKIT=0 CNNSERVE_IMAGE="$IMAGE" build "$work/build-classic.log" \
  "$BIN/docker-compose" build "${build_args[@]+"${build_args[@]}"}" cnnserve; then
  log "the classic builder cannot build the cpu target without $cuda_image:"
  log "are gpu stages above it? (tests/docker/test_dockerfile_stages.py)"
  exit 1
fi
no_cuda_image "after the classic build of the cpu target"
builder=$(builder_of "$IMAGE")
[ "$builder" = classic ] || { log "$IMAGE was built by $builder, not the classic builder"; exit 1; }
log "built in $((SECONDS - step_started)) s, by the $builder builder"

# A plain `docker build .` with BuildKit: the default target, which pytest compares with the
# cpu image (tests/docker/test_docker_smoke.py). The classic builder would walk the gpu stages
# here (docs/docker.md).
step "BuildKit: docker build -t $DEFAULT_IMAGE . (no target)"
DOCKER_BUILDKIT=1 build "$work/build-default.log" \
  "$DOCKER" build "${build_args[@]+"${build_args[@]}"}" -t "$DEFAULT_IMAGE" . || exit 1
no_cuda_image "after the BuildKit build with no target"
builder=$(builder_of "$DEFAULT_IMAGE")
# Otherwise the check of the classic build above could not tell the builders apart.
[ "$builder" = buildkit ] || { log "$DEFAULT_IMAGE was built by $builder, not BuildKit"; exit 1; }
log "built in $((SECONDS - step_started)) s, by $builder"

step "docker image ls"
"$DOCKER" image ls

step "pytest tests/docker"
port=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CNNSERVE_DOCKER_SMOKE=1 CNNSERVE_DOCKER_CLI="$DOCKER" CNNSERVE_IMAGE="$IMAGE" \
  CNNSERVE_DEFAULT_IMAGE="$DEFAULT_IMAGE" CNNSERVE_PORT="$port" \
  "$BIN/python" -m pytest tests/docker -v -rP -p no:cacheprovider
