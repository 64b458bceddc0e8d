"""Streaming, atomic GGUF writing on top of gguf-py.

The header, metadata and tensor infos are written first from the plan (shapes and types are known
without reading any weights); then each tensor is written part by part, so peak memory is one part
(one expert matrix, say), not one stacked tensor and never the model. Everything goes to a
temporary file beside the destination that is renamed only when complete.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import gguf
import numpy as np

from .errors import GgtoolError
from .outputs import atomic_output

if TYPE_CHECKING:  # type hints only: the families import this module (ssmoelm encodes with it)
    from .checkpoint import Checkpoint
    from .families.base import PlannedTensor

Q = gguf.GGMLQuantizationType
OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPES = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
              Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}


def tensor_type(t: PlannedTensor, outtype: Q) -> Q:
    """The stored type of one tensor: the family's forced type, else F32 for norms and 1-D tensors (as
    llama.cpp's converter keeps them), else `outtype` where the row fills whole blocks."""
    if t.force_type:
        return Q[t.force_type]
    if len(t.shape) <= 1 or t.name.endswith("_norm.weight"):
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[outtype]
    if t.shape[-1] % block:
        return Q.F16  # a row that does not fill whole blocks cannot be block-quantized
    return outtype


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    """Bytes of a tensor of numpy-order `shape` stored as `qtype`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * (shape[-1] // block) * size


def encode(arr: np.ndarray, qtype: Q) -> np.ndarray:
    """The stored bytes of a part in `qtype`: uint8 parts are finished blocks already (e.g. exact packed
    weights), float parts go through gguf-py's reference encoders."""
    if arr.dtype == np.uint8:
        return arr
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.BF16 and sys.byteorder == "little" and arr.ndim:
        # values widened from bf16 (low halves zero, no NaN) round to themselves: keep the high halves,
        # the bytes gguf-py's rounding encoder writes, without its uint64 passes
        halves = arr.view(np.uint16)
        if not halves[..., 0::2].any() and not np.isnan(arr).any():
            return np.ascontiguousarray(halves[..., 1::2]).view(np.uint8)
    return gguf.quants.quantize(arr, qtype)


def write_gguf(dest: Path, arch: str, add_metadata: Callable[[gguf.GGUFWriter], None], plan: list[PlannedTensor],
               ckpt: Checkpoint, types: list[Q], progress: Callable[[str, int], None] | None = None) -> None:
    """Write `plan` (tensor i stored as types[i]) streamed from `ckpt` as a GGUF at `dest`, atomically."""
    with atomic_output(dest) as tmp:
        w = gguf.GGUFWriter(tmp, arch=arch)
        add_metadata(w)
        for t, q in zip(plan, types):
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes(t.shape, q), raw_dtype=q)
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        for t, q in zip(plan, types):
            w.write_padding(fout, fout.tell())
            written = 0
            for part in t.parts:
                data = encode(part.load(ckpt), q)
                data.tofile(fout)
                written += data.nbytes
                ckpt.release(part.source)
            expected = nbytes(t.shape, q)
            if written != expected:
                raise GgtoolError(f"{t.name}: wrote {written} bytes, expected {expected}",
                                  "the checkpoint's tensors do not have the shapes its config.json implies")
            w.write_padding(fout, written)
            if progress:
                progress(t.name, written)
        fout.flush()
        os.fsync(fout.fileno())
        w.close()
