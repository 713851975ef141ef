# convhub: `make run` and `make test` do all set-up themselves (README).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat requirements.txt requirements.lock pyproject.toml scripts/setup_*.sh 2>/dev/null | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup system test test-all run bench soak tune clean
setup: $(STAMP)

$(STAMP):
	bash scripts/setup_system.sh
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); [ "$$free" -ge 10 ] || \
	  echo "convhub setup: WARNING only $${free} GB free here; .venv needs ~9 GB (torch 2.14.1 from the local store is the CUDA build, 5.5 GB with its nvidia-* wheels)" >&2
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -r requirements.txt -c requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	bash scripts/setup_litert.sh $(VENV)
	$(BIN)/python -m compile.aarch64 || echo "convhub setup: aarch64 runtime not prepared; aarch64 tests will skip"
	rm -f $(VENV)/.stamp-* && touch $@

# the default suite (~20 min on 2 cores); slow jobs are their own targets
test: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the main job: the inference service on the embedded default model
run: setup
	$(BIN)/convhub serve --model efficientnet-lite0 --backend auto --host 127.0.0.1 --port 8000

bench: setup
	$(BIN)/python benchmarks/hub_load.py

# bounded soak against a server started with `make run` (loopback only; stops by itself)
soak: setup
	$(BIN)/python scripts/load_test.py --url http://127.0.0.1:8000 --requests 3000 --duration 1200 --concurrency 8 --rss-every 15

# extend the shipped tuning databases in the background (log in tune-*.log); resumable
TUNE_MODEL ?= efficientnet-lite0
tune: setup
	nohup $(BIN)/convhub tune $(TUNE_MODEL) --target host --trials 2048 --max-trials-per-task 64 \
	  --db .cache/tune-$(TUNE_MODEL) --time-limit 7200 > tune-$(TUNE_MODEL).log 2>&1 &
	@echo "tuning $(TUNE_MODEL) in the background: tail -f tune-$(TUNE_MODEL).log"

clean:
	rm -rf $(VENV) build *.egg-info
