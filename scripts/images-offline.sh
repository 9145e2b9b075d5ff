#!/usr/bin/env bash
# `make images-offline`: every image docker-compose.yml needs, built from a Debian mirror and
# a PyPI mirror alone (no container registry). Tags: docker/debian/images.env.
#
#   1. a Debian bookworm base from debootstrap (minbase), imported as slicerank-debian:bookworm
#   2. PostgreSQL 15 and Redis 7 from Debian's packages (docker/debian/*/Dockerfile)
#   3. Label Studio 1.23.2 from PyPI
#   4. slicerank from ./Dockerfile on that base, PyTorch included
#
# Settings (environment):
#   CONTAINER_CLI        podman or docker (default: the engine behind DOCKER_HOST)
#   DEBIAN_MIRROR        default http://deb.debian.org/debian
#   DEBIAN_SECURITY      default http://deb.debian.org/debian-security
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   your PyPI mirror (passed to pip).
#       Left unset on a machine whose pip is configured with local (file://) indexes, those
#       are served to the build over http://127.0.0.1 first, so their wheels (PyTorch and
#       its CUDA libraries: gigabytes) are not downloaded again; https://pypi.org/simple last.
#   EXTRA_CA_CERTS       a PEM file of certificate authorities the builds must trust (a
#       TLS-inspecting proxy's). Default: those this host trusts beyond Debian's Mozilla set
#       (in /etc/ssl/certs/ca-certificates.crt but not /usr/share/ca-certificates/mozilla);
#       "none" for none. They go into the base image, and pip there uses the system bundle.
#   LOCAL_PYPI_PORT      port on 127.0.0.1 for those local indexes (default 3141)
#   REBUILD_BASE=1       debootstrap again even if the base image exists
#   IMAGES               which to build (default "postgres redis label-studio slicerank")
# Layers are cached: a second run rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
. docker/debian/images.env
BASE=slicerank-debian:bookworm
# The engine docker-compose will use: podman behind a podman socket (or none at all), else docker.
if [ -z "${CONTAINER_CLI:-}" ]; then
  case "${DOCKER_HOST:-}" in
    *podman*) CONTAINER_CLI=podman ;;
    "") if [ ! -S /var/run/docker.sock ] && command -v podman >/dev/null 2>&1; then
          CONTAINER_CLI=podman; else CONTAINER_CLI=docker; fi ;;
    *) CONTAINER_CLI=docker ;;
  esac
fi
CLI=$CONTAINER_CLI
IMAGES=${IMAGES:-postgres redis label-studio slicerank}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
step() { printf '\nimages-offline: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

# --- 1. the Debian base -------------------------------------------------------------------
if [ "${REBUILD_BASE:-0}" = 1 ] || ! $CLI image inspect "$BASE" >/dev/null 2>&1; then
  step "debootstrap bookworm from $DEBIAN_MIRROR"
  command -v debootstrap >/dev/null || { echo "images-offline: install debootstrap (scripts/container-host.sh)" >&2; exit 1; }
  rootfs=$(mktemp -d /var/tmp/slicerank-rootfs.XXXXXX)
  trap '$SUDO rm -rf "$rootfs"' EXIT
  $SUDO debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >/tmp/slicerank-debootstrap.log 2>&1 \
    || { tail -20 /tmp/slicerank-debootstrap.log >&2; exit 1; }
  $SUDO tee "$rootfs/etc/apt/sources.list" >/dev/null <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY bookworm-security main
SOURCES
  # Smaller, and no stale package lists: every Dockerfile runs apt-get update first.
  $SUDO rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  # Certificate authorities beyond Mozilla's: ca-certificates (installed by each image)
  # picks them up from /usr/local/share/ca-certificates.
  $SUDO mkdir -p "$rootfs/usr/local/share/ca-certificates"
  python3 scripts/host_ca_certs.py "${EXTRA_CA_CERTS:-}" \
    | $SUDO tee "$rootfs/usr/local/share/ca-certificates/slicerank-extra.crt" >/dev/null
  [ -s "$rootfs/usr/local/share/ca-certificates/slicerank-extra.crt" ] \
    || $SUDO rm "$rootfs/usr/local/share/ca-certificates/slicerank-extra.crt"
  # No services start inside an image build.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
  $SUDO chmod +x "$rootfs/usr/sbin/policy-rc.d"
  $SUDO tar -C "$rootfs" -c . | $CLI import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  $SUDO rm -rf "$rootfs"; trap - EXIT
fi

# --- the PyPI mirror the builds use ---------------------------------------------------------
if [ -z "${PIP_INDEX_URL:-}" ]; then
  # Local indexes from pip's configuration (file:///opt/pypi/simple ...), served over HTTP.
  mapfile -t local_dirs < <(pip3 config list 2>/dev/null | grep -E 'index-url' | grep -oE "file://[^' ]+" | sed 's|^file://||' || true)
  if ((${#local_dirs[@]})); then
    root=$(python3 -c 'import os,sys; print(os.path.commonpath(sys.argv[1:]))' "${local_dirs[@]%/}")
    [ "$root" != / ] || root=$(dirname "${local_dirs[0]%/}")
    # A fixed port: the index URLs are build arguments, and a different URL would rebuild
    # every pip layer. One already serving there (another build) is used as it is.
    port=${LOCAL_PYPI_PORT:-3141}
    if ! curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1; then
      python3 -m http.server --bind 127.0.0.1 --directory "$root" "$port" >/dev/null 2>&1 &
      server=$!
      trap 'kill $server 2>/dev/null || true' EXIT
    fi
    urls=()
    for d in "${local_dirs[@]}"; do urls+=("http://127.0.0.1:$port/${d#"$root"/}"); done
    export PIP_INDEX_URL=${urls[0]}
    # First-listed wins a tie between equal wheels: local before pypi.org.
    export PIP_EXTRA_INDEX_URL="${urls[*]:1} https://pypi.org/simple"
    export PIP_TRUSTED_HOST=127.0.0.1
    for _ in $(seq 50); do curl -fs "${PIP_INDEX_URL%/}/" >/dev/null && break; sleep 0.1; done
    echo "images-offline: local wheels from $root served at http://127.0.0.1:$port"
  fi
fi
pip_args=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple}"
  --build-arg "PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL:-}"
  --build-arg "PIP_TRUSTED_HOST=${PIP_TRUSTED_HOST:-}")

build() {  # build TAG CONTEXT [DOCKERFILE] [more build args...]
  local tag=$1 context=$2; shift 2
  step "$tag"
  # Host network: the build reaches a mirror on 127.0.0.1 as well as a remote one.
  $CLI build --network host --build-arg "BASE_IMAGE=$BASE" -t "$tag" "$@" "$context"
}
wanted() { [[ " $IMAGES " == *" $1 "* ]]; }
if wanted postgres; then build "$POSTGRES_IMAGE" docker/debian/postgres; fi
if wanted redis; then build "$REDIS_IMAGE" docker/debian/redis; fi
if wanted label-studio; then
  build "$LABEL_STUDIO_IMAGE" docker/debian/label-studio "${pip_args[@]}"
fi
if wanted slicerank; then build "$SLICERANK_IMAGE" . -f Dockerfile "${pip_args[@]}"; fi
step "done: $IMAGES"
