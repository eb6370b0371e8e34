# imagebuilder: make setup | test | images | lint | bench
#
# `make setup` installs what the project needs on a Debian or Ubuntu machine (idempotent: apt-get
# runs only for packages that are missing) and makes .venv from the system Python, whose
# site-packages provide python3-guestfs.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages, by the programs the builder and its tests run.
APT_PACKAGES := python3 python3-venv python3-pip \
	util-linux mount fdisk e2fsprogs dosfstools mtools \
	mmdebstrap qemu-user-static binfmt-support arch-test \
	xz-utils zstd unzip bmap-tools \
	qemu-system-arm qemu-utils socat openssh-client \
	python3-guestfs libguestfs-tools linux-image-amd64 \
	iproute2 chromium \
	nftables

.PHONY: setup apt venv test test-fast images boot-test lint bench clean

setup: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f '$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

test: setup
	$(BIN)/pytest -v

test-fast: venv
	$(BIN)/pytest -m "not integration and not boot"

images: setup
	$(BIN)/imagebuilder build recipes/cluster.yaml

# Boot the images `make images` left in out/<cluster>/ under qemu and check the cluster comes alive.
# It logs in as the recipe's users[0]: e.g. make boot-test BOOT_RECIPE=my.yaml BOOT_ARGS="--ssh-key KEY --unknown 1"
BOOT_RECIPE ?= recipes/cluster.yaml
boot-test: setup
	$(BIN)/imagebuilder boot-test $(BOOT_RECIPE) $(BOOT_ARGS)

# Build speed (cold, warm, overlay edit, added package, xz), then flashing and the status collector.
bench: setup
	$(BIN)/python -m tests.bench_build
	$(BIN)/python -m tests.bench_flash
	$(BIN)/python -m tests.bench_collector

lint: venv
	$(BIN)/ruff check imagebuilder tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out build *.egg-info
