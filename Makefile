# Two entry points (see README): `make check` and `make test` (`make doctor` too).
# Each creates .venv on first use; later runs reuse it until requirements change.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv doctor check test test-releases mutants lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/*.txt scripts/install_venv.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install_venv.sh
	touch $(STAMP)

check: $(STAMP)
	$(BIN)/vllm-ep-kit check

doctor: $(STAMP)
	$(BIN)/vllm-ep-kit doctor

# An affected vLLM release's sources, for the hotfix tests (docs/patches.md).
AFFECTED_VLLM := 0.19.1
AFFECTED_DIR  := .cache/vllm-$(AFFECTED_VLLM)
AFFECTED_DEPS := diskcache==5.6.3 gguf==0.19.0 openai-harmony==0.0.8

$(AFFECTED_DIR)/VERSION: scripts/fetch_vllm_sources.sh | $(STAMP)
	bash scripts/fetch_vllm_sources.sh $(AFFECTED_VLLM) $(AFFECTED_DIR) $(AFFECTED_DEPS)

test: $(STAMP) $(AFFECTED_DIR)/VERSION
	VLLM_EP_KIT_AFFECTED_VLLM=$(CURDIR)/$(AFFECTED_DIR) $(BIN)/python -m pytest tests $(PYTEST_ARGS)

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
	VLLM_EP_KIT_AFFECTED_VLLM=$(CURDIR)/$(AFFECTED_DIR) $(BIN)/python scripts/mutants.py

clean:
	rm -rf $(VENV)
