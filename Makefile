# fleetops: `make demo` runs the main job on the embedded default; `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration bench chaos clean dashboard-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The dashboard's chart library, uPlot, from its npm package into a gitignored folder;
# the dashboard serves it from there (and draws plain SVG charts when it is missing).
DASHBOARD_DEPS := .dashboard-deps
UPLOT_VERSION := 1.6.32
UPLOT := $(DASHBOARD_DEPS)/node_modules/uplot/dist/uPlot.esm.js

$(UPLOT):
	npm install --no-audit --no-fund --prefix $(DASHBOARD_DEPS) uplot@$(UPLOT_VERSION)
	touch $(UPLOT)

dashboard-deps: $(UPLOT)

DEMO_SPEC := examples/support-desk/fleet.yaml

demo: $(STAMP) $(UPLOT)
	$(BIN)/fleetops load $(DEMO_SPEC) --workload support_desk.workload:generate_requests \
		--target intake/classify --duration 60s --rate 5 --kill-worker-at 0.5

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck $(UPLOT)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/fleetops bench queue --tasks 20000 --inflight 1000 --work sleep:10ms --store sqlite --json

chaos: $(STAMP)
	$(BIN)/fleetops chaos kill-workers --tasks 2000 --workers 4 --kill-every 1s --json

clean:
	rm -rf $(VENV) .fleetops .pytest_cache .mypy_cache .ruff_cache artifacts $(DASHBOARD_DEPS)
