# flux-conduit: the conduit broker module, the compose testbed, the tests.
# `make` lists the targets.

PYTHON ?= python3
PKG_CONFIG ?= pkg-config
CC ?= cc
CFLAGS ?= -O2 -g
MODULE = module/conduit.so

# The compose testbed: NODES brokers (default 3; `make up NODES=N` remembers N
# for demo, down, logs and shell).  compose.yaml is the 3-node file; other
# sizes use build/compose.N.yaml, generated the same way.
COMPOSE ?= docker compose
PROJECT ?= flux-conduit
NODES ?= $(shell cat build/nodes 2>/dev/null || echo 3)
COMPOSE_FILE = $(if $(filter 3,$(NODES)),compose.yaml,build/compose.$(NODES).yaml)
DC = $(COMPOSE) -p $(PROJECT) -f $(COMPOSE_FILE)
WAIT_TIMEOUT ?= 300
DEMO_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help module install uninstall test lint up demo down logs shell bench bench-native bench-plot clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: NODES=$(NODES) PROJECT=$(PROJECT) COMPOSE='$(COMPOSE)'"

module: $(MODULE) ## build module/conduit.so against the installed flux-core

$(MODULE): module/conduit.c
	@$(PKG_CONFIG) --exists flux-core || { echo "make: pkg-config finds no flux-core;" \
	    "install flux-core 0.88 or set PKG_CONFIG_PATH=<flux prefix>/lib/pkgconfig" >&2; exit 1; }
	$(CC) $(CFLAGS) -Wall -Wextra -Wno-unused-parameter -Werror -fPIC -shared \
	    $$($(PKG_CONFIG) --cflags flux-core jansson) -o $@ $< \
	    $$($(PKG_CONFIG) --libs flux-core jansson)

# `make install` puts the module in flux-core's module directory and the
# package in the directory Flux's Python searches (`flux python`, and jobs
# started with it), both under PREFIX, which defaults to flux-core's own.
FLUX_PREFIX = $(shell $(PKG_CONFIG) --variable=prefix flux-core 2>/dev/null)
PREFIX ?= $(FLUX_PREFIX)
FLUX_PYTHON_VERSION = $(shell flux python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
MODULE_DIR = $(PREFIX)/lib/flux/modules
PYTHON_DIR = $(PREFIX)/lib/flux/python$(FLUX_PYTHON_VERSION)

install: $(MODULE) ## install the module and the package (PREFIX=$(FLUX_PREFIX), DESTDIR=)
	@test -n "$(PREFIX)" && test -n "$(FLUX_PYTHON_VERSION)" || { echo "make install: needs" \
	    "flux-core installed (pkg-config flux-core and \`flux python\`)" >&2; exit 1; }
	install -D -m 0755 $(MODULE) $(DESTDIR)$(MODULE_DIR)/conduit.so
	rm -rf $(DESTDIR)$(PYTHON_DIR)/conduit
	install -d $(DESTDIR)$(PYTHON_DIR)/conduit
	install -m 0644 conduit/*.py $(DESTDIR)$(PYTHON_DIR)/conduit/
	@if [ "$(PREFIX)" != "$(FLUX_PREFIX)" ]; then \
	    echo "make install: $(PREFIX) is not flux-core's prefix ($(FLUX_PREFIX)); set" \
	    "FLUX_MODULE_PATH_PREPEND=$(MODULE_DIR) and FLUX_PYTHONPATH_PREPEND=$(PYTHON_DIR)"; fi

uninstall: ## remove what `make install` installed (same PREFIX and DESTDIR)
	rm -f $(DESTDIR)$(MODULE_DIR)/conduit.so
	rm -rf $(DESTDIR)$(PYTHON_DIR)/conduit

# With flux-core installed, `make test` builds the module the native tests load.
HAVE_FLUX := $(shell $(PKG_CONFIG) --exists flux-core 2>/dev/null && echo yes)

test: $(if $(HAVE_FLUX),$(MODULE)) ## run the whole test suite (Flux and compose tests skip where those are missing)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: ## ruff over the Python
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

build/compose.%.yaml: conduit/testbed.py
	@mkdir -p build
	$(PYTHON) -m conduit.testbed --nodes $* --context .. > $@

up: $(COMPOSE_FILE) ## build the image, start NODES brokers, wait until all are online
	@mkdir -p build && echo $(NODES) > build/nodes
	$(DC) build
	@start=$$(date +%s.%N); \
	$(DC) up --detach --wait --wait-timeout $(WAIT_TIMEOUT) --remove-orphans \
	    || { $(DC) logs --no-color --tail=50; exit 1; }; \
	end=$$(date +%s.%N); \
	echo "cluster ready: $(NODES) nodes online in $$(awk "BEGIN {printf \"%.1f\", $$end - $$start}")s"
	$(DC) exec -T node0 flux resource list

demo: ## the conduit demo inside node0; exit status says whether every packet arrived
	$(DC) exec -T node0 flux python -m conduit demo $(DEMO_ARGS)

bench: ## the benchmark on the testbed; results in build/bench.json (plot: make bench-plot)
	@mkdir -p build
	$(DC) exec -T node0 flux python -m conduit bench --json /tmp/bench.json $(BENCH_ARGS)
	$(DC) exec -T node0 cat /tmp/bench.json > build/bench.json
	@echo "results: build/bench.json"

bench-native: module ## the benchmark in a `flux start --test-size=3` here
	@mkdir -p build
	PYTHONPATH=$(CURDIR) flux start --test-size=3 flux python -m conduit bench \
	    --json build/bench.json $(BENCH_ARGS)

bench-plot: ## draw build/bench.json as build/bench.png (needs matplotlib)
	$(PYTHON) -m conduit plot build/bench.json build/bench.png

down: ## stop and remove the cluster, its network and its certificate volume
	$(DC) down --volumes --remove-orphans --timeout 20
	@rm -f build/nodes

logs: ## the brokers' logs
	$(DC) logs --no-color

shell: ## a shell on node0, as the instance owner
	$(DC) exec node0 bash

clean: ## remove build products
	rm -rf $(MODULE) build
