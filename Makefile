# bansshee — fleet-wide IP bans for Amazon EC2.
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO      ?= go
BIN     ?= bin
PKGS    ?= ./...
FUZZTIME ?= 10s

.PHONY: all build deps test fuzz fixtures demo bench faults lint lambda clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

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

## bench: Go micro-benchmarks (on stderr), then every bansshee-bench suite on stdout, as a table or,
## with ARGS=--json, one JSON object per line. About 13 minutes: the agent suite idles 2 x 300 s.
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
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -tags lambda.norpc -o $(BIN)/lambda/bootstrap ./cmd/bansshee-lambda
	cd $(BIN)/lambda && rm -f bansshee-lambda.zip && zip -q bansshee-lambda.zip bootstrap && echo "$(BIN)/lambda/bansshee-lambda.zip"

clean:
	rm -rf $(BIN)
