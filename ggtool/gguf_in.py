"""Reading GGUF files: one clear message for a missing, foreign, truncated or corrupted file.

`read_header` walks the header itself, with every count checked against the bytes that remain (gguf-py
trusts them: a corrupted count makes it loop over billions of elements), and keeps the scalar metadata and
the tensor infos; that is all most commands need, and it is far faster than gguf-py's reader on a large
vocabulary. `open_gguf` is gguf-py's full reader (tensor data included) after the same checks, parsed once
per version of a file.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf

from .errors import GgtoolError

_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (the row length) first
    type: gguf.GGMLQuantizationType
    offset: int  # where its data starts in the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * size


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    values: dict  # key → scalar or string; arrays are not kept (their keys map to None)
    array_lengths: dict  # key → number of elements, for array values
    tensors: tuple[TensorInfo, ...]

    def get(self, key: str, default=None):  # noqa: ANN001, ANN201
        value = self.values.get(key)
        return default if value is None else value


def _check_file(path: Path) -> os.stat_result:
    if not path.is_file():
        raise GgtoolError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GgtoolError(f"{path}: not a GGUF file", "pass a .gguf model, e.g. one made by `ggtool convert`")
    return path.stat()


def _key(path: Path, st: os.stat_result) -> tuple:
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_header(path: Path | str) -> GGUFHeader:
    """A GGUF's scalar metadata and tensor infos, bounds-checked, parsed once per version of the file."""
    path = Path(path)
    return _read_header(_key(path, _check_file(path)))


@functools.lru_cache(maxsize=16)
def _read_header(key: tuple) -> GGUFHeader:
    path = Path(key[0])

    def bad(why: str) -> GgtoolError:
        return GgtoolError(f"{path}: not a readable GGUF file ({why})", "the file is truncated or corrupted")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise bad("shorter than a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            pos = 4

            def take(fmt: str):  # noqa: ANN202
                nonlocal pos
                n = struct.calcsize(fmt)
                if pos + n > size:
                    raise bad(f"ends inside the header at byte {pos}")
                (v,) = struct.unpack_from(fmt, m, pos)
                pos += n
                return v

            def raw(n: int, what: str) -> bytes:
                nonlocal pos
                if n < 0 or pos + n > size:
                    raise bad(f"{what} of {n} bytes at byte {pos} runs past the end of the file")
                pos += n
                return m[pos - n:pos]

            def text(what: str) -> str:
                try:
                    return raw(take("<Q"), what).decode("utf-8")
                except UnicodeDecodeError:
                    raise bad(f"{what} at byte {pos} is not UTF-8") from None

            def array(depth: int) -> int:
                """Skip an array's elements; its length."""
                etype, count = take("<I"), take("<Q")
                if etype in _FIXED:
                    raw(count * struct.calcsize(_FIXED[etype]), "an array")
                elif etype in (_STRING, _ARRAY):
                    if count * 8 > size - pos:
                        raise bad(f"an array of {count} values at byte {pos} cannot fit in the file")
                    for _ in range(count):
                        value(etype, depth + 1)
                else:
                    raise bad(f"unknown array element type {etype} at byte {pos}")
                return count

            def value(vtype: int, depth: int = 0):  # noqa: ANN202
                if vtype in _FIXED:
                    return take(_FIXED[vtype])
                if vtype == _STRING:
                    return text("a string")
                if vtype == _ARRAY and depth < 2:
                    array(depth)
                    return None
                raise bad(f"unknown value type {vtype} at byte {pos}")

            version = take("<I")
            if version not in (2, 3):
                raise bad(f"unsupported GGUF version {version}")
            n_tensors, n_kv = take("<Q"), take("<Q")
            if n_kv * 13 > size or n_tensors * 24 > size:
                raise bad(f"{n_tensors} tensors and {n_kv} keys cannot fit in {size} bytes")
            values, array_lengths = {}, {}
            for _ in range(n_kv):
                k = text("a key")
                vtype = take("<I")
                if vtype == _ARRAY:
                    values[k], array_lengths[k] = None, array(0)
                else:
                    values[k] = value(vtype)
            infos = []
            for _ in range(n_tensors):
                name = text("a tensor name")
                n_dims = take("<I")
                if not 1 <= n_dims <= 4:
                    raise bad(f"a tensor with {n_dims} dimensions at byte {pos}")
                shape = tuple(take("<Q") for _ in range(n_dims))
                ggml_type = take("<I")
                try:
                    qtype = gguf.GGMLQuantizationType(ggml_type)
                except ValueError:
                    raise bad(f"unknown tensor type {ggml_type} at byte {pos}") from None
                infos.append((name, shape, qtype, take("<Q")))
            # tensor data starts at the next multiple of the alignment after the header
            align = values.get("general.alignment") or 32
            if not isinstance(align, int) or align <= 0:
                raise bad(f"general.alignment {align!r} is not a positive integer")
            data_start = -(-pos // align) * align
            tensors = [TensorInfo(name, shape, qtype, data_start + offset) for name, shape, qtype, offset in infos]
            for t in tensors:
                end = t.offset + t.n_bytes
                if end > size:
                    raise GgtoolError(f"{path}: truncated or damaged GGUF file (tensor {t.name}'s data ends at byte "
                                      f"{end}, the file has {size})", "copy or convert it again")
    return GGUFHeader(path, values, array_lengths, tuple(tensors))


def open_gguf(path: Path | str) -> gguf.GGUFReader:
    """gguf-py's full reader for a GGUF file (tensor data included), after the header's checks."""
    path = Path(path)
    key = _key(path, _check_file(path))
    _read_header(key)  # bounds-checked first: gguf-py hangs on some corrupted counts
    try:
        return _read(key)
    except Exception as e:  # noqa: BLE001 - gguf-py fails in many ways on a cut-off file
        raise GgtoolError(f"{path}: truncated or damaged GGUF file ({type(e).__name__}: {e})",
                          "copy or convert it again") from None


@functools.lru_cache(maxsize=4)
def _read(key: tuple) -> gguf.GGUFReader:
    return gguf.GGUFReader(key[0])


# -- recommended sampling -----------------------------------------------------------------------------
# general.sampling.* (written from generation_config.json at conversion), by the name llama-cli options,
# Ollama Modelfile parameters and ggtool's Sampling all give each setting
SAMPLING_KEYS = {"temperature": gguf.Keys.General.SAMPLING_TEMP, "top_k": gguf.Keys.General.SAMPLING_TOP_K,
                 "top_p": gguf.Keys.General.SAMPLING_TOP_P, "min_p": gguf.Keys.General.SAMPLING_MIN_P,
                 "repeat_penalty": gguf.Keys.General.SAMPLING_PENALTY_REPEAT,
                 "repeat_last_n": gguf.Keys.General.SAMPLING_PENALTY_LAST_N}
_INTEGER_SETTINGS = {"top_k", "repeat_last_n"}


def recommended_sampling(get) -> dict[str, float | int]:  # noqa: ANN001 (get: key -> value or None)
    """The sampling settings a GGUF recommends, by name; `get` reads one metadata key."""
    out: dict[str, float | int] = {}
    for name, key in SAMPLING_KEYS.items():
        v = get(key)
        if v is not None:
            out[name] = int(v) if name in _INTEGER_SETTINGS else round(float(v), 6)
    return out
