"""`ggtool inspect`: what a GGUF holds: metadata, tensors, and bytes per tensor group."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .errors import GgtoolError

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


_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type → bytes
_STRING, _ARRAY = 8, 9


def check_header(path: Path) -> None:
    """Walk a GGUF header with bounds checks before gguf-py reads it.

    gguf-py trusts every count and length: a corrupted one makes it loop over billions of elements (a hang)
    or fail deep inside numpy. Every count here must fit in the bytes that remain.
    """
    import mmap
    import struct

    def bad(why: str) -> GgtoolError:
        return GgtoolError(f"{path}: not a readable GGUF file ({why})", "the file is truncated or corrupted")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise bad("shorter than a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos = 0

            def take(fmt: str) -> int:
                nonlocal pos
                n = struct.calcsize(fmt)
                if pos + n > size:
                    raise bad(f"ends inside the header at byte {pos}")
                (v,) = struct.unpack_from(fmt, m, pos)
                pos += n
                return v

            def skip(n: int, what: str) -> None:
                nonlocal pos
                if n < 0 or pos + n > size:
                    raise bad(f"{what} of {n} bytes at byte {pos} runs past the end of the file")
                pos += n

            def value(vtype: int, depth: int = 0) -> None:
                if vtype in _FIXED:
                    skip(_FIXED[vtype], "a value")
                elif vtype == _STRING:
                    skip(take("<Q"), "a string")
                elif vtype == _ARRAY and depth < 2:
                    etype, count = take("<I"), take("<Q")
                    if etype in _FIXED:
                        skip(count * _FIXED[etype], "an array")
                    elif etype in (_STRING, _ARRAY):
                        if count * 8 > size - pos:
                            raise bad(f"an array of {count} values at byte {pos} cannot fit in the file")
                        for _ in range(count):
                            value(etype, depth + 1)
                    else:
                        raise bad(f"unknown array element type {etype} at byte {pos}")
                else:
                    raise bad(f"unknown value type {vtype} at byte {pos}")

            if m[:4] != b"GGUF":
                raise bad("no GGUF magic")
            pos = 4
            version = take("<I")
            if version not in (2, 3):
                raise bad(f"unsupported GGUF version {version}")
            n_tensors, n_kv = take("<Q"), take("<Q")
            if n_kv * 13 > size or n_tensors * 24 > size:
                raise bad(f"{n_tensors} tensors and {n_kv} keys cannot fit in {size} bytes")
            for _ in range(n_kv):
                skip(take("<Q"), "a key")
                value(take("<I"))
            for _ in range(n_tensors):
                skip(take("<Q"), "a tensor name")
                n_dims = take("<I")
                if not 1 <= n_dims <= 4:
                    raise bad(f"a tensor with {n_dims} dimensions at byte {pos}")
                skip(8 * n_dims, "tensor dimensions")
                ggml_type = take("<I")
                try:
                    gguf.GGMLQuantizationType(ggml_type)
                except ValueError:
                    raise bad(f"unknown tensor type {ggml_type} at byte {pos}") from None
                take("<Q")


def inspect(path: Path) -> Inspection:
    """Read a GGUF's metadata and tensor infos (no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise GgtoolError(f"{path}: no such file")
    check_header(path)
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
