"""Which architectures the loaded llama.cpp knows: ggtool's patched build adds `metis` (patches/llama.cpp)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import gguf

from . import model
from .backend import log_lines


@functools.lru_cache(maxsize=None)
def available(arch: str) -> bool:
    """True if this llama.cpp build has a graph for `arch`: load a GGUF holding only general.architecture and
    see whether llama.cpp refuses the name itself (it reads the name before any other key)."""
    with tempfile.TemporaryDirectory(prefix="ggtool-arch-") as tmp:
        probe = Path(tmp) / "probe.gguf"
        w = gguf.GGUFWriter(probe, arch)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        try:
            model.LlamaModel(probe, vocab_only=True).close()
        except Exception:  # noqa: BLE001 - the probe file lacks every other key, so a known arch fails later
            pass
        return not any("unknown model architecture" in ln for ln in log_lines())
