# The two set-up commands of the README are `make demo` and `make test`; each installs what it
# needs on a fresh machine: Debian -dev packages through apt-get (only those missing) and the
# pinned Python packages of requirements.txt into .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
JOBS ?= $(shell nproc)

DEB_PACKAGES := g++ python3-dev libgtest-dev libgmock-dev librapidcheck-dev libbenchmark-dev \
	libhwy-dev nlohmann-json3-dev clang libclang-rt-dev clang-format clang-tidy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps apt-deps build-debug build-release cpp-test python py-test lint format test demo \
	bench clean build-fuzz build-fuzz-smoke fuzz-smoke fuzz tsan stubs

apt-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.deps-stamp: requirements.txt
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $@

deps: apt-deps $(VENV)/.deps-stamp

# C++ core and tests under AddressSanitizer + UndefinedBehaviorSanitizer.
build-debug: deps
	cmake --preset debug >/dev/null
	cmake --build --preset debug -j $(JOBS)

cpp-test: build-debug
	ctest --preset debug -j $(JOBS)

# The Python package (Release build of the same core) installed into .venv.
python: deps
	$(PY) -m pip install -q --no-build-isolation .

# Test files spread over the cores (pytest-xdist), each file's tests in one worker: module
# fixtures (a Ray cluster, trained models) are built once.
py-test: python
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile tests/python

# python/arrowquant/_core.pyi is generated from the built module by nanobind's stub generator;
# `make stubs` rewrites it, `make lint` fails when the committed one is not what it generates.
STUBGEN = $(PY) -m nanobind.stubgen -q -m arrowquant._core
stubs: python
	$(STUBGEN) -o python/arrowquant/_core.pyi

CXX_SOURCES = $$(git ls-files '*.cc' '*.h' | grep -v '^tests/fuzz/corpus/')

lint: python build-debug
	$(PY) -m ruff check python tests bench scripts models
	$(PY) -m ruff format --check python tests bench scripts models
	$(PY) -m mypy
	@$(STUBGEN) -o build/_core.pyi && cmp -s build/_core.pyi python/arrowquant/_core.pyi || \
	  { echo "python/arrowquant/_core.pyi is stale: run make stubs"; exit 1; }
	clang-format --dry-run --Werror $(CXX_SOURCES)
	@# Highway's baseline target only: the kernels' code is the same for every target, and
	@# checking each target's copy made clang-tidy 1.6x slower.
	run-clang-tidy -quiet -p build/debug -j $(JOBS) -extra-arg=-DHWY_COMPILE_ONLY_STATIC=1 \
	  'src/' > build/clang-tidy.log 2>&1 || \
	  { grep -E 'warning:|error:' build/clang-tidy.log; exit 1; }
	@echo "lint: ruff, mypy, stub, clang-format, clang-tidy clean"

format: deps
	$(PY) -m ruff format python tests bench scripts models
	$(PY) -m ruff check --fix python tests bench scripts models
	clang-format -i $(CXX_SOURCES)

# libFuzzer targets (clang, ASan+UBSan) and the atheris config target: a short smoke run of each
# in `make test` (an unoptimized build: half the build time, a quarter of the executions),
# long runs with `make fuzz` (optimized, FUZZ_SECONDS each).
FUZZ_SECONDS ?= 1800
build-fuzz: deps
	cmake --preset fuzz >/dev/null
	cmake --build --preset fuzz -j $(JOBS)

build-fuzz-smoke: deps
	cmake --preset fuzz-smoke >/dev/null
	cmake --build --preset fuzz-smoke -j $(JOBS)

fuzz-smoke: build-fuzz-smoke python
	FUZZ_BUILD=build/fuzz-smoke tests/fuzz/run.sh 10

fuzz: build-fuzz python
	tests/fuzz/run.sh $(FUZZ_SECONDS)

# ThreadSanitizer over the thread pool, pipeline and reader tests (slow; run before a release).
tsan: deps
	cmake --preset tsan >/dev/null
	cmake --build --preset tsan -j $(JOBS) --target test_pipeline test_model_file test_quantize
	ctest --preset tsan -R 'Pipeline|ModelFile|ModelReaderLoad|Parallel|Thread' -j $(JOBS)

test: cpp-test py-test lint fuzz-smoke

demo: python
	$(PY) scripts/demo.py demo-out

build-bench: deps
	cmake --preset bench >/dev/null
	cmake --build --preset bench -j $(JOBS)

bench: build-bench python
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) bench/run_all.py

clean:
	rm -rf build demo-out bench-out
