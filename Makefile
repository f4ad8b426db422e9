# Two entry points (see README): `make check` and `make test` (`make doctor` too).
# Each creates its venv on first use; later runs reuse it until requirements change.
# .venv holds the primary vLLM release (the one requirements/common.txt includes);
# .venv-$(SECOND_VLLM) the second tested release, for make test's second leg.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
PRIMARY_VLLM := $(shell sed -n 's/^-r vllm-\(.*\)\.txt$$/\1/p' requirements/common.txt)
SECOND_VLLM  ?= 0.32.0
SECOND_VENV  := .venv-$(SECOND_VLLM)
SECOND_STAMP := $(SECOND_VENV)/.installed
# Multi-rank tests share persistent rank pools (one per world size and process-group
# backend); a test whose outcome needs processes of its own says so with
# @pytest.mark.fresh_ranks(reason) (docs/harness.md).
# Two pytest workers (pytest-xdist; the CI machine has 2 cores), each module on one worker
# (its rank pools and module fixtures stay with it). Both: docs/contributing.md.
POOL_ARGS ?= --ep-pool -n 2 --dist loadfile
# JUNIT_DIR=DIR: each leg writes its JUnit report there (leg1-junit.xml, leg2-junit.xml),
# for scripts/junit_report.py or a CI's test view.
JUNIT_DIR ?=
junit = $(if $(JUNIT_DIR),--junitxml=$(JUNIT_DIR)/$(1)-junit.xml)

.PHONY: venv venvs doctor check test test-primary test-second test-fast test-releases mutants mutation mutation-ratchet lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/*.txt scripts/install_venv.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install_venv.sh
	touch $(STAMP)

$(SECOND_STAMP): pyproject.toml requirements/*.txt scripts/install_venv.sh
	PYTHON=$(PYTHON) VENV=$(SECOND_VENV) VLLM_RELEASE=$(SECOND_VLLM) bash scripts/install_venv.sh
	touch $(SECOND_STAMP)

check: $(STAMP)
	$(BIN)/vllm-ep-kit check

doctor: $(STAMP)
	$(BIN)/vllm-ep-kit doctor

# An affected vLLM release's sources, for the hotfix tests (docs/patches.md).
AFFECTED_VLLM := 0.19.1
AFFECTED_DIR  := .cache/vllm-$(AFFECTED_VLLM)
AFFECTED_DEPS := diskcache==5.6.3 gguf==0.19.0 openai-harmony==0.0.8
AFFECTED_ENV  := VLLM_EP_KIT_AFFECTED_VLLM=$(CURDIR)/$(AFFECTED_DIR)

$(AFFECTED_DIR)/VERSION: scripts/fetch_vllm_sources.sh | $(STAMP)
	bash scripts/fetch_vllm_sources.sh $(AFFECTED_VLLM) $(AFFECTED_DIR) $(AFFECTED_DEPS)

# Everything make test installs: both venvs and the affected release's sources (defined
# after AFFECTED_DIR: make expands a rule's prerequisites where it reads the rule). With -j
# the second venv builds beside the first (.ci/run: make -j 2 venvs).
venvs: $(STAMP) $(SECOND_STAMP) $(AFFECTED_DIR)/VERSION

# Both legs run even when the first fails; make test fails if either does (pytest's exit 5,
# no tests collected, included).
test: $(STAMP) $(SECOND_STAMP) $(AFFECTED_DIR)/VERSION
	@rc=0; \
	echo "make test: leg 1 of 2: vLLM $(PRIMARY_VLLM) ($(VENV)), the whole suite"; \
	$(MAKE) --no-print-directory test-primary || rc=1; \
	echo "make test: leg 2 of 2: vLLM $(SECOND_VLLM) ($(SECOND_VENV)), the tests that touch vLLM"; \
	$(MAKE) --no-print-directory test-second || rc=1; \
	[ $$rc = 0 ] && echo "make test: both legs passed" || echo "make test: a leg failed (above)"; \
	exit $$rc

test-primary: $(STAMP) $(AFFECTED_DIR)/VERSION
	$(AFFECTED_ENV) $(BIN)/python -m pytest tests $(POOL_ARGS) $(call junit,leg1) $(PYTEST_ARGS)

# The second leg: the tests that reach the installed vLLM, which the `vllm` marker names (a
# test that imports vLLM without it fails the collection: tests/vllm_marker.py). The tests
# of an affected release's fetched sources (`affected_release`) do not read the installed
# vLLM: they run in the first leg only.
test-second: $(SECOND_STAMP)
	$(SECOND_VENV)/bin/python -m pytest tests -m "vllm and not affected_release" $(POOL_ARGS) $(call junit,leg2) $(PYTEST_ARGS)

# The inner loop: every test that starts no vLLM rank and installs nothing (no second
# venv, no release sources), on the primary venv.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not vllm" $(POOL_ARGS) $(PYTEST_ARGS)

# Lint and types, as .pre-commit-config.yaml runs them; every tool runs, then the
# target fails if any found something.
lint: $(STAMP)
	@rc=0; \
	$(BIN)/ruff check . || rc=1; \
	$(BIN)/ruff format --check . || rc=1; \
	$(BIN)/typos || rc=1; \
	$(BIN)/python scripts/check_noqa.py || rc=1; \
	$(BIN)/mypy || rc=1; \
	$(BIN)/lint-imports --no-cache || rc=1; \
	[ $$rc = 0 ] && echo "make lint: clean" || echo "make lint: findings above"; \
	exit $$rc

# The hotfix tests over every release the patches document (each asserts what that release
# carries: tests/patches/releases.py); sources cached in .cache/ between runs.
RELEASES := 0.18.0 0.19.1 0.20.0 0.21.0 0.22.0
RELEASE_DIRS := $(foreach v,$(RELEASES),.cache/vllm-$(v))

.cache/vllm-%/VERSION: scripts/fetch_vllm_sources.sh | $(STAMP)
	bash scripts/fetch_vllm_sources.sh $* .cache/vllm-$* $(AFFECTED_DEPS)

test-releases: $(STAMP) $(foreach d,$(RELEASE_DIRS),$(d)/VERSION)
	VLLM_EP_KIT_AFFECTED_VLLM=$(subst $(eval) ,:,$(foreach d,$(RELEASE_DIRS),$(CURDIR)/$(d))) \
		$(BIN)/python -m pytest tests/patches $(PYTEST_ARGS)

# Each known bug planted in a copy of the tree; its tests must fail (docs/contributing.md).
mutants: $(STAMP) $(AFFECTED_DIR)/VERSION
	$(AFFECTED_ENV) $(BIN)/python scripts/mutants.py

# Mutation testing with mutmut ([tool.mutmut] in pyproject.toml): every mutant of the
# modules in scope against the tests that reach it, two at a time; then the score per
# module, each survivor with its diff, into docs/assets/mutation/report.json. mutmut keeps
# its results in mutants/ and re-tests only what changed since.
MUTATION_REPORT := docs/assets/mutation/report.json
mutation: $(STAMP)
	$(BIN)/mutmut run --max-children 2
	$(BIN)/python scripts/mutation_report.py --out $(MUTATION_REPORT)

# The ratchet .ci/run runs: only the modules in scope whose text moved since the kept report
# are re-run, and a score below the kept one fails (minutes, not the full run's hour).
mutation-ratchet: $(STAMP)
	$(BIN)/python scripts/mutation_ratchet.py --report $(MUTATION_REPORT)

clean:
	rm -rf $(VENV) $(SECOND_VENV)
