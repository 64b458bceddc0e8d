"""`ggtool inspect`: what a GGUF holds: metadata, tensors, and bytes per tensor group."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GgtoolError
from .gguf_in import GGUFHeader, read_header

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


def _array_value(header: GGUFHeader, key: str) -> object:
    n = header.array_lengths[key]
    if n > _LONG_ARRAYS:
        return f"[{n} values]"
    values = header.array(key)
    return values.tolist() if hasattr(values, "tolist") else values


def inspect(path: Path) -> Inspection:
    """Read a GGUF's metadata and tensor infos (no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise GgtoolError(f"{path}: no such file")
    header = read_header(path)  # bounds-checked: every count, length and type against the file's size
    meta = {k: _array_value(header, k) if k in header.arrays else v for k, v in header.values.items()}
    rows = [TensorRow(t.name, t.type.name, list(t.shape), t.n_bytes, tensor_group(t.name)) for t in header.tensors]
    groups: dict[str, int] = {}
    for r in rows:
        groups[r.group] = groups.get(r.group, 0) + r.n_bytes
    return Inspection(path, path.stat().st_size, meta, rows, groups)
