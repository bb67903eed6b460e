# The two set-up commands of the README. Each bootstraps .venv idempotently first.
.PHONY: demo test bootstrap

PYTEST_ARGS ?=

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/edgeclf demo --out demo-out

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_ARGS)
