# cnichain plugins. `make demo` runs the main job, `make test` the tests;
# both install what they need and must run as root (they create network
# namespaces, never touching the machine's own).

GO       ?= go
BIN      := $(CURDIR)/bin
DESTDIR  ?=
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/cnichain/plugins/pkg/buildinfo.Version=$(VERSION)
PLUGINS  := $(notdir $(wildcard plugins/*))
FUZZTIME ?= 10s

.PHONY: all build tools test e2e-runtime e2e-k8s lint fuzz soak demo bench bench-k8s dist image install clean

all: build

# Our plugins (static, stripped, versioned) and the reference peers pinned by
# go.mod's tool lines (cnitool, bridge, macvlan, host-local, ...).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./plugins/... ./cmd/cnichain-agent
	$(GO) build -o $(BIN)/ tool

tools:
	@scripts/ensure-tools.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	@for mod in . bench; do \
	  (cd $$mod && $(GO) mod tidy -diff >/dev/null) || { echo "$$mod/go.mod not tidy: run go mod tidy there"; exit 1; }; \
	done
	$(GO) vet ./...
	cd bench && $(GO) vet ./...

# LOAD=N runs the runtime tests and the Go tests with N busy loops beside
# them (scripts/under-load.sh), as on a busy machine: how flaky checks are found.
LOAD ?= 0
GO_TESTS      = CNICHAIN_BIN=$(BIN) $(GO) test -race -count=1 ./...
RUNTIME_TESTS = SB_BIN=$(BIN) scripts/e2e-runtime.sh && SB_BIN=$(BIN) scripts/e2e-cri.sh && scripts/e2e-image.sh \
                && SB_BIN=$(BIN) scripts/e2e-k8s.sh

test: tools build lint
	@scripts/ensure-tools.sh firewalld firewall-cmd dbus-daemon
	scripts/under-load.sh $(LOAD) sh -c '$(RUNTIME_TESTS) && $(GO_TESTS)'

# Our plugins under real container runtimes, inside the sandbox: podman
# with its CNI backend, and containerd's CRI driven by crictl as a kubelet
# would; then the installer image under podman. Installs podman, runc and
# containerd if missing, and builds crictl once.
e2e-runtime: tools build
	$(RUNTIME_TESTS)

# Only the cluster: a real two-node Kubernetes (scripts/cluster.sh) with the
# plugins installed by deploy/daemonset.yaml. Builds its components once
# (scripts/k8s-build.sh, ~10 min cold) into ~/.cache/cnichain/.
e2e-k8s: tools build
	SB_BIN=$(BIN) scripts/e2e-k8s.sh

# Runs every fuzz target for FUZZTIME each.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$target"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# The soak of every example chain at scale (make test runs it with 20 pods).
SOAK_PODS     ?= 200
SOAK_PARALLEL ?= 16
# Then the randomized interleaving of pods, GCs, restores and flushes for
# SOAK_STEPS steps (make test runs 25); CNICHAIN_INTERLEAVE_SEED replays one.
SOAK_STEPS    ?= 400
soak: tools build
	CNICHAIN_BIN=$(BIN) CNICHAIN_SOAK_PODS=$(SOAK_PODS) CNICHAIN_SOAK_PARALLEL=$(SOAK_PARALLEL) \
	  $(GO) test -count=1 -v -run '^TestSoak$$' -timeout 60m ./e2e/
	CNICHAIN_BIN=$(BIN) CNICHAIN_INTERLEAVE_STEPS=$(SOAK_STEPS) \
	  $(GO) test -count=1 -v -run '^TestInterleavedLifecycles$$' -timeout 60m ./e2e/

demo: tools build
	SB_BIN=$(BIN) scripts/demo.sh

# Our plugins against the reference ones, interleaved, in the sandbox; writes
# bench/RESULTS.md and bench/latency.png. BENCH_ROUNDS, BENCH_PODS tune it;
# CNICHAIN_BENCH_ONLY=hostroute (ipam, portmap, wholechain, throughput, agent)
# with CNICHAIN_BENCH_OUT=DIR runs sections alone, for a quick comparison.
# bench/ is a module of its own, so its plotting library stays out of the
# plugins' go.mod.
BENCH_ROUNDS ?= 15
BENCH_PODS   ?= 500
bench: tools build
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./plugins/... | grep -E '^(Benchmark|ok|FAIL)'
	cd bench && CNICHAIN_BIN=$(BIN) CNICHAIN_BENCH=1 CNICHAIN_BENCH_ROUNDS=$(BENCH_ROUNDS) CNICHAIN_BENCH_PODS=$(BENCH_PODS) \
	  $(GO) test -count=1 -v -run '^TestBench$$' -timeout 60m .
	SB_BIN=$(BIN) scripts/bench-k8s.sh

# Pod created -> Ready on the two-node cluster, portmap-lite against the
# reference portmap: bench/RESULTS-k8s.md.
bench-k8s: tools build
	SB_BIN=$(BIN) scripts/bench-k8s.sh

# A release tarball in the reference plugins' layout (binaries at the top,
# untar into /opt/cni/bin), with its checksum.
ARCH    ?= $(shell $(GO) env GOARCH)
DISTTGZ := dist/cnichain-plugins-linux-$(ARCH)-$(VERSION).tgz
dist:
	rm -rf dist/stage && mkdir -p dist/stage
	CGO_ENABLED=0 GOOS=linux GOARCH=$(ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/stage/ ./plugins/...
	cp README.md LICENSE dist/stage/
	tar -C dist/stage -czf $(DISTTGZ) --owner=0 --group=0 --sort=name .
	cd dist && sha256sum $(notdir $(DISTTGZ)) > $(notdir $(DISTTGZ)).sha256
	rm -rf dist/stage
	@echo "$(DISTTGZ)"

# The plugins, the node agent and its systemd unit, which puts back their
# rules and routes after a firewall reload (enable it with systemctl; see
# the README).
# The installer image (deploy/Containerfile; deploy/daemonset.yaml runs it
# on every node), built with podman, no registry, saved in dist/ too.
IMAGE_NAME ?= localhost/cnichain-plugins
image:
	IMAGE=$(IMAGE_NAME):$(VERSION) LDFLAGS='$(LDFLAGS)' IMAGE_ARCHIVE=dist/cnichain-plugins-image-$(VERSION).tar scripts/image.sh

install: build
	install -d $(DESTDIR)/opt/cni/bin $(DESTDIR)/usr/local/sbin $(DESTDIR)/etc/systemd/system
	for p in $(PLUGINS); do install -m 0755 $(BIN)/$$p $(DESTDIR)/opt/cni/bin/$$p; done
	install -m 0755 $(BIN)/cnichain-agent $(DESTDIR)/usr/local/sbin/cnichain-agent
	install -m 0644 scripts/systemd/*.service $(DESTDIR)/etc/systemd/system/

clean:
	rm -rf $(BIN) dist
