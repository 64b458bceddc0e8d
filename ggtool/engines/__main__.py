"""`python -m ggtool.engines` (make install): build llama.cpp's template harness and install @huggingface/jinja."""

import sys

from . import EngineUnavailable, hf_jinja_dir, llama_jinja_binary

ok = True
for what, prepare in (("llama.cpp template engine", llama_jinja_binary), ("@huggingface/jinja", hf_jinja_dir)):
    try:
        print(f"{what}: {prepare()}")
    except EngineUnavailable as e:
        print(f"{what}: could not be prepared: {e}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
