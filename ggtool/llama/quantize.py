"""llama_model_quantize with an importance matrix, tensor-type overrides and KV overrides, through ctypes.

llama.cpp reads every array below through raw pointers during the call, so each ctypes array, bytes
object and numpy buffer is kept in `keep` until the call returns.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import GgtoolError
from . import model as _model


def _imatrix_array(means: dict[str, np.ndarray], keep: list) -> ctypes.Array:
    arr = (L.llama_model_imatrix_data * (len(means) + 1))()  # zeroed: the last entry (name NULL) ends it
    for i, (name, values) in enumerate(means.items()):
        data = np.ascontiguousarray(values, dtype=np.float32)
        name_b = name.encode()
        keep += [data, name_b]
        arr[i].name = name_b
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    return arr


def _override_array(overrides: list[tuple[str, int]], keep: list) -> ctypes.Array:
    arr = (L.llama_model_tensor_override * (len(overrides) + 1))()
    for i, (pattern, ggml_type) in enumerate(overrides):
        pat = pattern.encode()
        keep.append(pat)
        arr[i].pattern = pat
        arr[i].type = ggml_type
    arr[len(overrides)].type = 43  # GGML_TYPE_COUNT, as llama-quantize's terminator
    return arr


def _kv_array(kvs: list[tuple[str, str | int]]) -> ctypes.Array:
    arr = (L.llama_model_kv_override * (len(kvs) + 1))()  # the last entry's key[0] == 0 ends it
    for i, (key, value) in enumerate(kvs):
        arr[i].key = key.encode()[:127]
        if isinstance(value, str):
            arr[i].tag = L.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = value.encode()[:127]
        else:
            arr[i].tag = L.LLAMA_KV_OVERRIDE_TYPE_INT
            arr[i].value.val_i64 = int(value)
    return arr


def quantize_file(src: Path, dest: Path, ftype: int, imatrix: dict[str, np.ndarray] | None = None,
                  tensor_types: list[tuple[str, int]] = (), kv_overrides: list[tuple[str, str | int]] = (),
                  nthread: int = 0, dry_run: bool = False) -> None:
    """llama_model_quantize(src → dest) as llama-quantize calls it; raises with llama.cpp's reason on failure.
    `dry_run`: nothing is written, llama.cpp logs each tensor's type and size (see planned_types)."""
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    params.dry_run = dry_run
    keep: list = []
    if imatrix:
        arr = _imatrix_array(imatrix, keep)
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(L.llama_model_imatrix_data))
    if kv_overrides:
        arr = _kv_array(list(kv_overrides))
        keep.append(arr)
        params.kv_overrides = ctypes.cast(arr, ctypes.POINTER(L.llama_model_kv_override))
    if tensor_types:
        arr = _override_array(list(tensor_types), keep)
        keep.append(arr)
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(L.llama_model_tensor_override))
    _model._LOG.clear()
    rc = L.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0:
        raise GgtoolError(f"{src}: llama.cpp could not quantize it: {_model._last_error()}")


def planned_types(src: Path, ftype: int, tensor_types: list[tuple[str, int]] = (),
                  imatrix: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """The type llama.cpp would give each tensor of `src` (llama-quantize --dry-run), by tensor name; tensors it
    leaves as they are (norms, the router, ...) are not listed."""
    quantize_file(src, src, ftype, imatrix, tensor_types, dry_run=True)
    out = {}
    for line in _model.log_lines():
        m = re.match(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+-.*->.*\((\w+)\)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2).upper()
    return out
