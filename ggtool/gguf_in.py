"""Reading GGUF files: the one bounded, checked reader every command uses.

`read_header` walks the header itself, with every count, length and element type checked against the
bytes that remain before anything is allocated (gguf-py trusts them: a corrupted count or element type
makes it build billions of objects), and keeps the scalar metadata, where each array lies, and the tensor
infos. Arrays are read on demand (`GGUFHeader.array`, `GGUFHeader.string_at`) and tensor data is a
read-only memory map of the file (`tensor_data`), so no file makes ggtool allocate more than a small
multiple of its own size. Parsed once per version of a file.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .errors import GgtoolError

_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9
_MAX_DEPTH = 2  # arrays of arrays of values; deeper nesting is not GGUF any tool writes


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
class ArrayInfo:
    """Where an array value lies in the file: element type, length, first and past-the-end byte."""

    etype: int
    count: int
    start: int
    end: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    values: dict  # key → scalar or string; arrays are not kept (their keys map to None)
    array_lengths: dict  # key → number of elements, for array values
    tensors: tuple[TensorInfo, ...]
    arrays: dict = field(default_factory=dict)  # key → ArrayInfo
    size: int = 0  # the file's size when it was read

    def get(self, key: str, default=None):  # noqa: ANN001, ANN201
        value = self.values.get(key)
        return default if value is None else value

    def typed(self, key: str, kind: type | tuple[type, ...], default=None):  # noqa: ANN001, ANN201
        """A scalar value that must be of `kind` (int accepts any integer type, float any number); `default`
        when missing, one clear error when it holds something else."""
        value = self.values.get(key)
        if value is None:
            if key in self.arrays:
                raise GgtoolError(f"{self.path}: metadata key {key} is an array, expected a single value",
                                  "the file is corrupted or was written by a broken converter")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise GgtoolError(f"{self.path}: metadata key {key} holds {value!r}, expected {names}",
                              "the file is corrupted or was written by a broken converter")
        return value

    def array(self, key: str, default=None):  # noqa: ANN001, ANN201
        """An array value: a list of str for strings, a numpy array for numbers (a list of lists for
        nested arrays), `default` when the key is missing or not an array."""
        info = self.arrays.get(key)
        if info is None:
            return default
        with _Cursor(self.path, self.size, info.start) as c:
            return c.array_values(info.etype, info.count, 0)

    def string_at(self, key: str, index: int) -> str | None:
        """Element `index` of a string array (undecodable bytes replaced), None if there is none."""
        info = self.arrays.get(key)
        if info is None or info.etype != _STRING or not 0 <= index < info.count:
            return None
        with _Cursor(self.path, self.size, info.start) as c:
            for _ in range(index):
                c.skip_string()
            return c.raw(c.take("<Q"), "a string").decode("utf-8", "replace")


class _Cursor:
    """Bounds-checked reading of a GGUF file from a byte position; every error names the file."""

    def __init__(self, path: Path, size: int, pos: int = 0):
        self.path, self.size, self.pos = path, size, pos

    def __enter__(self) -> "_Cursor":
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size != self.size:
                raise GgtoolError(f"{self.path}: the file changed while it was being read", "run the command again")
            self.m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self

    def __exit__(self, *exc: object) -> None:
        self.m.close()

    def bad(self, why: str) -> GgtoolError:
        return GgtoolError(f"{self.path}: not a readable GGUF file ({why})", "the file is truncated or corrupted")

    def take(self, fmt: str):  # noqa: ANN201
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise self.bad(f"ends inside the header at byte {self.pos}")
        (v,) = struct.unpack_from(fmt, self.m, self.pos)
        self.pos += n
        return v

    def skip(self, n: int, what: str) -> int:
        """Skip n bytes; where they start."""
        if n < 0 or self.pos + n > self.size:
            raise self.bad(f"{what} of {n} bytes at byte {self.pos} runs past the end of the file")
        self.pos += n
        return self.pos - n

    def raw(self, n: int, what: str) -> bytes:
        start = self.skip(n, what)
        return self.m[start:start + n]

    def text(self, what: str) -> str:
        try:
            return self.raw(self.take("<Q"), what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad(f"{what} at byte {self.pos} is not UTF-8") from None

    def skip_string(self) -> None:
        self.skip(self.take("<Q"), "a string")

    def array_head(self) -> tuple[int, int]:
        """An array's element type and length, checked against the bytes that remain."""
        etype, count = self.take("<I"), self.take("<Q")
        if etype in _FIXED:
            need = count * struct.calcsize(_FIXED[etype])
        elif etype in (_STRING, _ARRAY):
            need = count * (8 if etype == _STRING else 12)  # the smallest element: an empty string / array
        else:
            raise self.bad(f"unknown array element type {etype} at byte {self.pos}")
        if need > self.size - self.pos:
            raise self.bad(f"an array of {count} values at byte {self.pos} cannot fit in the file")
        return etype, count

    def skip_array(self, depth: int) -> tuple[int, int]:
        etype, count = self.array_head()
        if etype in _FIXED:
            self.skip(count * struct.calcsize(_FIXED[etype]), "an array")
        elif etype == _STRING:
            for _ in range(count):
                self.skip_string()
        elif depth + 1 >= _MAX_DEPTH:
            raise self.bad(f"arrays nested deeper than {_MAX_DEPTH} at byte {self.pos}")
        else:
            for _ in range(count):
                self.skip_array(depth + 1)
        return etype, count

    def array_values(self, etype: int, count: int, depth: int):  # noqa: ANN201
        if etype in _FIXED:
            start = self.skip(count * struct.calcsize(_FIXED[etype]), "an array")
            return np.frombuffer(self.m, dtype=_NUMPY[etype], count=count, offset=start).copy()
        if etype == _STRING:
            return [self.text("a string") for _ in range(count)]
        out = []
        for _ in range(count):
            sub, n = self.array_head()
            if depth + 1 >= _MAX_DEPTH and sub == _ARRAY:
                raise self.bad(f"arrays nested deeper than {_MAX_DEPTH} at byte {self.pos}")
            out.append(self.array_values(sub, n, depth + 1))
        return out

    def value(self, vtype: int):  # noqa: ANN201
        if vtype in _FIXED:
            return self.take(_FIXED[vtype])
        if vtype == _STRING:
            return self.text("a string")
        raise self.bad(f"unknown value type {vtype} at byte {self.pos}")


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
    """A GGUF's scalar metadata, array positions and tensor infos, bounds-checked, parsed once per version
    of the file."""
    path = Path(path)
    return _read_header(_key(path, _check_file(path)))


