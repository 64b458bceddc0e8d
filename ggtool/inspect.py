"""`ggtool inspect`: what a GGUF holds: metadata, tensors, and bytes per tensor group."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .errors import GgtoolError
from .gguf_in import read_header

# first matching rule names the group of a tensor
GROUPS = [
    ("embeddings", r"token_embd\..*"),
    ("output", r"output(_norm)?\..*"),
    ("router", r".*\.(ffn_gate_inp|exp_probs_b)\..*"),
    ("experts", r".*(_exps|\.ffn_latent_(down|up))\..*"),  # latent projections belong to the routed path
    ("shared experts", r".*_shexp\..*"),
    ("attention", r".*\.attn_.*"),
    ("norms", r".*_norm\..*"),
]
_LONG_ARRAYS = 16  # arrays longer than this are summarised, not printed


def tensor_group(name: str) -> str:
    return next((g for g, rx in GROUPS if re.fullmatch(rx, name)), "other")


@dataclass
class TensorRow:
    name: str
    type: str
    shape: list[int]  # ggml order (ne0 first), as llama.cpp prints it
    n_bytes: int
    group: str


@dataclass
class Inspection:
    path: Path
    file_bytes: int
    metadata: dict[str, object]
    tensors: list[TensorRow]
    groups: dict[str, int] = field(default_factory=dict)  # bytes per group


def _field_value(f: gguf.ReaderField) -> object:
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        n = len(f.data)
        if n > _LONG_ARRAYS:
            return f"[{n} values]"
    return f.contents()


def inspect(path: Path) -> Inspection:
    """Read a GGUF's metadata and tensor infos (no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise GgtoolError(f"{path}: no such file")
    read_header(path)  # bounds-checked first: gguf-py hangs on some corrupted counts
    try:  # a corrupted header can fail anywhere in gguf-py (bad counts, types, UTF-8, offsets): one clear line
        reader = gguf.GGUFReader(path)
        meta = {name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        rows = [TensorRow(t.name, t.tensor_type.name, [int(x) for x in t.shape], int(t.n_bytes),
                          tensor_group(t.name)) for t in reader.tensors]
    except (MemoryError, RecursionError) as e:
        raise GgtoolError(f"{path}: not a readable GGUF file ({type(e).__name__})",
                          "the file is truncated or corrupted") from None
    except Exception as e:  # noqa: BLE001
        raise GgtoolError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})",
                          "the file is truncated or corrupted") from None
    groups: dict[str, int] = {}
    for r in rows:
        groups[r.group] = groups.get(r.group, 0) + r.n_bytes
    return Inspection(path, path.stat().st_size, meta, rows, groups)
