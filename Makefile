VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean test-fast test-cluster mutate

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/cicb up

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy pipeline workers bench

test: lint typecheck
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# wrk for the receiver; rabbitmq-server for the RabbitMQ part, installed as .ci/run does
# (RUNLEVEL=1: the system's service is not started).
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null || \
		(apt-get update -qq && RUNLEVEL=1 apt-get install -y -qq rabbitmq-server)
	$(PY) -m bench.run

# The fast test tiers: unit tests and the in-process worker tier (no subprocess stacks).
test-fast: $(STAMP)
	$(PY) -m pytest tests/pipeline tests/workers -q

# The cluster scenarios: Valkey with Sentinel, receivers and workers on test hosts built
# from network namespaces (tests/cluster; needs root, ip and iptables).
test-cluster: $(STAMP)
	$(PY) -m pytest tests/cluster -m cluster -v

# Mutation testing (mutmut, [tool.mutmut] in pyproject.toml) of the modules that keep the
# delivery promises, against the fast tiers; results in mutants/, survivors listed at the end.
# Not part of `make test`. Incremental: a second run only tests what changed.
mutate: $(STAMP)
	$(PY) mutate/run.py run --max-children 2
	$(PY) mutate/run.py report
