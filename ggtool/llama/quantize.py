"""llama_model_quantize with an importance matrix, tensor-type overrides and KV overrides, through ctypes,
run in a forked child process so that Ctrl-C stops it.

llama.cpp reads every array below through raw pointers during the call, so each ctypes array, bytes
object and numpy buffer is kept in `keep` until the call returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
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
                  nthread: int = 0) -> None:
    """llama_model_quantize(src → dest) as llama-quantize calls it; raises with llama.cpp's reason on failure."""
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
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
    _run_in_child(src, dest, params)


def _run_in_child(src: Path, dest: Path, params: L.llama_model_quantize_params) -> None:
    """llama_model_quantize in a forked child, so that Ctrl-C (or any exception) in this process stops it at
    once: llama.cpp's quantization has no abort callback and runs for minutes on a large model. The child
    dies with us (PR_SET_PDEATHSIG); its reason for a failure comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: quantize, report, exit without running any of the parent's cleanup
        status = 3
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
            _die_with_parent()
            _model._LOG.clear()
            rc = L.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
            status = 0 if rc == 0 else 1
            if rc != 0:
                os.write(w, _model._last_error().encode("utf-8", "replace")[:8192])
        finally:
            os._exit(status)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            reason = pipe.read().decode("utf-8", "replace")
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C or anything else: stop the child before the caller removes its file
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        raise GgtoolError(f"{src}: llama.cpp died quantizing it (signal {os.WTERMSIG(status)}): "
                          f"{reason or 'no log output'}")
    if os.WEXITSTATUS(status) != 0:
        if _disk_full(dest):
            name = re.sub(r"^\.(.+)\.\d+\.partial$", r"\1", dest.name)  # the final name, not atomic_output's
            raise GgtoolError(f"{dest.parent}: no space left on the device while writing {name}",
                              "free some space or choose another output folder")
        raise GgtoolError(f"{src}: llama.cpp could not quantize it: {reason or 'no log output'}")


def _disk_full(dest: Path) -> bool:
    """Whether the file system that holds `dest` has (practically) no room left for an unprivileged writer."""
    try:
        st = os.statvfs(dest.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _die_with_parent() -> None:
    """Have the kernel kill this (child) process when its parent dies (Linux); elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
