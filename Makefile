# likeness: `make demo` and `make test` set up what they need (.venv) and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.likeness-installed
# The Docker image's environment (docker/image-pins.txt: torch's CUDA build, xformers, bitsandbytes)
# with the test tools on top; CI runs the end-to-end tests on it, on the CPU.
IMAGE_VENV := .venv-image
IMAGE_STAMP := $(IMAGE_VENV)/.likeness-installed
# pytest workers: the suite is CPU-bound; CI machines have 2 cores.
JOBS ?= 2

.PHONY: install image-venv demo test test-image lint bench clean

install: $(STAMP)

# Re-runs only when the dependencies or the install script change.
$(STAMP): pyproject.toml docker/install.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PYTHON=$(BIN)/python docker/install.sh
	touch $(STAMP)

image-venv: $(IMAGE_STAMP)

# The image installs EXTRAS=cloud as a package; here it is editable, so the tests run this checkout.
$(IMAGE_STAMP): pyproject.toml docker/install.sh docker/image-pins.txt
	test -x $(IMAGE_VENV)/bin/python || $(PYTHON) -m venv $(IMAGE_VENV)
	PYTHON=$(IMAGE_VENV)/bin/python STACK=image EXTRAS=cloud TEST_EXTRAS=test docker/install.sh
	touch $(IMAGE_STAMP)

demo: install
	$(BIN)/likeness demo --out demo-out

test: install lint
	$(BIN)/python -m pytest -n $(JOBS) -q

# On the image's environment: every module imports, the GPU stack is the pinned one and is chosen
# only on CUDA, and the end-to-end tests (marked `image`) pass on the CPU.
test-image: image-venv
	LIKENESS_IMAGE_ENV=1 $(IMAGE_VENV)/bin/python -m pytest -n 0 -q -p no:cacheprovider -m image

lint: install
	$(BIN)/ruff check engine tui tests bench
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.train_bench
	$(BIN)/python -m bench.prep_bench
	$(BIN)/python -m bench.placement_bench

clean:
	rm -rf $(VENV) $(IMAGE_VENV) demo-out .pytest_cache .ruff_cache
