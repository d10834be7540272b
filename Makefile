# stargazer — build targets. `make example` runs the main job, `make test`
# runs the tests; both install what they need first.

GO        ?= go
BIN       := bin
PKGS      := ./...
TEST_FLAGS ?= -count=1 -timeout 30m
APT_PKGS  := runc fuse3 busybox-static containerd debootstrap iproute2

.PHONY: all build deps example test bench bench-images bench-startup clean

all: build

# deps installs the system packages the daemon and the tests use, when any
# is missing.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

# example builds examples/hello with the embedded daemon into hello.tar, an
# OCI image layout of optimized eStargz (traced during the build), and
# checks it.
example: deps build
	mkdir -p examples/hello/rootfs/bin
	cp /bin/busybox examples/hello/rootfs/bin/busybox
	$(BIN)/stargazer build examples/hello --progress plain --dockerfile-frontend stargazer \
		--output type=oci,dest=hello.tar,name=example.test/hello:latest,optimize=true
	$(BIN)/stargazer verify hello.tar
	@echo "wrote hello.tar"

test: deps
	$(GO) vet $(PKGS)
	$(GO) test $(TEST_FLAGS) $(PKGS)

BENCH_ROOTFS ?= /var/cache/stargazer-bench/rootfs

# bench-images makes the Debian root filesystem the benchmarks use (once).
bench-images: deps
	@if [ ! -d $(BENCH_ROOTFS)/usr ]; then \
		mkdir -p $(dir $(BENCH_ROOTFS)) && \
		debootstrap --variant=minbase bookworm $(BENCH_ROOTFS) http://deb.debian.org/debian && \
		rm -rf $(BENCH_ROOTFS)/var/cache/apt/archives/*.deb $(BENCH_ROOTFS)/var/lib/apt/lists/* $(BENCH_ROOTFS)/dev/*; \
	fi

# bench prints the benchmark tables: cold builds (worker), exports
# (exporter), conversion per core (exporter/convert) and tracing (tracer).
bench: deps bench-images
	STARGAZER_BENCH_ROOTFS=$(BENCH_ROOTFS) $(GO) test -run '^$$' -bench . -benchtime 3x ./worker/ ./exporter/
	$(GO) test -run '^$$' -bench . -benchtime 3x -cpu 1,2 ./exporter/convert/
	$(GO) test -run '^$$' -bench Open -benchtime 10x ./tracer/

# bench-startup runs the start-up benchmark (go run ./bench): cold builds
# of FROM image + RUN workload, per image form, over an emulated link; it
# writes results/results.md and results/results.png. BENCH_FLAGS=--quick
# uses small busybox images instead of the Debian python3 image.
BENCH_FLAGS ?=
bench-startup: deps
	$(GO) run ./bench --out results $(BENCH_FLAGS)

clean:
	rm -rf $(BIN) hello.tar examples/hello/rootfs
