# bansshee — fleet-wide IP bans for Amazon EC2.
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO      ?= go
BIN     ?= bin
PKGS    ?= ./...
FUZZTIME ?= 10s
# The version: the git tag (or commit) for binaries, heartbeats and packages.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Debian and RPM versions must start with a digit: v1.2.3 -> 1.2.3, a bare commit -> 0.0.0~git<hash>.
PKGVERSION ?= $(shell echo '$(VERSION)' | sed -E -e 's/^v?([0-9]+\..*)$$/\1/' -e 't tag' -e 's/^/0.0.0~git/' -e ':tag' -e 's/-/~/g')
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build deps test fuzz fixtures demo sandbox bench faults lint lambda dist clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

## dist: the agent as .deb and .rpm packages for amd64 and arm64 (nfpm, pinned in go.mod as a tool).
dist:
	@mkdir -p $(BIN)/dist
	@for arch in amd64 arm64; do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o infra/package/stage/bansshee-agent ./cmd/bansshee-agent || exit 1; \
	  for fmt in deb rpm; do \
	    ARCH=$$arch VERSION='$(PKGVERSION)' \
	      $(GO) tool nfpm package --config infra/package/nfpm.yaml --packager $$fmt --target $(BIN)/dist/ || exit 1; \
	  done; \
	done
	@rm -rf infra/package/stage
	@ls -1 $(BIN)/dist/*.deb $(BIN)/dist/*.rpm

## deps: install what the tests and the demo need (Debian, as root), if anything is missing.
deps:
	@bash .ci/deps.sh

## test: unit, kernel (network namespaces, needs root), real-daemon and emulator tests, then a short
## fuzz run. Ends with a table of tests run and skipped per suite; under CI=true any skip fails.
test: deps
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) test -timeout 9m -json $(PKGS) | $(GO) run ./internal/testreport
	$(MAKE) fuzz

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./proto

## fixtures: capture the real daemons' failure lines again (controller/trigger/testdata/real).
fixtures: deps
	$(GO) test -count=1 -run '^TestRealDaemons$$' ./controller/trigger -args -capture

## demo: the whole story on the embedded AWS emulator and network namespaces (needs root).
demo: deps
	$(GO) run ./cmd/bansshee-demo

## sandbox: the emulator and a small fleet left running for the bansshee CLI (and the AWS CLI) until
## Ctrl-C; prints the endpoint, the key file and the export lines. Needs root.
sandbox: deps
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/bansshee ./cmd/bansshee-demo
	$(BIN)/bansshee-demo --sandbox

## bench: Go micro-benchmarks (on stderr), then every bansshee-bench suite on stdout, as a table or,
## with ARGS=--json, one JSON object per line. About 25 minutes: the agent suite idles 3 x 300 s
## (0, 100 000 and 1 000 000 bans), the fleet suite builds 10 000-instance fleets.
bench:
	@$(GO) test -run '^$$' -bench . -benchmem ./proto ./controller >&2
	@$(GO) run ./cmd/bansshee-bench all $(ARGS)

faults:
	$(GO) test -timeout 9m -run 'Fault' ./...

## lint: gofmt, go vet and staticcheck (fetched through the Go module proxy).
lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest $(PKGS)

## lambda: bootstrap for the provided.al2023 runtime, zipped.
lambda:
	mkdir -p $(BIN)/lambda
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -tags lambda.norpc -ldflags '$(LDFLAGS)' -o $(BIN)/lambda/bootstrap ./cmd/bansshee-lambda
	cd $(BIN)/lambda && rm -f bansshee-lambda.zip && zip -q bansshee-lambda.zip bootstrap && echo "$(BIN)/lambda/bansshee-lambda.zip"

clean:
	rm -rf $(BIN)
