# SPDX-License-Identifier: Apache-2.0
#
# MigrOS. The two commands that matter:
#   make demo   install what is missing, build, boot the lab, run the main job
#   make test   everything: unit tests, patch checks and the lab end-to-end tests

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export LC_ALL := C
# Go lives in /usr/local/go on our machines; PATH may not say so.
export PATH := $(PATH):/usr/local/go/bin

# One Debian kernel version pins the guest kernel image, the headers we
# build rdma_rxe against and the source it comes from.
KERNEL_ABI ?= 56
KERNEL_DEB ?= 6.1.192-2
KREL := 6.1.0-$(KERNEL_ABI)-amd64

TOP := $(CURDIR)
OUT := $(TOP)/_output
CACHE := $(TOP)/_cache
BIN := $(OUT)/bin
LABOUT := $(OUT)/lab
KIMAGE := $(CACHE)/kernel/$(KREL)_$(KERNEL_DEB)
export KERNEL_ABI KERNEL_DEB CACHE OUT

GO ?= go
GOTEST_FLAGS ?=
# Lab end-to-end tests: one lab for the whole run.
E2E_TIMEOUT ?= 50m
E2E_RUN ?= .

.PHONY: all deps tools kernel kernel-check binaries plugin install lab-assets lab lab-down demo \
	test unit-test e2e-test bench bench-lab clean distclean FORCE

all: binaries kernel

# deps: Debian packages, the unpacked guest kernel, and a Go check.
$(CACHE)/.deps-$(KREL)-$(KERNEL_DEB): hack/deps.sh
	@mkdir -p $(CACHE)
	hack/deps.sh
	@touch $@
deps: $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@hack/deps.sh

# containerd 2.x, ctr, the runc shim and runc, at the versions go.mod pins.
TOOL_BINS := $(BIN)/containerd $(BIN)/ctr $(BIN)/containerd-shim-runc-v2 $(BIN)/runc
$(BIN)/.tools: go.mod go.sum | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -tags no_grpc -o $(BIN)/ \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
	$(GO) build -trimpath -ldflags=-s -tags no_btrfs -o $(BIN)/ \
		github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr
	$(GO) build -trimpath -ldflags=-s -tags seccomp -o $(BIN)/ github.com/opencontainers/runc
	@touch $@
tools: $(BIN)/.tools

