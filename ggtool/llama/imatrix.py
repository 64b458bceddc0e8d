"""Collecting an importance matrix in llama.cpp's eval callback, as llama-imatrix does.

The scheduler asks the callback about every graph node (`ask=True`); for the matrix multiplications
we want we answer yes, and it calls again (`ask=False`) once the node's inputs are computed. We then
read the activation (`src1`) and, for MUL_MAT_ID, the routed expert ids (`src2`) and add the squared
activations per input column, per expert. All accumulation is vectorised numpy: a per-row Python loop
would cost more than the forward pass itself.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable

import gguf
import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import GgtoolError
from . import interrupt
from .ggml_types import GGML_TYPES
from .model import ContextOptions, LlamaModel

_lib = L._lib
GGML_TYPE_F32 = GGML_TYPES["F32"]
# the weights llama-imatrix collects for: the blocks' (tools/imatrix/imatrix.cpp compares the name prefix)
BLOCK_PREFIX = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ATTN_NORM].partition("{")[0]


class GgmlTensor(ctypes.Structure):
    """The public `struct ggml_tensor` (ggml.h), which llama-cpp-python does not bind."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


assert ctypes.sizeof(GgmlTensor) == 336, "ggml_tensor layout changed: update GgmlTensor"
_OFF_OP = GgmlTensor.op.offset
_OFF_SRC = GgmlTensor.src.offset
_OFF_NE = GgmlTensor.ne.offset
_OFF_NAME = GgmlTensor.name.offset

# private prototypes, so that no other module's argtypes on the shared library objects can clash with ours
_op_name = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_int)(("ggml_op_name", _lib))
_nbytes = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(("ggml_nbytes", _lib))
_is_host = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)(("ggml_backend_buffer_is_host", _lib))
_tensor_get = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)(
    ("ggml_backend_tensor_get", _lib))


def _op_number(name: str) -> int:
    """The enum value of a ggml op in this build, found by name (the numbering moves between versions)."""
    for i in range(200):
        if _op_name(i) == name.encode():
            return i
    raise RuntimeError(f"ggml op {name} not found in this llama.cpp build")


OP_MUL_MAT = _op_number("MUL_MAT")
OP_MUL_MAT_ID = _op_number("MUL_MAT_ID")


def weight_name(raw: bytes) -> str:
    """A weight's name without backend decorations: CUDA0#blk.0.attn_k.weight#0 → blk.0.attn_k.weight."""
    s = raw.decode("utf-8", "replace")
    if "#" in s:
        s = s.split("#")[1]
    return s


def _view(t: GgmlTensor, dtype: np.dtype) -> np.ndarray:
    """The tensor's data as a numpy array [ne3, ne2, ne1, ne0] honouring its byte strides (copied off-device)."""
    n = _nbytes(ctypes.addressof(t))
    if t.buffer and _is_host(t.buffer):
        buf = np.frombuffer((ctypes.c_char * n).from_address(t.data), dtype=np.uint8)
    else:
        buf = np.empty(n, dtype=np.uint8)
        _tensor_get(ctypes.addressof(t), buf.ctypes.data, 0, n)
    shape = tuple(int(x) for x in reversed(t.ne))
    strides = tuple(int(x) for x in reversed(t.nb))
    return np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)


@dataclass
class Accumulator:
    """Per-input-column sums of squared activations and token counts, one row per expert (1 for dense)."""

    sums: np.ndarray  # float64 [n_mat, n_per_row]
    counts: np.ndarray  # int64 [n_mat]


