#!/usr/bin/env bash
# The test command (README: `make test`): set up, start services, run pytest.
# Extra arguments go to pytest, e.g. `make test ARGS="-k engine"`.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit $?
scripts/services.sh || exit $?
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests"
  rc=0
fi
exit "$rc"
