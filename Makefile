# Two commands do all set-up on a fresh machine with only Python 3.11+ and make:
#   make run    install into .venv if needed, then start the server on the defaults
#   make test   install, then lint, type-check and run the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint fmt clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m relay_app $(if $(CONFIG),--config $(CONFIG))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy relay_app
	$(VENV)/bin/hadolint Dockerfile

# Two parts: what does not measure time runs on TEST_WORKERS workers, a file to a worker at a
# time (a module's server stays one; Chromium files in two lanes, at most two browsers at once;
# tests/conftest.py), longest first; most of it waits on real time (audio, timeouts), so
# there are more workers than cores. Then the tests marked `serial` (tight time bounds,
# floods) run alone, so nothing else on the machine stretches what they measure.
# (pytest exits 5 when a part selects nothing, e.g. with a PYTEST_ARGS of one file.)
TEST_WORKERS ?= 3
PARALLEL := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
test: lint
	$(VENV)/bin/pytest $(PARALLEL) -m "not serial" --durations=10 $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(VENV)/bin/pytest -p no:xdist -m serial --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-output

docs/configuration.md: relay_app/core/config.py
	$(PY) -m relay_app.config > $@

docs/metrics.md: relay_app/endpoints/prometheus.py
	$(PY) -m relay_app.prometheus > $@

docs/config.example.json: relay_app/core/config.py
	$(PY) -m relay_app.config --example > $@
