#!/usr/bin/env bash
# `make compose-check`: docker-compose.yml brought up and exercised end to end on this machine.
#   1. the test environment (.venv) and, without a Docker Engine, podman's Docker-compatible
#      API (scripts/container-host.sh);
#   2. the images: built from Debian and PyPI (scripts/images-offline.sh; cached layers make a
#      second run quick), or the registry images with COMPOSE_CHECK_IMAGES=registry;
#   3. tests/slicerank/test_compose_stack.py: up, provision, rankings through Label Studio to
#      the scheduler, a CPU training and its predictions, container restarts, down -v.
# COMPOSE_CHECK_PRESET=ci (what CI runs, a few minutes): only the PostgreSQL, Redis and Label
# Studio images, and only the test that needs no more than those (their data across restarts).
# Extra arguments go to pytest. Timings: the lines "compose-check ..." at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
start=$(date +%s)
if [ -z "${DOCKER_HOST:-}" ] && ! { [ -S /var/run/docker.sock ] && command -v docker >/dev/null \
    && docker info >/dev/null 2>&1; }; then
  eval "export $(scripts/container-host.sh | tail -1)"
fi
echo "compose-check: engine at ${DOCKER_HOST:-/var/run/docker.sock}"
images=${COMPOSE_CHECK_IMAGES:-offline}
preset=${COMPOSE_CHECK_PRESET:-full}
tests=(tests/slicerank/test_compose_stack.py)
case "$preset" in
  full) ;;
  ci) export IMAGES="postgres redis label-studio"
      tests=("tests/slicerank/test_compose_stack.py::test_label_studio_postgres_and_redis_keep_their_data_across_restarts") ;;
  *) echo "compose-check: COMPOSE_CHECK_PRESET=$preset: use full or ci" >&2; exit 2 ;;
esac
if [ "$images" = offline ]; then
  scripts/images-offline.sh
fi
built=$(date +%s)
echo "compose-check: images ($images) ready in $((built - start)) s"
SLICERANK_COMPOSE_CHECK=1 SLICERANK_COMPOSE_IMAGES=$images \
  .venv/bin/python -m pytest "${tests[@]}" -v -s -p no:cacheprovider "$@"
echo "compose-check ($preset): passed; images $((built - start)) s, stack $(($(date +%s) - built)) s"
