# detcli developer targets. `make demo` and `make test` are README's first commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := runs/demo
# the demo keeps its generated toy data inside the repo's runs/ folder
DEMO_ENV := DETCLI_CACHE=$(CURDIR)/runs/cache
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# toy train -> eval -> predict -> export, all on CPU
demo: install
	rm -rf $(DEMO)
	$(DEMO_ENV) $(BIN)/detcli train experiment=toy hydra.run.dir=$(DEMO)/train
	$(DEMO_ENV) $(BIN)/detcli eval checkpoint=$(DEMO)/train/checkpoints/best.pt hydra.run.dir=$(DEMO)/eval
	$(DEMO_ENV) $(BIN)/detcli predict checkpoint=$(DEMO)/train/checkpoints/best.pt "source=runs/cache/toy_*/val" \
		hydra.run.dir=$(DEMO)/predict
	$(DEMO_ENV) $(BIN)/detcli export checkpoint=$(DEMO)/train/checkpoints/best.pt format=onnx hydra.run.dir=$(DEMO)/export

# two workers (pytest-xdist) on the non-slow cases, then the wall-clock ones alone (marker `serial`)
test: install
	$(BIN)/python -m pytest -q -m "not slow and not serial" -n 2 --dist worksteal $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -m "serial and not slow" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff, and the package's import layers (import-linter, [tool.importlinter] in pyproject.toml)
lint: install
	$(BIN)/ruff check detcli tests scripts
	$(BIN)/lint-imports

# the manual (docs/) as a site in site/; --strict: any warning (a broken link, a page left out of nav) fails
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# the benchmarks' peers (ultralytics) are the optional `bench` extra, installed here only
bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_train.py --head yolox
	$(BIN)/python scripts/bench_infer.py
	$(BIN)/python scripts/bench_infer.py --head yolox
	$(BIN)/python scripts/bench_memory.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_accuracy.py

clean:
	rm -rf $(VENV) runs build dist site *.egg-info
