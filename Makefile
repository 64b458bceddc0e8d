# ggtool: `make demo` runs the main job on the default model; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
# RPC lets the planner's tests use a loopback second device on machines without a GPU
export CMAKE_ARGS ?= -DGGML_RPC=on

.PHONY: install test demo bench clean llama-src template-engines

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

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@# pip may reuse a cached wheel built without RPC: rebuild it from source if so
	$(PY) -c "import llama_cpp.llama_cpp as L, sys; sys.exit(0 if L.llama_supports_rpc() else 1)" || \
	  $(PY) -m pip install -q --no-cache-dir --force-reinstall --no-deps '$(LLAMA_CPP_PYTHON)'
	touch $@

$(LLAMA_ARGS): tests/llama_args/main.cpp tests/llama_args/stubs.cpp tests/llama_args/build.sh $(VENV)/.installed
	@python3 ggtool/llama/source.py >/dev/null
	nice tests/llama_args/build.sh $(PY) $@

$(LMSTUDIO_NODE): tests/node/lmstudio/package.json tests/node/lmstudio/package-lock.json
	cd tests/node/lmstudio && npm ci --no-audit --no-fund --loglevel=error

test: install
	$(VENV)/bin/pytest -q

demo: install
	$(PY) scripts/demo.py out/demo

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf out build .pytest_cache