# Our rdma_rxe.ko: Debian's rxe source plus kernel/patches.
PATCHES := $(wildcard kernel/patches/*.patch)
$(OUT)/kernel/rdma_rxe.ko: $(PATCHES) $(OUT)/kernel/.series hack/build-rxe.sh | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@mkdir -p $(OUT)/kernel
	hack/build-rxe.sh build
# The series' names, rewritten when they change: a patch removed or
# renamed rebuilds the module too, which the patches' times do not tell.
$(OUT)/kernel/.series: FORCE
	@mkdir -p $(@D)
	@echo '$(notdir $(PATCHES))' | cmp -s - $@ || echo '$(notdir $(PATCHES))' >$@
FORCE:
kernel: $(OUT)/kernel/rdma_rxe.ko
kernel-check: | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	hack/build-rxe.sh check

# Our Go binaries (go's own cache makes this cheap when nothing changed).
binaries: | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/ ./cmd/...

# Our own RDMA test programs (C against the host's libibverbs; the guests
# share the host's root, so they run there as built).
RDMACHECK_SRC := $(wildcard integration/rdmacheck/*.c integration/rdmacheck/*.h)
$(BIN)/rdmacheck: $(RDMACHECK_SRC) | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@mkdir -p $(BIN)
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $(filter %.c,$^) -libverbs -lpthread

# MigrOS' CRIU plugin (GPL-2.0), against Debian's criu headers; migros
# finds it in ../lib/criu next to its binary.
CRIU_PLUGIN := $(OUT)/lib/criu/migros_criu.so
$(CRIU_PLUGIN): rdma/criu/plugin/migros_criu.c | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -Werror -fPIC -shared -o $@ $<
# The CRIU configuration containerd-shim-migros-v1 runs CRIU with.
$(OUT)/lib/criu/migros.conf: rdma/criu/plugin/migros.conf
	@mkdir -p $(dir $@)
	cp $< $@
plugin: $(CRIU_PLUGIN) $(OUT)/lib/criu/migros.conf

# Go tests that need an RDMA device, compiled here and run in a guest by
# the e2e tests (they skip elsewhere).
DEVICE_TESTS := $(BIN)/verbs.test
$(BIN)/verbs.test: $(wildcard rdma/verbs/*.go rdma/*.go) | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	@mkdir -p $(BIN)
	$(GO) test -c -o $@ ./rdma/verbs

$(LABOUT)/initrd.img: hack/lab/mkinitrd.sh hack/lab/initrd-init | $(CACHE)/.deps-$(KREL)-$(KERNEL_DEB)
	hack/lab/mkinitrd.sh $(KIMAGE) $(KREL) $@

# The test image is rebuilt only when the builder, our rdmacheck or the
# host's RDMA packages change. rdmacheck is in it at its path here.
$(LABOUT)/rdma-test.oci.tar: $(wildcard integration/testimage/*.go) /var/lib/dpkg/status $(BIN)/rdmacheck | binaries
	$(BIN)/migros-lab image -o $@ -add $(BIN)/rdmacheck

lab-assets: tools kernel binaries plugin $(DEVICE_TESTS) $(BIN)/rdmacheck $(LABOUT)/initrd.img $(LABOUT)/rdma-test.oci.tar
	@printf '{\n  "kernel": "%s",\n  "initrd": "%s",\n  "modules": "%s",\n  "rxe": "%s",\n  "bin": "%s",\n  "guest_init": "%s",\n  "image": "%s",\n  "migros_version": "%s"\n}\n' \
		$(KIMAGE)/boot/vmlinuz-$(KREL) $(LABOUT)/initrd.img $(KIMAGE) $(OUT)/kernel/rdma_rxe.ko \
		$(BIN) $(TOP)/hack/lab/guest-init $(LABOUT)/rdma-test.oci.tar "$$(cat $(OUT)/kernel/migros_version)" \
		> $(LABOUT)/assets.json

# An interactive lab that stays up; `make lab-down` removes it.
lab: lab-assets
	$(BIN)/migros-lab up --name lab --assets $(LABOUT)/assets.json

lab-down:
	@if [ -x $(BIN)/migros-lab ]; then $(BIN)/migros-lab down --all; \
	else $(GO) run ./cmd/migros-lab down --all; fi

demo: lab-assets
	$(BIN)/migros-lab demo --assets $(LABOUT)/assets.json

# make test: each stage is timed into $(OUT)/test-stages.tsv (make bench-lab
# reports it).
STAGE = hack/stage.sh $(OUT)/test-stages.tsv
test:
	@mkdir -p $(OUT); : > $(OUT)/test-stages.tsv
	$(STAGE) deps $(MAKE) --no-print-directory deps
	$(STAGE) lab-assets $(MAKE) --no-print-directory lab-assets
	$(STAGE) kernel-check $(MAKE) --no-print-directory kernel-check
	$(STAGE) unit-test $(MAKE) --no-print-directory unit-test
	$(STAGE) e2e-test $(MAKE) --no-print-directory e2e-test
	@echo "stage wall times:"; column -t $(OUT)/test-stages.tsv

unit-test:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./integration/
	$(GO) test -race -count=1 $(GOTEST_FLAGS) ./...
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 10s ./rdma/image/

# The lab is torn down even when go test dies (a timeout panics past
# TestMain's cleanup).
e2e-test: lab-assets
	rm -rf $(OUT)/e2e-logs
	rc=0; $(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -run '$(E2E_RUN)' -v $(GOTEST_FLAGS) \
		./integration/ -assets $(LABOUT)/assets.json -logs $(OUT)/e2e-logs 2>&1 | tee $(OUT)/e2e.log || rc=$$?; \
	$(BIN)/migros-lab down --name e2e; exit $$rc

# Lab performance: boot time, perftest latency and bandwidth, and the stage
# times of the last make test.
bench-lab: lab-assets
	rc=0; $(GO) test -tags e2e -count=1 -timeout 30m -run '^$$' -bench 'BenchmarkLab' -benchtime 1x \
		./integration/ -assets $(LABOUT)/assets.json || rc=$$?; \
	for l in e2e bbridge bsocket bdgram; do $(BIN)/migros-lab down --name $$l; done; exit $$rc
	@if [ -s $(OUT)/test-stages.tsv ]; then echo "last make test, stage wall times:"; column -t $(OUT)/test-stages.tsv; fi

# Benchmarks that compare implementations side by side in one lab run; the
# latest tables are committed under docs/.
# make bench: ours vs stock rxe, checkpoint/restore against QPs and
# memory, and live migration's blackout by phase, with and without RDMA
# (docs/bench-migrate.md and .png). Guests get 3 GiB for the 1 GiB MR and
# its images. BENCH picks a subset.
BENCH ?= BenchmarkRXEStockVsPatched|BenchmarkCheckpointRestore|BenchmarkMigrate|BenchmarkMigratePreCopy|BenchmarkMigratePageServer
bench: lab-assets
	rm -f $(OUT)/bench-rxe.md $(OUT)/bench-checkpoint.md $(OUT)/bench-migrate*
	rc=0; $(GO) test -tags e2e -count=1 -timeout 150m -run '^$$' -bench '$(BENCH)' -benchtime 1x \
		./integration/ -assets $(LABOUT)/assets.json -lab bench -guests src,dst,peer -guest-memory 3072 || rc=$$?; \
	$(BIN)/migros-lab down --name bench; \
	if [ $$rc = 0 ]; then for f in bench-rxe.md bench-checkpoint.md bench-migrate.md bench-migrate.png bench-migrate-precopy.md bench-migrate-pageserver.md; do \
		if [ -e $(OUT)/$$f ]; then cp $(OUT)/$$f docs/$$f; fi; done; fi; exit $$rc

# Installs MigrOS where containerd and CRIU find it: the migros CLI, its
# CRIU helper migros-criu and containerd-shim-migros-v1 in $(PREFIX)/bin
# (on containerd's PATH), the
# CRIU plugin and MigrOS' CRIU configuration in $(PREFIX)/lib/criu, where
# both binaries look for them. The kernel module is not installed here:
# see docs/containerd.md.
PREFIX ?= /usr/local
install: binaries plugin
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/criu
	install -m 0755 $(BIN)/migros $(BIN)/migros-criu $(BIN)/containerd-shim-migros-v1 $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(CRIU_PLUGIN) $(OUT)/lib/criu/migros.conf $(DESTDIR)$(PREFIX)/lib/criu/

clean: lab-down
	rm -rf $(OUT)

# Also removes the unpacked kernel and extracted sources.
distclean: clean
	rm -rf $(CACHE)
