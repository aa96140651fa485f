# tfrs-monolith: `make test` runs the whole suite, `make demo` the main job.
# Both create .venv/ at the repository root and install into it.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench data clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

data: $(STAMP)
	$(PY) -c "import sys; sys.path.insert(0, 'examples'); import movielens; movielens.fetch_movielens()"

test: $(STAMP) data
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/movielens.py

bench: $(STAMP)
	$(PY) benchmarks/lookup.py
	$(PY) benchmarks/insert.py
	$(PY) benchmarks/training.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
