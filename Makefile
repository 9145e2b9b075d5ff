# The two commands of the README. Both set themselves up on first use (scripts/setup.sh).
# The deployment: images-offline (every image from Debian and PyPI alone) and compose-check
# (docker-compose.yml up and exercised end to end); docs/guide/deploy.md.
.PHONY: demo test lint setup images-offline compose-check container-host

demo:
	scripts/setup.sh
	scripts/services.sh
	.venv/bin/slicerank demo $(ARGS)

test:
	scripts/test.sh $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

setup:
	scripts/setup.sh

# podman as the container engine on a Debian machine without Docker (idempotent).
container-host:
	scripts/container-host.sh

images-offline:
	scripts/images-offline.sh

compose-check:
	scripts/compose-check.sh $(ARGS)
