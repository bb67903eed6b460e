# The two set-up commands of the README. Each bootstraps .venv idempotently first.
.PHONY: demo test bootstrap

PYTEST_ARGS ?=

bootstrap:
	@scripts/bootstrap.sh

# The SDK's one command on the embedded elpv data set, for this machine's profile.
demo: bootstrap
	.venv/bin/edgeclf build --profile auto --data elpv --out demo-out --backbones tf_efficientnet_lite0

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_ARGS)
