"""Runs llama.cpp's convert_hf_to_gguf.py unchanged, answering its pre-tokenizer lookup for a locally trained BPE.

Usage: python bench/reference_convert.py LLAMA_CPP_SRC PRE_NAME -- <convert_hf_to_gguf.py arguments>

convert_hf_to_gguf.py identifies a BPE pre-tokenizer by hashing the token ids of a probe string, so any
tokenizer trained here (its own vocabulary, hence its own ids) is "not recognized", even with a standard
GPT-2 pre-tokenizer. llama.cpp's documented remedy is convert_hf_to_gguf_update.py, which downloads the model
from the Hub and adds its hash to get_vocab_base_pre(); offline, this shim does the equivalent: it leaves the
converter's source untouched and, only when the hash lookup raises, returns PRE_NAME (the name ggtool derived
from the tokenizer's split rules) instead. Everything else (tensors, metadata, writer) is the converter's own.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    src, pre_name, sep, *args = sys.argv[1:]
    assert sep == "--", __doc__
    src_path = Path(src)
    sys.path.insert(0, str(src_path))
    sys.path.insert(1, str(src_path / "gguf-py"))
    from conversion import base  # the converter's own package, from its own source tree

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:  # noqa: ANN001
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            print(f"[bench] pre-tokenizer hash unknown to this llama.cpp; using {pre_name!r}", file=sys.stderr)
            return pre_name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    converter = src_path / "convert_hf_to_gguf.py"
    sys.argv = [str(converter), *args]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    main()
