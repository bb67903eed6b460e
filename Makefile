# The two set-up commands of the README. Each bootstraps .venv idempotently first.
.PHONY: demo test lint bootstrap

PYTEST_ARGS ?=
# The default suite on up to 4 pytest-xdist workers (one per core), each test file on one worker so a
# module's fixtures (a tiny trained run, an export) are built once; PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= auto

bootstrap:
	@scripts/bootstrap.sh

# The SDK's one command on the embedded elpv data set, for this machine's profile:
# `edgeclf demo` is `edgeclf build --profile auto --data elpv --out demo-out --backbones tf_efficientnet_lite0 --image-size 224` (finetune.unfreeze 2).
demo: bootstrap
	.venv/bin/edgeclf demo

# Lint and format check first (seconds), then the default test suite.
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	.venv/bin/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)
