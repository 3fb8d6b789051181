# streamrec-embedder: every task a developer or CI runs. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUNDLE ?= models/streamrec-cnn-v2
CONFIG ?= training/configs/cnn5m-v2.toml
PROTO  := protos/streamrec/embedder/v1/embedder.proto
NODE_CLIENT := clients/node

.DEFAULT_GOAL := help
.PHONY: help run test lint typecheck pytest test-long proto node-deps data train bench bench-quick infinity-venv v1-bundle clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Serving install: no torch.
$(VENV)/.serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[serve]'
	touch $@

# Everything (training, benchmarks, dev tools, Ray for the bulk tests: ~+400 MB, ~20 s). torch goes first
# so nothing resolves a CUDA build.
$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[serve,train,bench,dev,ray]'
	touch $@ $(VENV)/.serve

run: $(VENV)/.serve  ## serve the committed default model (gRPC :50051, metrics :9000)
	$(VENV)/bin/streamrec-embedder serve --bundle $(BUNDLE)

test: lint typecheck pytest  ## ruff, mypy (strict on embedder/), every pytest test

lint: $(VENV)/.dev  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.dev  ## mypy: --strict on embedder/, defaults on training/ and benchmarks/
	$(VENV)/bin/mypy --strict embedder
	$(VENV)/bin/mypy training benchmarks

pytest: $(VENV)/.dev node-deps  ## every test but the slow ones (what is missing skips with one line)
	$(PY) -m pytest -m "not slow"

test-long: $(VENV)/.dev  ## the long suite: soak and other slow tests
	$(PY) -m pytest -m slow

proto: $(VENV)/.dev  ## regenerate the committed gRPC stubs from protos/
	$(PY) -m grpc_tools.protoc -Iprotos/streamrec --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

# The Node client's packages (@grpc/grpc-js, @grpc/proto-loader, buf) from the committed lockfile.
# Without npm the Node and buf tests skip (CI=true: fail), so this target only says so.
node-deps:  ## npm packages for the Node client test and buf (clients/node; skipped without npm)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) -s --no-print-directory $(NODE_CLIENT)/node_modules/.installed; \
	else echo "npm not found: the Node client and buf tests will skip (install Node.js 18+ and npm)"; fi

$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

data: $(VENV)/.dev  ## the long data stages: corpus, minimal pairs, teacher targets (cached, resumable)
	$(PY) -m training.train --config $(CONFIG) --stop-after teacher

train: $(VENV)/.dev  ## the whole offline job: corpus -> teacher -> train -> eval -> ONNX -> bundle
	$(PY) -m training.train --config $(CONFIG)

# The previous default model (v1), for comparisons: only the default bundle is kept under models/, the
# others live in git history. V1_COMMIT is the last commit whose models/ held v1.
V1_COMMIT ?= 35013be
V1_BUNDLE := .cache/models/streamrec-cnn-v1
v1-bundle: $(V1_BUNDLE)/manifest.json  ## extract models/streamrec-cnn-v1 from git history into .cache/models/
$(V1_BUNDLE)/manifest.json:
	mkdir -p .cache
	git archive $(V1_COMMIT) models/streamrec-cnn-v1 | tar -x -C .cache

bench: $(VENV)/.dev  ## full benchmark run (~23-32 min on 2 AVX-512 cores, ~41 on AVX2-only); results in benchmarks/results/
	$(VENV)/bin/streamrec-bench

bench-quick: $(VENV)/.dev  ## 2-minute benchmark smoke run
	$(VENV)/bin/streamrec-bench --quick

# The Infinity peer (`streamrec-bench infinity`) in a venv of its own: its pins must not touch ours.
# torch first, exactly this version (any other spec resolves a multi-GB CUDA build).
INFINITY_VENV ?= .venv-infinity
$(INFINITY_VENV)/.installed:
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install -q torch==2.13.0
	$(INFINITY_VENV)/bin/python -m pip install -q 'infinity-emb[server,torch]==0.0.78'
	touch $@

infinity-venv: $(INFINITY_VENV)/.installed  ## the Infinity peer's own venv (infinity-emb, torch CPU)

clean:  ## remove the venv and caches (keeps training caches in .cache/)
	rm -rf $(VENV) $(INFINITY_VENV) .pytest_cache .mypy_cache .ruff_cache $(NODE_CLIENT)/node_modules
