# One entry point for people and CI. Every target builds its own virtual environment.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo/bucket

# What `make demo` prints is what it runs: commands that run as written from the checkout
# (tests/test_readme_commands.py runs them on a demo tree of its own).
DEMO_SELECT = $(BIN)/warehouse select --bucket file://$(DEMO_DIR) --group training --modality xray --positive
DEMO_STATUS = $(BIN)/warehouse status --bucket file://$(DEMO_DIR)
DEMO_RELEASE = $(BIN)/warehouse select --bucket file://$(DEMO_DIR) --group training --modality xray --positive --release demo-xray-positive

.PHONY: help venv venv-dev demo test lint format docs bench graphs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The project itself is installed in editable mode, so `bonobo run warehouse/<graph>.py` can
# import the `warehouse` package from any working directory.
$(VENV)/.runtime: requirements.txt pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.runtime

venv: $(VENV)/.runtime  ## runtime virtual environment
venv-dev: $(VENV)/.dev  ## runtime + test and lint tools

demo: $(VENV)/.runtime  ## generate a synthetic upload tree in demo/bucket and run the three graphs on it
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-processed $(DEMO_DIR)-centres.txt
	$(BIN)/python -m warehouse.synthetic --output $(DEMO_DIR) --demo
	mkdir -p $(DEMO_DIR)-processed  # a local store must exist before anything writes it
	$(BIN)/bonobo run warehouse/warehouseloader.py --env WAREHOUSE_BUCKET=file://$(DEMO_DIR)
	$(BIN)/bonobo run warehouse/submittingcentres.py --env WAREHOUSE_BUCKET=file://$(DEMO_DIR) > $(DEMO_DIR)-centres.txt
	$(BIN)/bonobo run warehouse/dataprocess.py --env WAREHOUSE_BUCKET=file://$(DEMO_DIR)
	@echo
	@echo "Warehouse written to $(DEMO_DIR)/:"
	@cd $(DEMO_DIR) && for folder in $$(find training validation -mindepth 1 -maxdepth 1 -type d | sort); do \
		echo "  $$folder/  $$(ls $$folder | wc -l) patients, $$(find $$folder -type f | wc -l) files"; done
	@echo "One image, its metadata, and the run report:"
	@cd $(DEMO_DIR) && find training/xray -name '*.dcm' | sort | head -n 1 | sed 's/^/  /'
	@cd $(DEMO_DIR) && find training/xray-metadata -name '*.json' | sort | head -n 1 | sed 's/^/  /'
	@cd $(DEMO_DIR) && find reports/warehouseloader -name '20*.json' | sort | tail -n 1 | sed 's/^/  /'
	@echo "Submitting centres of the configured raw prefixes (also in $(DEMO_DIR)-centres.txt):"
	@sed 's/^/  /' $(DEMO_DIR)-centres.txt
	@echo "Dashboard tables in $(DEMO_DIR)-processed/; latest.csv names the newest batch:"
	@tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed 's/^/  /'
	@echo "Image catalogue: one row per filed image, $$(find $(DEMO_DIR)/catalogue/images -name '*.parquet' | wc -l) part(s) in $(DEMO_DIR)/catalogue/images/ ($$(cat $(DEMO_DIR)/catalogue/images/*.parquet | wc -c) bytes);"
	@echo "  the whole catalogue in the batch: $$(tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed -n 's/^images,//p') ($$($(BIN)/python -c 'import sys, pyarrow.parquet as pq; print(pq.read_metadata(sys.argv[1]).num_rows)' $(DEMO_DIR)-processed/$$(tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed -n 's/^images,//p' | sed 's/\.csv$$/.parquet/')) rows)"
	@batch=$$(tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed -n 's|^dashboard,\(.*\)/dashboard.html$$|\1|p'); \
		echo "Hold-out certificate of the batch, $(DEMO_DIR)-processed/$$batch/holdout.json (top of dashboard.html):"; \
		$(BIN)/python -c 'import json, sys; c = json.load(open(sys.argv[1])); print("  holds:", c["holds"], "| violations:", c["violations"], "| images checked:", c["catalogue"]["rows"], "|", c["digest"])' $(DEMO_DIR)-processed/$$batch/holdout.json
	@echo "  its series table: $$($(BIN)/python -c 'import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print(f"{t.num_rows} series;", ", ".join(f"{f} {sum(t[f].to_pylist())}" for f in ("complete_volume", "gaps", "irregular_spacing", "mixed_orientation", "duplicate_positions", "single_image", "multi_frame")))' $(DEMO_DIR)-processed/$$(tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed -n 's/^series,//p'))"
	@echo "A selection (every command runs from $(BIN)/): $(DEMO_SELECT)"
	@$(DEMO_SELECT) | sed 's/^/  /'
	@echo "The same selection written once as a release (--release NAME --download DIR fetches exactly it later): $(DEMO_RELEASE)"
	@$(DEMO_RELEASE) | sed 's/^/  /'
	@echo "The state of the warehouse: $(DEMO_STATUS)"
	@$(DEMO_STATUS) | sed 's/^/  /'
	@echo
	@echo "Pages to open in a browser (self-contained, no network needed):"
	@tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed -n 's/^dashboard,/  internal dashboard: $(subst /,\/,$(abspath $(DEMO_DIR)))-processed\//p'
	@tr -d '\r' < $(DEMO_DIR)-processed/latest.csv | sed -n 's/^public,/  public statistics:  $(subst /,\/,$(abspath $(DEMO_DIR)))-processed\//p'
	@echo "  loader run report:  $$(find $(abspath $(DEMO_DIR))/reports/warehouseloader -name '20*.html' | sort | tail -n 1)"

# The page tests drive headless Chromium: Debian's chromium and chromium-driver, installed
# here when missing (as root, or through sudo), so a fresh machine and CI need nothing by hand.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test: $(VENV)/.dev  ## run the whole test suite (installs headless Chromium when missing)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "installing chromium and chromium-driver for the page tests"; \
		$(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; fi
	$(BIN)/python -m pytest

lint: $(VENV)/.dev  ## check formatting, lint and types (changes nothing)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(VENV)/.dev  ## format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(VENV)/.runtime  ## write docs/reference/ again from the code (reasons, environment, config, catalogue)
	$(BIN)/python docs/generate.py

bench: $(VENV)/.dev  ## run the S3 benchmark, then the hold-out checks' CPU per image (see README, Performance)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.checks

clean:  ## remove the virtual environment and generated data
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
