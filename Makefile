# make setup : .venv from the lock file (idempotent)   make demo : the pipeline on the demo songs
# make test  : set-up + the test suite                 make lock : re-pin requirements.lock
# make serve : a local Prefect server + the scheduled retraining deployment (flows/retrain.py)
# make ui    : the MLflow UI on this project's store, http://127.0.0.1:5000
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
UV_VERSION := 0.13.9
UV     := $(VENV)/bin/uv
BIN    := $(VENV)/bin

PREFECT_PORT ?= 4200
MLFLOW_PORT  ?= 5000

.PHONY: setup browser demo test bench serve ui lock clean-data

setup: $(VENV)/.synced

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { echo "error: Python 3.11 is needed ('$(PYTHON)' is not it); install it or run 'make PYTHON=/path/to/python3.11'."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: requirements.lock | $(UV)
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	@touch $@

demo: setup
	$(BIN)/python -m stages.synth data/raw/demo
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@echo
	@$(BIN)/python -m stages.report --port $(MLFLOW_PORT) --html metrics/report.html

# Debian's chromium, for the test that opens the MLflow UI (tests/test_ui.py); nothing downloads a
# browser of its own. Without root the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the MLflow UI test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: chromium could not be installed; the MLflow UI test will be skipped."; \
	  else echo "note: chromium is not installed and installing it needs root; the MLflow UI test will be skipped."; fi; }

# the suite's files run on every core at once (one file's tests stay on one worker, so its
# fixtures are made once; the longest files first, tests/conftest.py); TEST_WORKERS=0 runs them
# one after another
TEST_WORKERS ?= auto
test: setup browser
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

ui: setup
	@echo "MLflow UI, the training runs: $$($(BIN)/python -m stages.report --ui-address --port $(MLFLOW_PORT))"
	@echo "(it takes a few seconds to answer; Ctrl-C stops it)"
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri sqlite:///mlflow.db

serve: setup
	PATH="$(abspath $(BIN)):$$PATH" PREFECT_SERVER_ANALYTICS_ENABLED=false \
		$(BIN)/python -m flows.retrain serve --local-server $(PREFECT_PORT)

bench: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/preprocess.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/train.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/flows.py

lock: | $(UV)
	$(UV) pip compile pyproject.toml --group dev --universal --python-version 3.11 \
		--generate-hashes --quiet -o requirements.lock
	sed -i 's/^#    uv pip compile.*/#    make lock/' requirements.lock
