#!/usr/bin/env bash
# Prepares this Debian machine to run docker-compose.yml without Docker: podman (Debian's),
# runc, debootstrap, and podman's Docker-compatible API socket for Debian's docker-compose.
# Idempotent: each step is skipped when its result is already there. Prints the DOCKER_HOST
# to use on its last line. A host with Docker Engine needs none of this (docs/guide/deploy.md).
#
# Why each setting (all found on this kind of machine, a container with hybrid cgroups v1):
#   runtime = "runc"            crun refuses hybrid cgroups
#   cgroup_manager = "cgroupfs" no systemd to delegate cgroups to
#   default_ulimits = []        podman's default nofile limit is above this machine's hard
#                               limit, and setrlimit is refused
#   events_logger = "file"      no journald
# and without systemd, podman runs no health checks: scripts/podman-healthchecks.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

SOCKET=${PODMAN_SOCKET:-/run/podman/podman.sock}
CONF=/etc/containers/containers.conf
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
for pair in podman:podman runc:runc debootstrap:debootstrap docker-compose:docker-compose \
  catatonit:catatonit; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/libexec/podman/${pair%%:*}" ] \
    || [ -x "/usr/bin/${pair%%:*}" ] || need+=("${pair#*:}")
done
# containers on a user network find each other by name through this plugin
[ -x /usr/lib/cni/dnsname ] || need+=(golang-github-containernetworking-plugin-dnsname)
if ((${#need[@]})); then
  echo "container-host: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/tmp/slicerank-container-apt.log 2>&1 \
    || { cat /tmp/slicerank-container-apt.log >&2; exit 1; }
fi

# containers.conf: written once, with our marker; a file someone else wrote is left alone
# unless it lacks a setting, which is then reported.
if ! grep -qs "slicerank container-host" "$CONF"; then
  if [ -s "$CONF" ] && grep -qv '^\s*\(#\|$\)' "$CONF"; then
    for key in default_ulimits runtime cgroup_manager; do
      grep -qs "^\s*$key\s*=" "$CONF" \
        || echo "container-host: $CONF has no '$key' setting; see scripts/container-host.sh" >&2
    done
  else
    echo "container-host: writing $CONF" >&2
    $SUDO mkdir -p "$(dirname "$CONF")"
    $SUDO tee "$CONF" >/dev/null <<'CONFEOF'
# Written by slicerank container-host (scripts/container-host.sh explains each setting).
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONFEOF
  fi
fi

# The Docker-compatible API. Started in the background when nothing answers on the socket;
# `podman system service` runs until stopped (kill the pid in /run/podman/service.pid).
if ! curl -fsS --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; then
  echo "container-host: starting podman system service on $SOCKET" >&2
  $SUDO mkdir -p "$(dirname "$SOCKET")"
  $SUDO rm -f "$SOCKET"
  nohup $SUDO podman system service --time=0 "unix://$SOCKET" \
    >/tmp/slicerank-podman-service.log 2>&1 &
  echo $! | $SUDO tee "$(dirname "$SOCKET")/service.pid" >/dev/null
  for _ in $(seq 50); do
    curl -fsS --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS --unix-socket "$SOCKET" http://d/_ping >/dev/null \
    || { cat /tmp/slicerank-podman-service.log >&2; echo "container-host: no API" >&2; exit 1; }
fi
# Health checks: podman leaves them to systemd timers; without systemd, a loop runs them.
if [ ! -d /run/systemd/system ]; then
  pidfile="$(dirname "$SOCKET")/healthchecks.pid"
  if ! { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
    echo "container-host: no systemd; running podman's health checks in a loop" >&2
    nohup $SUDO "$PWD/scripts/podman-healthchecks.sh" >/dev/null 2>&1 &
    echo $! | $SUDO tee "$pidfile" >/dev/null
  fi
fi
echo "DOCKER_HOST=unix://$SOCKET"
