# Thin wrapper over CMake: `make` builds build/ds4, `make test` runs every test,
# `make demo` installs what is missing, builds and runs the default model.
BUILD ?= build
JOBS  ?= $(shell nproc)

.PHONY: all deps test test-asan demo clean bench

all:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

deps:
	@bash tools/install-deps.sh

test: deps all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDS4_SANITIZE=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure -j $(JOBS)

demo: deps all
	@bash tools/demo.sh $(BUILD)/ds4

clean:
	rm -rf $(BUILD) build-asan
