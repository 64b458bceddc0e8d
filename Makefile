# ggtool: `make demo` runs the main job on the default model; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
# RPC lets the planner's tests use a loopback second device on machines without a GPU
export CMAKE_ARGS ?= -DGGML_RPC=on

.PHONY: install test demo bench fuzz clean llama-src

install: $(VENV)/.installed llama-src

# the llama.cpp source the pinned llama-cpp-python vendors (tokenizer test vectors, templates, common/jinja):
# fetched once with pip into ~/.cache/ggtool (or $$GGTOOL_LLAMA_SRC)
llama-src:
	@python3 ggtool/llama/source.py >/dev/null

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@# pip may reuse a cached wheel built without RPC: rebuild it from source if so
	$(PY) -c "import llama_cpp.llama_cpp as L, sys; sys.exit(0 if L.llama_supports_rpc() else 1)" || \
	  $(PY) -m pip install -q --no-cache-dir --force-reinstall --no-deps '$(LLAMA_CPP_PYTHON)'
	touch $@

test: install
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
