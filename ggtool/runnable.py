"""Whether the installed llama.cpp can run a GGUF: asked before run, imatrix, quantize, eval and verify load it."""

from __future__ import annotations

from pathlib import Path

from .errors import GgtoolError
from .families import by_arch
from .gguf_in import read_header
from .limits import check_gguf_model
from .llama import arch as llama_arch
from .llama.build import BUILD_COMMAND
from .llama.probe import check_loads


def require_runnable(path: Path, action: str = "run") -> None:
    """Refuse, with the family's reason, a GGUF whose architecture no llama.cpp graph computes (run, quantize), one
    whose graph comes from ggtool's llama.cpp patch when the installed build lacks it, and one whose shape metadata
    would make llama.cpp abort (block and expert counts outside its limits)."""
    try:
        header = read_header(path)
    except GgtoolError:  # missing or malformed: the caller's own load reports it
        return
    check_gguf_model(header)
    arch = header.get("general.architecture")
    family = by_arch(arch) if arch is not None else None
    if family is not None and not family.runnable:
        raise GgtoolError(f"{path}: cannot {action} architecture {family.arch} in llama.cpp: "
                          f"{family.not_runnable_reason}", "`ggtool inspect` and `ggtool verify` work on it")
    if family is not None and family.patched_arch:
        if not llama_arch.available(family.arch):
            raise GgtoolError(f"{path}: this llama.cpp build lacks architecture {family.arch}, so it cannot {action} it",
                              f"build llama-cpp-python with ggtool's patches/llama.cpp/{family.arch}.patch: "
                              f"`{BUILD_COMMAND}` in a ggtool checkout, ~10 min")
    check_loads(path)  # llama.cpp aborts the process on some malformed files: asked in a child first
