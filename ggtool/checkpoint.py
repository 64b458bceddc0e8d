"""Reading a checkpoint folder: config.json and memory-mapped safetensors (single file or shards).

The safetensors header is parsed here rather than through the safetensors package so that every
tensor is a zero-copy numpy view of the mapped file (bf16 included, which numpy lacks) and so that
a truncated file is caught, with its name, before anything is written.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GgtoolError
from .limits import check_config

# safetensors dtype -> numpy dtype of the stored bytes (BF16 is kept as raw uint16 bits)
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # convert to GGUF float weights exactly (F64: when in range)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and byte range inside the file's data section."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32 exactly."""
    out = np.empty(bits.shape, dtype=np.uint32)  # one pass, no uint32 temporary to shift afterwards
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise GgtoolError(f"{path}: not a safetensors file (shorter than its 8-byte header length)",
                              "re-download or re-save the checkpoint")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100 * 2**20:
            raise GgtoolError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size})",
                              "re-download or re-save the checkpoint")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GgtoolError(f"{path}: safetensors header is not valid JSON ({e.msg if hasattr(e, 'msg') else e})",
                              "re-download or re-save the checkpoint") from None
        except RecursionError:
            raise GgtoolError(f"{path}: safetensors header is nested too deeply to be a safetensors header",
                              "re-download or re-save the checkpoint") from None
    if not isinstance(header, dict):
        raise GgtoolError(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object",
                          "re-download or re-save the checkpoint")
    return header, 8 + n


