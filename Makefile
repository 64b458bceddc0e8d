# ggtool: `make demo` runs the main job on the default model; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# RPC lets the planner's tests use a loopback second device on machines without a GPU
export CMAKE_ARGS ?= -DGGML_RPC=on

.PHONY: install test demo bench fuzz clean llama-src template-engines reference-tools

# test harnesses: llama.cpp's own argument parser (the Ollama server environment test) and LM Studio's
# model.yaml schema (npm @lmstudio/lms-shared-types, pinned by its package-lock.json)
LLAMA_ARGS := build/llama_args/llama-args
LMSTUDIO_NODE := tests/node/lmstudio/node_modules/.package-lock.json

install: $(VENV)/.installed llama-src template-engines $(LLAMA_ARGS) $(LMSTUDIO_NODE)

# the llama.cpp source the pinned llama-cpp-python vendors (tokenizer test vectors, templates, common/jinja):
# fetched once with pip into ~/.cache/ggtool (or $$GGTOOL_LLAMA_SRC)
llama-src:
	@python3 ggtool/llama/source.py >/dev/null

# the chat-template engines users run, for the template check (ggtool/engines): llama.cpp's common/jinja compiled
# against the vendored source (needs g++), and the pinned npm @huggingface/jinja installed with npm ci (needs Node);
# both cached in ~/.cache/ggtool/engines, so this is quick once done
template-engines: $(VENV)/.installed llama-src
	$(PY) -m ggtool.engines

# llama-cpp-python is the pinned sdist with patches/llama.cpp applied (the `metis` graph), built once per machine
# (~10 min on 2 cores) and kept in ~/.cache/ggtool/wheels; the pin in pyproject.toml then finds it installed
$(VENV)/.installed: pyproject.toml ggtool/llama/build.py $(wildcard patches/llama.cpp/*.patch)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) ggtool/llama/build.py > $(VENV)/.llama-wheel
	$(PY) -m pip install -q --force-reinstall --no-deps "$$(cat $(VENV)/.llama-wheel)"
	$(PY) -m pip install -q "$$(cat $(VENV)/.llama-wheel)" -e '.[test]'
	touch $@

$(LLAMA_ARGS): tests/llama_args/main.cpp tests/llama_args/stubs.cpp tests/llama_args/build.sh $(VENV)/.installed | llama-src
	nice tests/llama_args/build.sh $(PY) $@

# llama.cpp's own llama-quantize and llama-imatrix, built from the same vendored source (stock, as llama.cpp ships
# them) into ~/.cache/ggtool-bench: tests/test_quantize.py checks ggtool's files byte for byte against theirs
# (~7 min once on 2 cores, so `make test` builds them, not `make install`/`make demo`; `make bench` adds the other
# programs to the same build)
reference-tools: $(VENV)/.installed llama-src
	nice $(PY) bench/reference.py --targets llama-quantize llama-imatrix >/dev/null

$(LMSTUDIO_NODE): tests/node/lmstudio/package.json tests/node/lmstudio/package-lock.json
	cd tests/node/lmstudio && npm ci --no-audit --no-fund --loglevel=error

# the package as a user installs it, without extras (`pip install .`): tests/test_packaging.py runs every command
# there, so a runtime import that pyproject.toml does not declare fails the suite (reinstalled when the source changes)
VENV_MIN ?= .venv-min
install: $(VENV_MIN)/.installed

$(VENV_MIN)/.installed: $(VENV)/.installed pyproject.toml $(shell find ggtool -type f -not -path '*/__pycache__/*')
	test -x $(VENV_MIN)/bin/python || python3 -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install -q --upgrade-strategy only-if-needed "$$(cat $(VENV)/.llama-wheel)" .
	touch $@

test: install reference-tools
	$(VENV)/bin/pytest -q

demo: install
	$(PY) scripts/demo.py out/demo

bench: install
	$(PY) bench/run_all.py

# mutated GGUF models and importance matrices through every reading command (FUZZ_MUTANTS per command)
FUZZ_MUTANTS ?= 1000
fuzz: install
	$(PY) -m tests.fuzzing --mutants $(FUZZ_MUTANTS)

clean:
	rm -rf out build .pytest_cache
