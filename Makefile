# The two commands of the README. Both set themselves up on first use (scripts/setup.sh).
.PHONY: demo test lint setup

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
