# Set-up and checks. `make demo` and `make test` each work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/avi demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n 2 -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -n 2 -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
