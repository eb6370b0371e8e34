# imagebuilder: make images | test | lint | bench | boot-test
#
# Each target installs what it needs on a Debian 12+ or Ubuntu 24.04+ machine (apt-get runs only for
# packages that are missing) and makes .venv from the system Python, whose site-packages provide
# python3-guestfs for the rootless backend. `make images` installs only what building needs; the test
# suite, the boot test and the linters add theirs.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The packages each tier needs, from the one table of programs (imagebuilder/core/programs.py, which
# the system python3 reads before any venv exists). build: partitions, file systems, FAT without a mount,
# the foreign-arch chroot, compression, verify. boot: qemu guests on a private LAN (make boot-test).
# test: what the test suite runs besides (the rootless backend and a host kernel for its appliance,
# dnsmasq --test, Chromium for the dashboard, btrfs for reflinked copies). `imagebuilder doctor` reads it too.
# Recursive (=): expanded when a setup target runs, after setup-python made sure python3 is there.
PROGRAMS_TABLE := $(PYTHON) imagebuilder/core/programs.py packages
BUILD_PACKAGES = $(shell $(PROGRAMS_TABLE) build)
BOOT_PACKAGES = $(shell $(PROGRAMS_TABLE) boot)
TEST_PACKAGES = $(shell $(PROGRAMS_TABLE) boot test)
LINT_PACKAGES = $(shell $(PROGRAMS_TABLE) lint)

.PHONY: setup setup-python setup-build setup-boot setup-test setup-lint venv venv-test test test-fast images boot-test lint bench clean install

# Installs the Debian packages named in $(1), those that are missing only.
define apt_install
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f '$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

setup: setup-build venv

setup-python:
	$(call apt_install,python3)

setup-build: setup-python
	$(call apt_install,$(BUILD_PACKAGES))

setup-boot: setup-python
	$(call apt_install,$(BOOT_PACKAGES))

setup-test: setup-build
	$(call apt_install,$(TEST_PACKAGES))

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

venv-test: $(BIN)/.installed-test

$(BIN)/.installed-test: pyproject.toml $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# A test that needs a program, root or a device this machine lacks fails here instead of skipping.
test: setup-test venv-test
	IMAGEBUILDER_REQUIRE_ALL=1 $(BIN)/pytest -v --durations=40

test-fast: venv-test
	$(BIN)/pytest -m "not integration and not boot"

images: setup
	$(BIN)/imagebuilder build recipes/cluster.yaml

# Boot the images `make images` left in out/<cluster>/ under qemu and check the cluster comes alive.
# It logs in as the recipe's users[0]: e.g. make boot-test BOOT_RECIPE=my.yaml BOOT_ARGS="--ssh-key KEY --unknown 1"
BOOT_RECIPE ?= recipes/cluster.yaml
boot-test: setup setup-boot
	$(BIN)/imagebuilder boot-test $(BOOT_RECIPE) $(BOOT_ARGS)

# Build speed (cold, warm, overlay edit, added package, xz), then flashing and the status collector.
bench: setup-test venv-test
	$(BIN)/python -m tests.bench_build
	$(BIN)/python -m tests.bench_flash
	$(BIN)/python -m tests.bench_collector

# The programs that run on the nodes (overlays/*/root/usr/local/lib/imagebuilder/*.py) are linted too, each
# folder on mypy's path as it is on the node's sys.path, where a program finds the modules beside it. So are
# the nodes' shell scripts (a #!/bin/sh line, or a shellcheck directive where the initramfs sources one);
# the templates among them are shellchecked by the tests, once rendered (tests/test_node_scripts.py).
NODE_PROGRAMS := $(wildcard overlays/*/root/usr/local/lib/imagebuilder/*.py)
empty :=
NODE_PROGRAM_PATH := $(subst $(empty) $(empty),:,$(sort $(dir $(NODE_PROGRAMS))))
NODE_SCRIPTS = $(shell grep -rlE --exclude='*.j2' '^(\#!/bin/sh|\# shellcheck shell=sh)$$' overlays)

setup-lint: setup-python
	$(call apt_install,$(LINT_PACKAGES))

lint: setup-lint venv-test
	$(BIN)/ruff check imagebuilder tests overlays
	$(BIN)/mypy
	MYPYPATH=$(NODE_PROGRAM_PATH) $(BIN)/mypy --strict --explicit-package-bases $(NODE_PROGRAMS)
	shellcheck $(NODE_SCRIPTS)

# The one supported install: a wheel of this checkout in its own environment under $(INSTALL_DIR), made
# from the system Python with its site-packages (python3-guestfs for the rootless backend), and the
# command in $(PREFIX)/bin, which sudo's secure_path on Debian and Ubuntu includes: so both
# `imagebuilder` and `sudo imagebuilder` find it.
PREFIX ?= /usr/local
INSTALL_DIR ?= /opt/imagebuilder

install: setup-build
	rm -rf build/wheel
	$(PYTHON) -m pip wheel -q --no-deps -w build/wheel .
	$(PYTHON) -m venv --clear --system-site-packages $(INSTALL_DIR)
	$(INSTALL_DIR)/bin/pip install -q build/wheel/imagebuilder-*.whl
	mkdir -p $(PREFIX)/bin
	ln -sfn $(INSTALL_DIR)/bin/imagebuilder $(PREFIX)/bin/imagebuilder

clean:
	rm -rf $(VENV) out build *.egg-info
