# Two entry points (see README): `make check` and `make test` (`make doctor` too).
# Each creates .venv on first use; later runs reuse it until requirements change.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv doctor check test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/*.txt scripts/install_venv.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install_venv.sh
	touch $(STAMP)

check: $(STAMP)
	$(BIN)/vllm-ep-kit check

doctor: $(STAMP)
	$(BIN)/vllm-ep-kit doctor

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
