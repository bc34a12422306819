# flux-conduit: the conduit broker module, the compose testbed, the tests.
# `make` lists the targets.

PYTHON ?= python3
PKG_CONFIG ?= pkg-config
CC ?= cc
CFLAGS ?= -O2 -g
MODULE = module/conduit.so

# The compose testbed (the host side, conduit/testbed/, does the work; it
# also holds the defaults).  NODES brokers run, of an instance made for MAX_NODES; both are
# remembered per PROJECT in build/PROJECT/ until `make down`.  COMPOSE is the
# compose command; ENGINE, the engine under it: docker, or podman (Compose v2
# against Podman's Docker-compatible API, started by `make up` if need be);
# IMAGE, a published image to run instead of building one.  DATA is the
# shared directory (/data on every node; default data/), SITE_CONFIG the
# site's broker config files (default docker/site.d/); both are read by
# every `make up`.
COMPOSE ?= docker compose
ENGINE ?= docker
ENGINE_SOCKET ?=
PROJECT ?= flux-conduit
NODES ?=
MAX_NODES ?=
IMAGE ?=
DATA ?=
SITE_CONFIG ?=
AS ?=
KEEP_STATE ?=
WAIT_TIMEOUT ?= 300
DEMO_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

TESTBED = $(PYTHON) -m conduit.testbed --project '$(PROJECT)' --compose '$(COMPOSE)' \
    --image '$(IMAGE)' --engine '$(ENGINE)' --engine-socket '$(ENGINE_SOCKET)' \
    --data '$(DATA)' --site-config '$(SITE_CONFIG)'
PROJECT_FILE = build/$(PROJECT)/compose.yaml
# What compose's exec and logs need to reach the engine (Podman: DOCKER_HOST=its socket).
ENGINE_ENV = $(shell $(TESTBED) engine-env)
DC = $(strip $(ENGINE_ENV) $(COMPOSE)) -p $(PROJECT) \
    -f $(if $(wildcard $(PROJECT_FILE)),$(PROJECT_FILE),compose.yaml)
# The tests use the same engine (the plugin reads ENGINE and ENGINE_SOCKET).
export ENGINE ENGINE_SOCKET

.DEFAULT_GOAL := help
.PHONY: help module install uninstall test lint up scale restart status stop down demo logs \
    shell bench bench-native bench-plot clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: NODES=N MAX_NODES=N PROJECT=$(PROJECT) COMPOSE='$(COMPOSE)' ENGINE=$(ENGINE) IMAGE=ref"
	@echo "             KEEP_STATE=1 ENGINE_SOCKET=path DEMO_ARGS=... BENCH_ARGS=... WAIT_TIMEOUT=$(WAIT_TIMEOUT)"
	@echo "             DATA=dir (shared /data, default data/) SITE_CONFIG=dir (default docker/site.d/) AS=user (make shell)"
	@echo "  ENGINE=docker|podman: the engine under COMPOSE; podman: COMPOSE against Podman's API service,"
	@echo "             which make up starts on $$($(PYTHON) -m conduit.testbed --engine podman socket) (or ENGINE_SOCKET)"
	@echo "  defaults: $$($(PYTHON) -m conduit.testbed defaults) (remembered per PROJECT until make down)"

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

up: ## build the image if the sources changed, start NODES brokers, wait until ready
	@$(TESTBED) up --nodes '$(NODES)' --max-nodes '$(MAX_NODES)' --timeout $(WAIT_TIMEOUT)

scale: ## start or stop brokers of the running instance: make scale NODES=N
	@$(TESTBED) scale --nodes '$(NODES)' --timeout $(WAIT_TIMEOUT)

restart: ## restart every broker, rank 0 included; the instance's state is kept
	@$(TESTBED) restart --timeout $(WAIT_TIMEOUT)

status: ## brokers online and nodes' resources up
	@$(TESTBED) status

stop: ## stop the containers, keeping everything; make up starts them again
	@$(TESTBED) stop

down: ## remove the cluster: containers, network, certificate AND rank 0's state (KEEP_STATE=1 keeps volumes)
	@$(TESTBED) down $(if $(KEEP_STATE),--keep-state)

# The targets that need a running testbed say so in one line when none runs.
RUNNING = @$(TESTBED) running

demo: ## the conduit demo inside node0; exit status says whether every packet arrived
	$(RUNNING) demo
	$(DC) exec -T node0 flux python -m conduit demo $(DEMO_ARGS)

bench: ## the benchmark on the testbed; results in build/bench.json (plot: make bench-plot)
	$(RUNNING) bench
	@mkdir -p build
	$(DC) exec -T node0 flux python -m conduit bench --json /tmp/bench.json $(BENCH_ARGS)
	$(DC) exec -T node0 cat /tmp/bench.json > build/bench.json
	@echo "results: build/bench.json"

bench-native: module ## the benchmark in a `flux start --test-size=3` here
	@mkdir -p build
	PYTHONPATH=$(CURDIR) flux start --test-size=3 flux python -m conduit bench \
	    --json build/bench.json $(BENCH_ARGS)

bench-plot: ## draw build/bench.json as build/bench.png (needs matplotlib)
	$(PYTHON) -m conduit.testbed plot build/bench.json build/bench.png

logs: ## the brokers' logs
	$(RUNNING) logs
	$(DC) logs --no-color

shell: ## a shell on node0 in /data, as the instance owner (AS=alice: as a guest, in /data/alice)
	$(RUNNING) shell
	$(DC) exec $(if $(AS),-u '$(AS)' -w '/data/$(AS)') node0 bash

clean: ## remove build products (a testbed's remembered size in build/PROJECT/ stays: make down)
	rm -f $(MODULE)
	find build -maxdepth 1 -type f -delete 2>/dev/null || true
