#!/usr/bin/env bash
# Runs the health checks of podman's running containers, each at its own interval, until
# killed. Podman hands health checks to systemd timers; a machine without systemd never runs
# them, so every container stays "starting" and compose's `depends_on: condition:
# service_healthy` waits forever. scripts/container-host.sh starts this loop there (pid in
# /run/podman/healthchecks.pid). Podman itself applies each check's timeout, retries and
# start period.
set -uo pipefail
tick=${HEALTHCHECK_TICK:-5}
declare -A interval last
while :; do
  now=$(date +%s)
  for id in $(podman ps -q --filter health=starting --filter health=healthy \
      --filter health=unhealthy 2>/dev/null); do
    if [ -z "${interval[$id]:-}" ]; then
      s=$(podman inspect --format '{{.Config.Healthcheck.Interval.Seconds}}' "$id" 2>/dev/null)
      s=${s%%.*}; [[ "$s" =~ ^[0-9]+$ ]] && [ "$s" -gt 0 ] || s=30
      interval[$id]=$s
    fi
    if (( now - ${last[$id]:-0} >= ${interval[$id]} )); then
      last[$id]=$now
      timeout 120 podman healthcheck run "$id" >/dev/null 2>&1 &
    fi
  done
  sleep "$tick"
done
