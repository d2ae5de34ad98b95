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

unit: build
	$(GO) test $(GOFLAGS_T) -short ./...

e2e: deps build
	$(GO) test $(GOFLAGS_T) -timeout $(TIMEOUT) ./e2e/...

bench: deps build
	./scripts/bench.sh

fuzz:
	./scripts/fuzz.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf bin