@functools.lru_cache(maxsize=16)
def _read_header(key: tuple) -> GGUFHeader:
    path, size = Path(key[0]), key[3]
    if size < 24:
        raise GgtoolError(f"{path}: not a readable GGUF file (shorter than a GGUF header)",
                          "the file is truncated or corrupted")
    with _Cursor(path, size, 4) as c:
        version = c.take("<I")
        if version not in (2, 3):
            raise c.bad(f"unsupported GGUF version {version}")
        n_tensors, n_kv = c.take("<Q"), c.take("<Q")
        if n_kv * 13 > size or n_tensors * 24 > size:
            raise c.bad(f"{n_tensors} tensors and {n_kv} keys cannot fit in {size} bytes")
        values, array_lengths, arrays = {}, {}, {}
        for _ in range(n_kv):
            k = c.text("a key")
            if k in values:
                raise c.bad(f"key {k} appears twice")
            vtype = c.take("<I")
            if vtype == _ARRAY:
                start = c.pos
                etype, count = c.skip_array(0)
                values[k], array_lengths[k] = None, count
                arrays[k] = ArrayInfo(etype, count, start + 12, c.pos)
            else:
                values[k] = c.value(vtype)
        infos, names = [], set()
        for _ in range(n_tensors):
            name = c.text("a tensor name")
            if name in names:
                raise c.bad(f"tensor {name} appears twice")
            names.add(name)
            n_dims = c.take("<I")
            if not 1 <= n_dims <= 4:
                raise c.bad(f"a tensor with {n_dims} dimensions at byte {c.pos}")
            shape = tuple(c.take("<Q") for _ in range(n_dims))
            ggml_type = c.take("<I")
            try:
                qtype = gguf.GGMLQuantizationType(ggml_type)
            except ValueError:
                raise c.bad(f"unknown tensor type {ggml_type} at byte {c.pos}") from None
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            if shape[0] % block:
                raise c.bad(f"tensor {name}'s rows of {shape[0]} values do not fill whole {qtype.name} blocks")
            infos.append((name, shape, qtype, c.take("<Q")))
        # tensor data starts at the next multiple of the alignment after the header
        align = values.get("general.alignment") or 32
        if not isinstance(align, int) or align <= 0 or align > 1 << 20:
            raise c.bad(f"general.alignment {align!r} is not a positive integer of at most 1 MiB")
        data_start = -(-c.pos // align) * align
    tensors = [TensorInfo(name, shape, qtype, data_start + offset) for name, shape, qtype, offset in infos]
    for t in tensors:
        end = t.offset + t.n_bytes
        if end > size:
            raise GgtoolError(f"{path}: truncated or damaged GGUF file (tensor {t.name}'s data ends at byte "
                              f"{end}, the file has {size})", "copy or convert it again")
    return GGUFHeader(path, values, array_lengths, tuple(tensors), arrays, size)


_ITEM_TYPES = {gguf.GGMLQuantizationType.F16: np.float16, gguf.GGMLQuantizationType.F32: np.float32,
               gguf.GGMLQuantizationType.F64: np.float64, gguf.GGMLQuantizationType.I8: np.int8,
               gguf.GGMLQuantizationType.I16: np.int16, gguf.GGMLQuantizationType.I32: np.int32,
               gguf.GGMLQuantizationType.I64: np.int64}


def tensor_data(header: GGUFHeader, t: TensorInfo) -> np.ndarray:
    """A tensor's data as a read-only memory map of the file, shaped as gguf-py's reader shapes it
    (numpy order; quantized types as bytes per row), so `gguf.quants.dequantize(data, t.type)` works."""
    with open(header.path, "rb") as f:
        if os.fstat(f.fileno()).st_size != header.size:
            raise GgtoolError(f"{header.path}: the file changed while it was being read", "run the command again")
        if t.n_bytes == 0:
            buf = np.zeros(0, dtype=np.uint8)
        else:
            buf = np.memmap(f, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.n_bytes,))
    dims = tuple(reversed(t.shape))
    item = _ITEM_TYPES.get(t.type)
    if item is not None:
        return buf.view(item).reshape(dims)
    return buf.reshape(gguf.quants.quant_shape_to_byte_shape(dims, t.type))


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
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise GgtoolError(f"metadata key {key} holds {v!r}, expected a finite number",
                              "the file is corrupted or was written by a broken converter")
        out[name] = int(v) if name in _INTEGER_SETTINGS else round(float(v), 6)
    return out


