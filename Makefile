# rbd-nbd: see README.md. Every target runs from a fresh Debian machine.
GO        ?= go
BIN       := bin/rbd-nbd
GOFLAGS_T ?= -race -count=1
TIMEOUT   ?= 30m
export PATH := /usr/local/go/bin:$(PATH)
# The end-to-end tests fail, instead of skipping, when a tool or root is
# missing: what CI runs must really run.
export RBD_NBD_E2E_REQUIRED ?= 1

.PHONY: all build deps test unit e2e e2e-vm bench fuzz lint demo clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/rbd-nbd

# Static binary, for the kernel VM harness.
build-static:
	CGO_ENABLED=0 $(GO) build -o bin/rbd-nbd-static ./cmd/rbd-nbd

deps:
	./scripts/install-deps.sh

# Every test: unit, fuzz seed corpora, end-to-end with real clients.
test: deps build
	$(GO) test $(GOFLAGS_T) -timeout $(TIMEOUT) ./...
	$(MAKE) e2e-vm

# The fast tests: every package but e2e, whose tests drive real daemons and
# tools and do not heed -short.
unit:
	$(GO) test $(GOFLAGS_T) -short $$($(GO) list ./... | grep -v '/e2e$$')

e2e: deps build
	$(GO) test $(GOFLAGS_T) -timeout $(TIMEOUT) ./e2e/...

# Real /dev/nbdX: Debian's stock cloud kernel under qemu (TCG), with
# rbd-nbd attach, Debian's nbd-client and a server restart under a mounted
# file system (e2e/vm/run.sh; docs/kernel-attach.md).
e2e-vm: deps build-static
	RBD_NBD_BIN=bin/rbd-nbd-static ./e2e/vm/run.sh

bench: deps build
	./scripts/bench.sh

fuzz:
	./scripts/fuzz.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@# Static builds for other architectures compile too (no cgo: go-nbd's
	@# ioctl package, for one, had amd64 only).
	for arch in arm64 386 ppc64le; do CGO_ENABLED=0 GOARCH=$$arch $(GO) build -o /dev/null ./cmd/rbd-nbd || exit 1; done

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf bin
