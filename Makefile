# The two commands the README promises work on a fresh machine with only python3:
#   make demo   -- a simulated operando experiment through the real pipeline
#   make test   -- the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all lint bench accuracy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lithoscope demo

# Tests run in TEST_JOBS processes (pytest-xdist): most of a test's time is spent
# waiting on sockets, subprocesses and disks, so two processes nearly halve the
# wall time even on two cores. TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_JOBS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_JOBS) -m ''

lint: $(STAMP)
	$(BIN)/ruff check service clients replay tests bench
	@# mypy resolves lithoscope.* through a tree of links (the editable install's
	@# import hook is invisible to it; see STYLE.md section 1).
	rm -rf build/mypy && mkdir -p build/mypy/lithoscope
	for p in service clients replay; do ln -s ../../../$$p build/mypy/lithoscope/$$p; done
	MYPYPATH=build/mypy $(BIN)/mypy -p lithoscope.service -p lithoscope.clients -p lithoscope.replay

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py --json bench/results/pipeline.json

# every simulated scenario through the real pipeline, scored against ground truth (~10 min)
accuracy: $(STAMP)
	$(BIN)/python bench/accuracy.py --json bench/results/accuracy.json
	$(BIN)/python bench/throughput.py --json bench/results/throughput.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