@dataclass
class GgufChat:
    """What a GGUF says about chatting with it."""

    name: str | None
    template: str | None
    bos: str
    eos: str
    add_bos: bool
    context_length: int | None
    sampling: dict[str, float | int] = field(default_factory=dict)
    arch: str | None = None


def read_gguf_chat(path: Path) -> GgufChat:
    """The chat template, BOS/EOS texts, add_bos flag, context length and sampling defaults of a GGUF."""
    path = Path(path)
    header = read_header(path)  # bounded and checked: a corrupted file fails here with one line
    value = header.get

    def token_text(key: str) -> str:
        tid = value(key)
        if not isinstance(tid, int):
            return ""
        return header.string_at(gguf.Keys.Tokenizer.LIST, tid) or ""

    arch = header.typed(gguf.Keys.General.ARCHITECTURE, str)
    try:
        sampling = recommended_sampling(value)
    except GgtoolError as e:
        raise GgtoolError(f"{path}: {e.message}", e.hint) from None
    ctx = header.typed(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch), int) if arch else None
    return GgufChat(header.typed(gguf.Keys.General.NAME, str), header.typed(gguf.Keys.Tokenizer.CHAT_TEMPLATE, str),
                    token_text(gguf.Keys.Tokenizer.BOS_ID), token_text(gguf.Keys.Tokenizer.EOS_ID),
                    bool(header.typed(gguf.Keys.Tokenizer.ADD_BOS, bool, False)), ctx, sampling, arch)
