# likeness: `make demo` and `make test` set up what they need (.venv) and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.likeness-installed
# pytest workers: the suite is CPU-bound; CI machines have 2 cores.
JOBS ?= 2

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Re-runs only when the dependencies or the install script change.
$(STAMP): pyproject.toml docker/install.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PYTHON=$(BIN)/python docker/install.sh
	touch $(STAMP)

demo: install
	$(BIN)/likeness demo --out demo-out

test: install lint
	$(BIN)/python -m pytest -n $(JOBS) -q

lint: install
	$(BIN)/ruff check engine tui tests bench
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.train_bench
	$(BIN)/python -m bench.prep_bench
	$(BIN)/python -m bench.placement_bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
