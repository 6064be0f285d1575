#!/usr/bin/env bash
# Prepare Docker for the compose tests (tests/e2e): install Docker and
# docker-compose from Debian when missing, start dockerd when none answers,
# build (once, then cached) a Debian base image without a registry, build a
# wheelhouse of xenlab and its dependencies on the host, and build the xenlab
# image from it. Exits 0 when the image is ready, 1 when Docker cannot be
# made to work here (the e2e tests then skip, saying why).
#
#   tools/ci-docker.sh            # XENLAB_IMAGE (default xenlab:latest)
#
# Cache: the base image's tarball in $XENLAB_CACHE (default /var/cache/xenlab
# as root, else ~/.cache/xenlab), so a new dockerd imports it instead of
# debootstrapping again.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${XENLAB_IMAGE:-xenlab:latest}
BASE_PACKAGES=python3,python3-venv,libatomic1,iproute2,mosquitto,ca-certificates,xenstore-utils
# The base image and its cached tarball are named after the package list: a
# package added here makes a new base instead of reusing one without it.
BASE_TAG=bookworm-$(printf %s "$BASE_PACKAGES" | sha256sum | cut -c1-8)
BASE_IMAGE=xenlab-base:$BASE_TAG
if [ "$(id -u)" = 0 ]; then CACHE=${XENLAB_CACHE:-/var/cache/xenlab}; else CACHE=${XENLAB_CACHE:-$HOME/.cache/xenlab}; fi
DOCKERD_LOG=${XENLAB_DOCKERD_LOG:-/var/log/xenlab-dockerd.log}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

log() { printf '==> ci-docker: %s\n' "$*" >&2; }
fail() { printf 'ci-docker: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - START ))s"; }
START=$(date +%s)

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || fail "missing ${missing[*]} and cannot install them (not root on Debian)"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || fail "no Docker daemon answers and only root may start one"
  log "starting dockerd (log: $DOCKERD_LOG)"
  # setsid: the daemon outlives this script and the CI step that ran it.
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -20 "$DOCKERD_LOG" >&2 || true
  fail "dockerd did not come up within 60s"
}

debian_mirror() {
  # The mirror apt uses here (deb822 sources or a classic sources.list).
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v security | head -1)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

base_image() {
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  local tarball=$CACHE/xenlab-base-$BASE_TAG.tar
  mkdir -p "$CACHE"
  if [ ! -s "$tarball" ]; then
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root"
    local root mirror
    root=$(mktemp -d /var/tmp/xenlab-base.XXXXXX)
    mirror=$(debian_mirror)
    log "debootstrapping bookworm from $mirror ($BASE_PACKAGES)"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" "$mirror" \
         >"$CACHE/debootstrap.log" 2>&1; then
      tail -20 "$CACHE/debootstrap.log" >&2
      rm -rf "$root"
      fail "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  log "importing $BASE_IMAGE from $tarball"
  docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
}

wheelhouse() {
  mkdir -p "$CACHE"
  # Every wheel the image needs (xenlab's dependencies and the build backend),
  # built or downloaded by the host's pip, whose cache makes a rerun quick.
  log "building the wheelhouse"
  rm -rf wheelhouse && mkdir -p wheelhouse
  if ! "$PY" -m pip wheel -q --wheel-dir wheelhouse ".[web]" "setuptools>=77" wheel >"$CACHE/pip-wheel.log" 2>&1; then
    tail -20 "$CACHE/pip-wheel.log" >&2
    fail "pip wheel failed (log: $CACHE/pip-wheel.log)"
  fi
  rm -f wheelhouse/xenlab-*.whl    # the image builds xenlab from the sources
}

build_image() {
  log "building $IMAGE"
  if ! docker build --build-arg BASE="$BASE_IMAGE" --build-arg WHEELHOUSE=wheelhouse \
       -t "$IMAGE" . >"$CACHE/docker-build.log" 2>&1; then
    tail -30 "$CACHE/docker-build.log" >&2
    fail "docker build failed (log: $CACHE/docker-build.log)"
  fi
  # The images earlier builds left untagged.
  docker image prune -f --filter label=org.opencontainers.image.title=xenlab >/dev/null
}

install_packages
start_dockerd
log "docker ready ($(elapsed))"
base_image
log "base image ready ($(elapsed))"
wheelhouse
build_image
log "$IMAGE ready in $(elapsed)"
