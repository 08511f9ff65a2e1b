# agoranet: `make demo` runs the embedded default, `make test` runs every check.
# Both create .venv and install what they need; nothing is installed globally.
# Tests run one torch thread per process: xdist workers and node subprocesses share 2 cores.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := .tools
TINY   := models/tiny
# The CPU build of torch that lies on this machine; GPU users install their own torch
# first and `pip install -e '.[hf]'` keeps it (the package itself does not pin torch).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
ANVIL  := $(TOOLS)/.anvil-installed
PYTEST_WORKERS ?= auto

.PHONY: install model anvil contracts lint test demo bench bench-gateway mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[hf,chain,dev]'
	touch $(STAMP)

install: $(STAMP)

# Foundry's anvil (local dev chain) from npm, into the project's tool folder.
$(ANVIL):
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund @foundry-rs/anvil
	touch $(ANVIL)

anvil: $(ANVIL)

# Rebuilt when the code that generates it changes (its corpus, template, training); the
# smaller variant the tests build on demand shares its tokenizer, so it goes too.
$(TINY)/model.safetensors: $(wildcard src/agoranet/tinymodel/*.py) | $(STAMP)
	rm -rf $(TINY)-small
	$(BIN)/agoranet model tiny $(TINY) --force

model: $(TINY)/model.safetensors

# The contracts' ABIs and bytecode shipped as package data, compiled from their Vyper sources
# (commit the result; tests/chain/test_artifacts.py fails while they are stale).
contracts: $(STAMP)
	$(BIN)/python -m agoranet.chain.compiler --write

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src

test: $(STAMP) $(ANVIL) model lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

demo: $(STAMP) $(ANVIL) model
	$(BIN)/agoranet demo

bench: $(STAMP) model
	$(BIN)/python bench/node.py
	$(BIN)/python bench/adapters.py

# Mutation score of the money modules (slow, not part of `make test`): a table per module,
# exit 1 under 90 % killed. Select modules with MODULES=payer,ledger; MUTATION_JOBS mutants at once;
# MUTATION_ARGS=--resume finishes a cut-short run (--survivors-only re-checks the survivors).
MODULES ?=
MUTATION_JOBS ?= 2
MUTATION_ARGS ?=
mutation: $(STAMP) $(ANVIL) model
	OMP_NUM_THREADS=1 $(BIN)/python bench/mutation.py --jobs $(MUTATION_JOBS) $(if $(MODULES),--modules $(MODULES)) $(MUTATION_ARGS)

# LiteLLM's proxy, for comparison only: its own venv, never a dependency of agoranet.
.bench/litellm/bin/litellm:
	$(PYTHON) -m venv .bench/litellm
	.bench/litellm/bin/pip install --quiet "litellm[proxy]"

bench-gateway: $(STAMP) model .bench/litellm/bin/litellm
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) $(TOOLS) models .bench .pytest_cache .mypy_cache .ruff_cache
