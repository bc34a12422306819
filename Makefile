# flux-conduit: the conduit broker module, the compose testbed, the tests.
# `make` lists the targets.

PYTHON ?= python3
PKG_CONFIG ?= pkg-config
CC ?= cc
CFLAGS ?= -O2 -g
MODULE = module/conduit.so

# The compose testbed: NODES brokers (default 3; `make up NODES=N` remembers N).
COMPOSE ?= docker compose
PROJECT ?= flux-conduit
NODES ?= $(shell cat build/nodes 2>/dev/null || echo 3)
COMPOSE_FILE = $(if $(filter 3,$(NODES)),compose.yaml,build/compose.$(NODES).yaml)
DC = $(COMPOSE) -p $(PROJECT) -f $(COMPOSE_FILE)
WAIT_TIMEOUT ?= 300

.DEFAULT_GOAL := help
.PHONY: help module test lint up demo down logs shell bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-7s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: NODES=$(NODES) PROJECT=$(PROJECT) COMPOSE='$(COMPOSE)'"

module: $(MODULE) ## build module/conduit.so against the installed flux-core

$(MODULE): module/conduit.c
	@$(PKG_CONFIG) --exists flux-core || { echo "make: pkg-config finds no flux-core;" \
	    "install flux-core 0.88 or set PKG_CONFIG_PATH=<flux prefix>/lib/pkgconfig" >&2; exit 1; }
	$(CC) $(CFLAGS) -Wall -Wextra -Wno-unused-parameter -Werror -fPIC -shared \
	    $$($(PKG_CONFIG) --cflags flux-core jansson) -o $@ $< \
	    $$($(PKG_CONFIG) --libs flux-core jansson)

test: ## run the whole test suite (Flux and compose tests skip where those are missing)
	$(PYTHON) -m pytest

lint: ## ruff over the Python
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

build/compose.%.yaml: conduit/testbed.py
	@mkdir -p build
	$(PYTHON) -m conduit.testbed --nodes $* > $@

up: $(COMPOSE_FILE) ## build the image, start NODES brokers, wait until all are online
	@mkdir -p build && echo $(NODES) > build/nodes
	$(DC) build
	@start=$$(date +%s.%N); \
	$(DC) up --detach --wait --wait-timeout $(WAIT_TIMEOUT) || { $(DC) logs --tail=50; exit 1; }; \
	end=$$(date +%s.%N); \
	echo "cluster ready: $(NODES) nodes online in $$(awk "BEGIN {printf \"%.1f\", $$end - $$start}")s"; \
	$(DC) exec -T node0 flux resource list

demo: ## the conduit demo inside node0; exit status says whether every packet arrived
	$(DC) exec -T node0 flux python -m conduit demo

down: ## stop and remove the cluster, its network and its certificate volume
	$(DC) down --volumes --remove-orphans --timeout 20
	@rm -f build/nodes

logs: ## the brokers' logs
	$(DC) logs --no-color

shell: ## a shell on node0, as the instance owner
	$(DC) exec node0 bash

clean: ## remove build products
	rm -rf $(MODULE) build
