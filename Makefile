# purser — see README.md. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/purser?sslmode=disable
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test?sslmode=disable
# The local demo's admin token (loopback only). Set your own in production.
PURSER_ADMIN_TOKEN ?= purser-local-admin-token
FUZZTIME ?= 20s
# Release builds use go-control-plane's generated marshallers (see grpccodec); every go
# command below builds, vets and tests with the tag.
GOFLAGS := $(strip $(GOFLAGS) -tags=vtprotobuf)
export DATABASE_URL TEST_DATABASE_URL GOFLAGS

# gotestsum (a Go tool dependency, go.mod) runs go test and ends with a one-line summary.
GOTESTSUM := $(GO) tool gotestsum --format pkgname-and-test-fails --format-hide-empty-pkg --
# What `make test` takes on the 2-core development machine when nothing else runs (11m21s
# measured in issue 17; said before it starts). Other work on the same cores stretches it.
TEST_MINUTES := 6

.PHONY: help build run demo test e2e fuzz bench lint depcheck db-up test-db chromium migrate seed verify clean

help: ## list targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/purser, bin/fakellm and bin/purser-demo
	$(GO) build -o $(BIN)/purser ./cmd/purser
	$(GO) build -o $(BIN)/fakellm ./cmd/fakellm
	$(GO) build -o $(BIN)/purser-demo ./cmd/purser-demo

db-up: ## start the machine's PostgreSQL if it is not answering
	@if pg_isready -q -h 127.0.0.1 -p 5432; then echo "postgres: up"; \
	elif command -v pg_ctlcluster >/dev/null; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | sort -V | tail -n1) main start && \
		for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
		pg_isready -h 127.0.0.1 -p 5432; \
	else echo "postgres is not running and pg_ctlcluster is not installed: start PostgreSQL or set DATABASE_URL"; exit 1; fi

chromium: ## install Debian's chromium for the console's browser tests when it is missing (root or sudo)
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then echo "chromium: present"; \
	elif command -v apt-get >/dev/null; then \
		sudo=$$(if [ "$$(id -u)" -ne 0 ]; then echo sudo; fi); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null && echo "chromium: installed"; \
	else echo "chromium is missing and apt-get is not available: install Chromium for the console's browser tests"; exit 1; fi

migrate: build db-up ## create the database if needed and migrate it
	$(BIN)/purser migrate

seed: migrate ## load the sample key and budgets, and the console's demo data (teams, keys, spend history)
	$(BIN)/purser seed -demo

run: seed ## run purser locally with demo data; the console is at http://127.0.0.1:9090/ui/ (Ctrl-C to stop)
	@echo "admin API token for this demo (sign in to http://127.0.0.1:9090/ui/ with it): $(PURSER_ADMIN_TOKEN)"
	PURSER_ADMIN_TOKEN=$(PURSER_ADMIN_TOKEN) $(BIN)/purser serve

demo: migrate ## no Docker: purser, a fake LLM and the Envoy stand-in (envoy/envoy.yaml) on 127.0.0.1; prints requests to try
	PURSER_ADMIN_TOKEN=$(PURSER_ADMIN_TOKEN) $(BIN)/purser-demo -purser $(BIN)/purser

test-db: db-up ## create the test database (TEST_DATABASE_URL) when it is missing
	$(GO) run ./internal/testdb

test: db-up test-db chromium ## run every test with -race against the local Postgres (and headless Chromium)
	@echo "make test: every package with -race; about $(TEST_MINUTES) minutes on 2 cores (longer when other work shares them); a one-line summary at the end"
	CI=true $(GOTESTSUM) -race -count=1 -timeout 30m ./...

e2e: db-up test-db ## run the end-to-end suite (real binary, real Postgres; a real Envoy when ENVOY_BIN is set)
	@echo "make e2e: the end-to-end suite with -race; about 5 minutes on 2 cores"
	CI=true $(GOTESTSUM) -race -count=1 -timeout 30m ./e2e/...

fuzz: ## run every fuzz target for FUZZTIME each
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; done

bench: db-up build ## measure Check throughput and latency against baselines (prints a table)
	$(GO) run ./cmd/purser-bench

verify: build ## reconcile the ledger in DATABASE_URL
	$(BIN)/purser verify

lint: ## gofmt, go vet and staticcheck (a tool dependency in go.mod: go tool staticcheck)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

depcheck: ## check the import direction rules
	$(GO) test -run TestImportDirection .

clean: ## remove build output
	rm -rf $(BIN)