@dataclass
class ImatrixCollector:
    """The eval callback and what it has gathered so far."""

    stats: dict[str, Accumulator] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        self.callback = L.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the collector

    def _wanted(self, ptr: int) -> bool:
        op = ctypes.c_int.from_address(ptr + _OFF_OP).value
        if op == OP_MUL_MAT_ID:
            return True
        if op != OP_MUL_MAT:
            return False
        src0 = ctypes.c_void_p.from_address(ptr + _OFF_SRC).value
        src1 = ctypes.c_void_p.from_address(ptr + _OFF_SRC + 8).value
        n_rows = ctypes.c_int64.from_address(src1 + _OFF_NE + 8).value
        if n_rows < 16 or ctypes.c_int.from_address(src1).value != GGML_TYPE_F32:
            return False  # as llama-imatrix: small batches (generation) and quantized activations are skipped
        return weight_name(ctypes.string_at(src0 + _OFF_NAME)).startswith(BLOCK_PREFIX)

    def _on_node(self, ptr: int, ask: bool, user_data: int) -> bool:
        if self.error or interrupt.pending():
            return False  # Ctrl-C: stop computing; the decode's caller raises KeyboardInterrupt
        try:
            if ask:
                return self._wanted(ptr)
            t = GgmlTensor.from_address(ptr)
            if t.op == OP_MUL_MAT_ID:
                self._add_mul_mat_id(t)
            else:
                self._add_mul_mat(t)
            return True
        except Exception as e:  # noqa: BLE001 - an exception cannot cross the C boundary: report after decode
            self.error = str(e)
            return False  # stops the rest of this graph split
        except BaseException as e:  # noqa: BLE001 - e.g. KeyboardInterrupt: raised when the decode returns
            interrupt.record(e)
            return False

    def _entry(self, name: str, n_mat: int, ne0: int) -> Accumulator:
        acc = self.stats.get(name)
        if acc is None:
            acc = self.stats[name] = Accumulator(np.zeros((n_mat, ne0)), np.zeros(n_mat, dtype=np.int64))
        elif acc.sums.shape != (n_mat, ne0):
            raise ValueError(f"inconsistent size for {name}: {acc.sums.shape} vs {(n_mat, ne0)}")
        return acc

    def _add_mul_mat(self, t: GgmlTensor) -> None:
        src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
        name = weight_name(src0.name)
        ne0 = int(src1.ne[0])
        n_mat = int(src0.ne[2] * src0.ne[3])
        x = _view(src1, np.float32)  # [ne3, ne2, ne1, ne0]
        acc = self._entry(name, n_mat, ne0)
        if n_mat == 1:  # the usual case: 3-D/4-D activations flattened onto one matrix
            flat = x.reshape(-1, ne0)
            add = np.einsum("rc,rc->c", flat, flat)[None, :]
        else:  # batched matmul against a 3-D/4-D weight: activation matrix (i2, i3) uses weight matrix mat_id
            add = np.zeros((n_mat, ne0))
            for i3 in range(x.shape[0]):
                for i2 in range(x.shape[1]):
                    mat = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                    add[mat] += np.einsum("rc,rc->c", x[i3, i2], x[i3, i2])
        if not np.isfinite(add).all():
            raise ValueError(f"non-finite activations reached {name}")
        acc.sums += add
        acc.counts += int(np.prod(src1.ne[1:4])) // n_mat

    def _add_mul_mat_id(self, t: GgmlTensor) -> None:
        src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
        ids_t = GgmlTensor.from_address(t.src[2])
        name = weight_name(src0.name)
        n_as, ne0 = int(src0.ne[2]), int(src1.ne[0])
        x = _view(src1, np.float32)[0]  # [n_tokens, ne1 (n_expert_used, or 1 when broadcast), ne0]
        ids = _view(ids_t, np.int32)[0, 0]  # [n_tokens, n_expert_used], strided: read through the view
        if x.shape[0] != ids.shape[0] or src1.ne[3] != 1:
            raise ValueError(f"unexpected MUL_MAT_ID shapes for {name}")
        n_tokens, ne1 = x.shape[0], x.shape[1]
        n_ids = ids.shape[1]
        ex = ids.reshape(-1).astype(np.int64)  # slot (token, idx) in row-major order
        if ex.size and (ex.min() < 0 or ex.max() >= n_as):
            raise ValueError(f"expert id out of range in {name}")
        rows = np.repeat(np.arange(n_tokens) * ne1, n_ids) + np.tile(np.arange(n_ids) % ne1, n_tokens)
        order = np.argsort(ex, kind="stable")
        counts = np.bincount(ex, minlength=n_as)
        used = np.nonzero(counts)[0]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[used]
        gathered = x.reshape(n_tokens * ne1, ne0)[rows[order]]
        gathered *= gathered  # a fresh copy from the fancy index: square it in place
        add = np.add.reduceat(gathered, starts, axis=0, dtype=np.float64)  # one row per routed-to expert
        if not np.isfinite(add).all():
            raise ValueError(f"non-finite activations reached {name}")
        acc = self._entry(name, n_as, ne0)
        acc.sums[used] += add
        acc.counts += counts


def evaluate_chunks(model: LlamaModel, chunks: list[list[int]], collector: ImatrixCollector | None = None,
                    n_threads: int = 0, progress: Callable[[int, int], None] | None = None) -> None:
    """Decode each chunk as one fresh sequence with every token an output (so the last layer sees all of them),
    with `collector`'s callback installed if given."""
    if not chunks:
        return
    size = max(len(c) for c in chunks)
    # flash attention as llama.cpp decides (auto), like llama-imatrix: then the two agree token for token
    opts = ContextOptions(n_ctx=size, n_batch=size, n_threads=n_threads, flash_attn=None,
                          cb_eval=collector.callback if collector else None)
    ctx = model._context(opts)
    try:
        memory = L.llama_get_memory(ctx)
        for i, chunk in enumerate(chunks):
            L.llama_memory_clear(memory, True)
            try:
                model._decode(ctx, chunk, 0, all_logits=True)
            except GgtoolError:
                if collector and collector.error:
                    break
                raise
            if collector and collector.error:
                break
            if progress:
                progress(i + 1, len(chunks))
    finally:
        L.llama_free(ctx)
    if collector and collector.error:
        raise GgtoolError(f"{model.path}: collecting the importance matrix failed: {collector.error}",
                          "the model produces non-finite activations on this text" if "non-finite" in collector.error
                          else None)



def bos_token(model: LlamaModel) -> int | None:
    """The vocabulary's BOS token id, or None if it has none."""
    bos = L.llama_vocab_bos(model._vocab)
    return None if bos < 0 else int(bos)


def adds_bos(model: LlamaModel) -> bool:
    """Whether the vocabulary asks for BOS at the start of a sequence (tokenizer.ggml.add_bos_token)."""
    return bool(L.llama_vocab_get_add_bos(model._vocab))
