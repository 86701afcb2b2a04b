# ftvisor: build / image / run / test / deps entry points (README.md).
SHELL := /bin/bash
KTARGET := x86_64-unknown-none
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
KELF := $(TARGET_DIR)/$(KTARGET)/release/ftvisor
RUNNER := cargo run -q --release -p qemu-tests --
T ?=
CMDLINE ?= mode=hypervisor
GUEST ?= build/testguest.elf64=test=hello
EMU ?= bochs
IMAGE_LIMIT := 2097152

.PHONY: all deps build image iso run run-guest bench test unit e2e e2e-list sim fmt fmt-check clippy clean

all: image

deps:
	@bash scripts/deps.sh
	@rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
	@rustup target list --installed | grep -q $(KTARGET) || rustup target add $(KTARGET)

build:
	cargo build --workspace
	cargo build -p kernel --target $(KTARGET) --release

image:
	@cargo build -q -p kernel --target $(KTARGET) --release
	@mkdir -p build
	@cp $(KELF) build/ftvisor.elf64
	@boot/mkimage.sh elf32 build/ftvisor.elf64 build/ftvisor.elf32
	@size=$$(stat -c %s build/ftvisor.elf64); \
	 if [ $$size -gt $(IMAGE_LIMIT) ]; then echo "image: build/ftvisor.elf64 is $$size bytes (> 2 MiB)"; exit 1; fi
	@CARGO_TARGET_DIR=$(abspath $(TARGET_DIR))/guest qemu-tests/guests/hello/build.sh build >/dev/null

# Bootable GRUB ISO (QEMU -cdrom, Bochs, bare metal). CMDLINE= sets the
# hypervisor command line.
iso: image
	boot/mkimage.sh iso build/ftvisor.elf64 build/ftvisor.iso "$(CMDLINE)" $(GUEST)
	@echo "iso: build/ftvisor.iso (cmdline: $(CMDLINE))"

# The demo: an FT pair (two Bochs 3.0), istgt and a client in a network
# namespace; the primary is killed under load, the backup takes over, every
# acknowledged write is verified (qemu-tests/src/demo.rs).
run: deps image
	$(RUNNER) demo --no-build

# One boot of the hypervisor with the test guest under VMX, serial streamed
# (EMU=qemu-tcg CMDLINE=mode=report for QEMU, which has no VMX).
run-guest: deps
	$(RUNNER) boot $(EMU) "$(CMDLINE)" $(GUEST)

# FT off vs on for the same workloads in one run; table and JSON under
# target/bench/ (qemu-tests/src/bench.rs). Not part of CI.
bench: deps image
	$(RUNNER) bench --no-build

test: deps unit e2e

unit:
	cargo test --workspace

e2e:
	$(RUNNER) run $(T)

e2e-list:
	@$(RUNNER) list

# Long deterministic-simulation campaign of the FT protocol (ft/).
SEEDS ?= 100000
sim:
	cargo run --release -p ft --features sim --bin ftsim -- --seeds $(SEEDS)

fmt:
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check
	cd qemu-tests/guests/hello && cargo fmt -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p kernel -p vmx -p drivers -p boot --target $(KTARGET) --release -- -D warnings
	cargo clippy -p ft --lib --target $(KTARGET) --release -- -D warnings
	cd qemu-tests/guests/hello && CARGO_TARGET_DIR=$(abspath $(TARGET_DIR))/guest cargo clippy --release --target $(KTARGET) -- -D warnings

clean:
	cargo clean
	rm -rf build
