#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: the system packages the project needs, a
# virtual environment in .venv, and the project with its server and dev extras. Re-running
# it costs a few seconds: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_needed=()
command -v chromium >/dev/null 2>&1 || apt_needed+=(chromium fonts-dejavu-core)
command -v redis-server >/dev/null 2>&1 || apt_needed+=(redis-server)
command -v pg_ctlcluster >/dev/null 2>&1 || apt_needed+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || apt_needed+=(docker-compose)
if ((${#apt_needed[@]})); then
  echo "setup: installing system packages: ${apt_needed[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/tmp/slicerank-apt.log || { cat /tmp/slicerank-apt.log; exit 1; }
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.slicerank-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing slicerank and its dependencies into .venv (first time: several minutes)"
  .venv/bin/pip install -q --upgrade pip
  if ! .venv/bin/pip install -q -e ".[server,dev]" >/tmp/slicerank-pip.log 2>&1; then
    grep -v "is ignored: it is neither" /tmp/slicerank-pip.log; echo "setup: pip install failed"; exit 1
  fi
  rm -f .venv/.slicerank-*
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/slicerank)"
