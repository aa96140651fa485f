# tfrs-monolith: `make test` runs the whole suite, `make demo` the main job.
# Both create .venv/ at the repository root and install into it.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo demo-kafka demo-batch bench data clean kafka-fetch soak

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[beam,serving,test,examples]"
	touch $(STAMP)

data: $(STAMP)
	$(PY) -c "import sys; sys.path.insert(0, 'examples'); import movielens; movielens.fetch_movielens()"

test: $(STAMP) data kafka-fetch
	$(PY) -m pytest -q

# The real-time loop on MovieLens-100K and the comparisons (file-log topics,
# local Beam runner, a local model server); DEMO_ARGS adds flags.
demo: $(STAMP)
	$(PY) examples/realtime.py $(DEMO_ARGS)

# The same through the project's own Kafka broker on 127.0.0.1.
demo-kafka: $(STAMP) kafka-fetch
	$(PY) examples/realtime.py --kafka $(DEMO_ARGS)

# Offline retrieval and ranking on MovieLens-100K (no streams).
demo-batch: $(STAMP)
	$(PY) examples/movielens.py

bench: $(STAMP) kafka-fetch
	$(PY) benchmarks/lookup.py
	$(PY) benchmarks/insert.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/patch.py
	$(PY) benchmarks/online.py
	$(PY) benchmarks/join.py
	$(PY) benchmarks/freshness.py
	$(PY) benchmarks/cluster.py
	$(PY) benchmarks/flood.py

# The live loop under load for SOAK_SECONDS with the trainer and the sidecar
# killed, the broker restarted and a new model version loaded; proves by
# counting that nothing was lost (a 60 s version runs in `make test`).
SOAK_SECONDS ?= 300
SOAK_RATE ?= 1000

soak: $(STAMP) kafka-fetch
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE) --out runs/soak

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# A real Apache Kafka broker (KRaft, 127.0.0.1 only) for tests and local runs:
# the jars come from Maven Central into .cache/kafka/lib (needs java and mvn).
KAFKA_PORT ?= 9092
KAFKA_DIR ?= runs/kafka

.PHONY: kafka-start kafka-stop

kafka-fetch: $(STAMP)
	$(PY) scripts/kafka_broker.py fetch

kafka-start: kafka-fetch
	$(PY) scripts/kafka_broker.py start --data-dir $(KAFKA_DIR) --port $(KAFKA_PORT)

kafka-stop:
	$(PY) scripts/kafka_broker.py stop --data-dir $(KAFKA_DIR)