def _entry(path: Path, name: str, info: object) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, each checked for its type."""
    def bad(why: str) -> GgtoolError:
        return GgtoolError(f"{path}: tensor {name}: {why} in the safetensors header", "the file is corrupt; "
                           "re-download or re-save the checkpoint")

    if not isinstance(info, dict):
        raise bad(f"entry is a JSON {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad("dtype missing or not a string")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise bad(f"shape {shape!r} is not a list of at most 8 sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(
            isinstance(o, int) and not isinstance(o, bool) for o in offsets) or not 0 <= offsets[0] <= offsets[1]:
        raise bad(f"data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
    return dtype, tuple(shape), offsets[0], offsets[1]


class SafetensorsFile:
    """One memory-mapped safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        header, self.data_start = _read_header(path)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise GgtoolError(f"{path}: safetensors __metadata__ is not an object", "re-download or re-save it")
        data_size = path.stat().st_size - self.data_start
        self.entries: dict[str, TensorEntry] = {}
        for name, info in header.items():
            dtype, shape, begin, end = _entry(path, name, info)
            if dtype not in _DTYPES:
                raise GgtoolError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            if end - begin != expected:
                raise GgtoolError(f"{path}: tensor {name} holds {end - begin} bytes but its shape {list(shape)} "
                                  f"and dtype {dtype} need {expected}", "the file is corrupt; re-download it")
            if end > data_size:
                raise GgtoolError(f"{path}: truncated: tensor {name} ends at byte {end} of the data section, "
                                  f"which has only {data_size}", "re-download or re-save the checkpoint")
            self.entries[name] = TensorEntry(path, dtype, shape, begin, end)
        # every byte belongs to at most one tensor: overlapping ranges would give two tensors the same weights
        spans = sorted((e.begin, e.end, n) for n, e in self.entries.items() if e.end > e.begin)
        for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
            if begin_b < end_a:
                raise GgtoolError(f"{path}: tensors {a} and {b} overlap in the data section "
                                  f"(bytes {begin_b}–{end_a})",
                                  "the file is corrupt; re-download or re-save the checkpoint")
        self._map: mmap.mmap | None = None

    def array(self, name: str) -> np.ndarray:
        """A read-only zero-copy view of one tensor (BF16 as raw uint16 bits)."""
        e = self.entries[name]
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        dtype = np.dtype(_DTYPES[e.dtype])
        count = (e.end - e.begin) // dtype.itemsize
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=self.data_start + e.begin).reshape(e.shape)

    def release(self, name: str) -> None:
        """Drop the mapped pages of one tensor from this process's memory (they stay in the page cache)."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        e = self.entries[name]
        start = (self.data_start + e.begin) // mmap.PAGESIZE * mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, start, self.data_start + e.end - start)


def read_json(path: Path) -> dict | None:
    """An optional JSON file (a checkpoint's tokenizer_config.json, ...), or None if absent."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GgtoolError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


class Checkpoint:
    """A local checkpoint folder: config.json plus safetensors weights."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise GgtoolError(f"{self.folder}: no such checkpoint folder",
                              "pass the folder that holds config.json and the *.safetensors files")
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise GgtoolError(f"{config_path}: config.json not found",
                              "a checkpoint folder needs config.json next to its *.safetensors files")
        try:
            self.config: dict = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GgtoolError(f"{config_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        except (UnicodeDecodeError, RecursionError) as e:
            raise GgtoolError(f"{config_path}: not a readable config.json ({type(e).__name__})") from None
        check_config(self.config, str(config_path))
        self.files = self._weight_files()
        self.shards = [SafetensorsFile(p) for p in self.files]
        self.entries: dict[str, tuple[SafetensorsFile, TensorEntry]] = {}
        for shard in self.shards:
            for name, entry in shard.entries.items():
                self.entries[name] = (shard, entry)

    def _weight_files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
                if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                    raise ValueError("weight_map is not an object of file names")
            except (ValueError, AttributeError, RecursionError) as e:
                raise GgtoolError(f"{index}: not a readable safetensors index ({e})",
                                  "re-download the checkpoint") from None
            for f in set(weight_map.values()):  # shards live in the folder: no absolute paths, no way out with ".."
                parts = Path(f).parts
                if not parts or Path(f).is_absolute() or ".." in parts or "\\" in f:
                    raise GgtoolError(f"{index}: names {f!r}, which is outside the checkpoint folder",
                                      "the index may only name files inside the folder; ggtool reads nothing else")
            files = sorted({self.folder / f for f in weight_map.values()})
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise GgtoolError(f"{missing[0]}: listed in {index.name} but missing",
                                  "download every shard named in the index")
            return files
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            return files
        pickles = sorted(p.name for p in self.folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise GgtoolError(f"{self.folder}: only pickle checkpoints found ({', '.join(pickles[:3])}); "
                              "ggtool reads safetensors only, because unpickling can run arbitrary code",
                              "re-save with transformers' save_pretrained(safe_serialization=True)")
        raise GgtoolError(f"{self.folder}: no *.safetensors files found", "pass a folder with the model weights")

    @property
    def names(self) -> set[str]:
        return set(self.entries)

    @property
    def metadata(self) -> dict[str, str]:
        """The merged safetensors __metadata__ of all shards."""
        merged: dict[str, str] = {}
        for shard in self.shards:
            merged.update(shard.metadata)
        return merged

    def entry(self, name: str) -> TensorEntry:
        return self.entries[name][1]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1].shape

    def raw(self, name: str) -> np.ndarray:
        """The stored tensor as a zero-copy view (BF16 as raw uint16 bits)."""
        shard, _ = self.entries[name]
        return shard.array(name)

    def release(self, name: str) -> None:
        """Let go of a tensor's pages once it has been written, so resident memory stays bounded
        (a name that is not a stored tensor, such as a packed tensor's base key, holds no pages)."""
        if name in self.entries:
            self.entries[name][0].release(name)

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 if it is floating point (bf16 widened), else as stored."""
        shard, entry = self.entries[name]
        arr = shard.array(name)
        if entry.dtype == "BF16":
            return bf16_to_f32(arr)
        if arr.dtype == np.float64:
            out = arr.astype(np.float32)
            if not np.isfinite(out).all() and np.isfinite(arr).all():
                raise GgtoolError(f"tensor {name}: F64 values beyond float32's range, which GGUF cannot hold",
                                  "re-save the checkpoint in float32, float16 or bfloat16")
            return out
        if arr.dtype == np.float16:
            return arr.astype(np.float32)
        return arr

    def input_paths(self) -> list[Path]:
        """Every file conversion reads (used to refuse writing over an input)."""
        extra = [self.folder / n for n in ("config.json", "tokenizer.json", "tokenizer_config.json",
                                           "model.safetensors.index.json", "tokenizer.model",
                                           "chat_template.jinja", "generation_config.json")]
        return list(self.files) + [p for p in extra if p.exists()]

    def read_json(self, filename: str) -> dict | None:
        """An optional JSON side file of the checkpoint (tokenizer_config.json, ...), or None."""
        return read_json(self.folder / filename)
