# Parley: `make run` and `make test` on a fresh Debian machine with Swift 6.3.

SWIFT ?= swift
APT_PACKAGES := libsodium-dev libsqlite3-dev libssl-dev liblmdb-dev pkg-config openssl curl
BIN := .build/debug

.PHONY: all deps build run test bench microbench floor plugins-c clean

all: build

# Installs missing system packages when run as root; otherwise names them.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		else \
			echo "missing system packages:$$missing"; echo "install them with: sudo apt-get install$$missing"; exit 1; \
		fi; \
	fi

# Builds parleyd and every plugin (plugins are dynamic library products).
build: deps
	$(SWIFT) build

# Starts parleyd on the embedded defaults: data in ./data, SQLite storage,
# HTTP API on 127.0.0.1:8080, chat listener on 127.0.0.1:8081.
run: build
	$(BIN)/parleyd serve

test: build
	$(SWIFT) test

# Storage throughput of the built-in plugins, release build (see docs/BENCHMARKS.md).
bench: deps
	$(SWIFT) build -c release
	.build/release/parleyd plugin bench .build/release/libparley-storage-sqlite.so
	.build/release/parleyd plugin bench .build/release/libparley-storage-lmdb.so
	.build/release/parleyd plugin bench .build/release/libparley-storage-log.so

# Micro-benchmarks of the hot paths (Benchmarks/HotPaths, ordo-one/benchmark), in their own
# build folder; PARLEY_BENCHMARKS adds them to the package (see Package.swift).
microbench: deps
	PARLEY_BENCHMARKS=1 $(SWIFT) package --scratch-path .build-bench benchmark

# The floor under a chat server on this machine (Benchmarks/Floor/relay_floor.c): a bare C
# relay's CPU per durable message at 1,000 msgs/s and closed loop, log in the build folder.
FLOOR_PORT ?= 19500
floor:
	mkdir -p .build
	cc -O2 -Wall -Wextra -o .build/relay_floor Benchmarks/Floor/relay_floor.c
	for rate in 1000 0; do \
		taskset -c 0 .build/relay_floor server $(FLOOR_PORT) .build/relay_floor.log & sleep 0.5; \
		if [ $$rate = 0 ]; then taskset -c 1 .build/relay_floor client $(FLOOR_PORT) 100 0 8 32; \
		else taskset -c 1 .build/relay_floor client $(FLOOR_PORT) 50 $$rate 8; fi; wait; \
	done; rm -f .build/relay_floor.log

clean:
	rm -rf .build
