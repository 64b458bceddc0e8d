"""llama_model_quantize with an importance matrix, tensor-type overrides and KV overrides, through ctypes,
run in a worker process (ggtool.llama.worker) so that Ctrl-C stops it.

llama.cpp reads every array below through raw pointers during the call, so each ctypes array, bytes
object and numpy buffer is kept in `keep` until the call returns.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import GgtoolError
from . import worker
from .backend import backend, last_error, log_lines, start_capture
from .ggml_types import GGML_TYPE_COUNT


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
    arr[len(overrides)].type = GGML_TYPE_COUNT  # as llama-quantize ends the list
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


def _params(ftype: int, imatrix: dict[str, np.ndarray] | None, tensor_types: list[tuple[str, int]],
            kv_overrides: list[tuple[str, str | int]], nthread: int, keep: list, dry_run: bool = False) -> L.llama_model_quantize_params:
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    params.dry_run = dry_run
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
    return params


def _call_quantize(src: str, dest: str, ftype: int, imatrix: dict | None, tensor_types: list,
                   kv_overrides: list, nthread: int) -> tuple[bool, object]:
    """llama_model_quantize itself (in the worker process): (True, its type fallbacks), else (False, llama.cpp's
    reason)."""
    keep: list = []
    params = _params(ftype, imatrix, tensor_types, kv_overrides, nthread, keep)
    backend()
    start_capture()
    rc = L.llama_model_quantize(src.encode(), dest.encode(), ctypes.byref(params))
    if rc != 0:
        return False, last_error()
    return True, fallbacks(log_lines())


_FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+(\w+)\).*"
                       r"-> falling back to\s+(\w+)")


def fallbacks(lines: list[str]) -> list[tuple[str, str, str]]:
    """llama-quant.cpp's tensor_type_fallback warnings: (tensor, wanted type, type used)."""
    return [(m[1], m[2].upper(), m[3].upper()) for ln in lines if (m := _FALLBACK.search(ln))]


def quantize_file(src: Path, dest: Path, ftype: int, imatrix: dict[str, np.ndarray] | None = None,
                  tensor_types: list[tuple[str, int]] = (), kv_overrides: list[tuple[str, str | int]] = (),
                  nthread: int = 0, session=None) -> list[tuple[str, str, str]]:  # noqa: ANN001
    """llama_model_quantize(src → dest) as llama-quantize calls it, in a worker process that Ctrl-C (or any
    exception here) stops at once (`session`: a worker.Session's, for many calls); raises with llama.cpp's
    reason on failure, or says the disk is full.
    Returns the tensors llama.cpp had to give another type than its recipe's (row length not a multiple of
    the type's block): (tensor, wanted type, type used)."""
    args = {"src": str(src), "dest": str(dest), "ftype": int(ftype),
            "imatrix": {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in imatrix.items()} if imatrix else None,
            "tensor_types": [(str(p), int(t)) for p, t in tensor_types],
            "kv_overrides": [(str(k), v) for k, v in kv_overrides], "nthread": int(nthread)}
    ok, answer = (session or worker).run({"job": "quantize", "args": args}, str(src))
    if ok:
        return [tuple(f) for f in answer]
    if _disk_full(dest):  # an OSError, so that the caller's atomic_output names its final file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    raise GgtoolError(f"{src}: llama.cpp could not quantize it: {answer}")


def _disk_full(dest: Path) -> bool:
    """Whether the file system that holds `dest` has (practically) no room left for an unprivileged writer."""
    try:
        st = os.statvfs(dest.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def planned_types(src: Path, ftype: int, tensor_types: list[tuple[str, int]] = (),
                  imatrix: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """The type llama.cpp would give each tensor of `src` (llama-quantize --dry-run: nothing is written, so this
    runs in this process), by tensor name; tensors it leaves as they are (norms, the router, ...) are not listed."""
    keep: list = []
    params = _params(ftype, imatrix, list(tensor_types), [], 0, keep, dry_run=True)
    backend()
    start_capture()
    if L.llama_model_quantize(str(src).encode(), str(src).encode(), ctypes.byref(params)) != 0:
        raise GgtoolError(f"{src}: llama.cpp could not plan its quantization: {last_error()}")
    out = {}
    for line in log_lines():
        m = re.match(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+-.*->.*\((\w+)\)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2).upper()
    return out
