"""Loading a GGUF in llama.cpp through llama-cpp-python's C API: tokenize, logits, generation.

This package is the only place that imports llama_cpp (llama.cpp starts on first use: backend.py).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import gguf
import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import GgtoolError
from . import interrupt, rpc
from .backend import backend, last_error, log_lines, start_capture
from .ggml_types import kv_cache_type

@dataclass
class Sampling:
    """llama.cpp's sampler chain, in llama-cli's order: repetition penalty, top-k, top-p, min-p, temperature,
    then a seeded draw. A temperature of 0 or less is greedy (the penalty still applies)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def _chain(self, n_vocab: int):  # noqa: ANN202 (a llama_sampler pointer)
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if self.repeat_penalty != 1.0 and self.repeat_last_n != 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(n_vocab, self.repeat_last_n,
                                                                            self.repeat_penalty, 0.0, 0.0))
        if self.greedy:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if self.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(self.top_k))
        if self.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(self.top_p, 1))
        if self.min_p > 0.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(self.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(self.temperature))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(self.seed & 0xFFFFFFFF))
        return chain


@dataclass
class ContextOptions:
    """The llama_context_params ggtool sets; everything else keeps llama.cpp's defaults."""

    n_ctx: int = 512
    n_batch: int = 512
    type_k: str = "f16"
    type_v: str = "f16"
    n_threads: int = 0  # 0: every core
    flash_attn: bool | None = False  # llama.cpp's CPU flash attention rounds Q to f16: off for exact comparisons;
    # None: llama.cpp's own default (auto), as llama-imatrix and llama-perplexity run
    n_ubatch: int = 0  # 0: the same as n_batch
    cb_eval: object = None  # a ggml_backend_sched_eval_callback (kept alive by the caller), e.g. imatrix collection


class _TensorBuftOverride(ctypes.Structure):
    """llama_model_tensor_buft_override (llama-cpp-python declares the field as an opaque pointer)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class LlamaModel:
    """A GGUF loaded by llama.cpp (CPU unless n_gpu_layers says otherwise)."""

    def __init__(self, path: Path | str, n_gpu_layers: int = 0, vocab_only: bool = False, *,
                 rpc_servers: Sequence[str] = (), overrides: Sequence[tuple[str, str]] = (),
                 tensor_split: Sequence[float] = ()):
        """`rpc_servers`: HOST:PORT devices (in this order) instead of the local GPUs; `overrides`: (regex,
        buffer type name such as "CPU" or "RPC0") pairs, the first match wins, as llama.cpp's -ot."""
        self.path = Path(path)
        if not self.path.is_file():
            raise GgtoolError(f"{self.path}: no such file")
        backend()
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        self._keep: list[object] = []  # ctypes arrays llama.cpp points into for the model's lifetime
        devices = [dev for endpoint in rpc_servers for dev in rpc.add_server(endpoint)]
        if devices:
            arr = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.cast(arr, ctypes.c_void_p)
            self._keep.append(arr)
        if tensor_split:
            split = (ctypes.c_float * L.LLAMA_MAX_DEVICES)(*tensor_split)
            params.tensor_split = split
            self._keep.append(split)
        if overrides:
            bufts = {"CPU": rpc.cpu_buffer_type()}
            bufts.update({rpc.device_name(d): rpc.device_buffer_type(d) for d in devices})
            arr = (_TensorBuftOverride * (len(overrides) + 1))()
            for i, (pattern, buffer) in enumerate(overrides):
                if buffer not in bufts:
                    raise GgtoolError(f"override {pattern}={buffer}: no buffer type {buffer}",
                                      f"choose one of {', '.join(bufts)}")
                pat = ctypes.create_string_buffer(pattern.encode())
                self._keep.append(pat)
                arr[i].pattern = ctypes.cast(pat, ctypes.c_char_p)
                arr[i].buft = bufts[buffer]
            params.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p)
            self._keep.append(arr)
        start_capture()
        self._model = interrupt.call(L.llama_model_load_from_file, str(self.path).encode(), params)
        if not self._model:
            raise GgtoolError(f"{self.path}: llama.cpp could not load it: {last_error()}")
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)

    def close(self) -> None:
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- vocabulary ---------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """llama.cpp's token ids for `text`."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes one token stands for."""
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self._vocab, token))

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp read it, as a string."""
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def chat_tokens(self) -> tuple[str, str]:
        """The texts of the BOS and EOS tokens as a chat template's bos_token / eos_token ("" where none)."""
        def text(key: str) -> str:
            value = self.meta(key)
            return self.piece(int(value), special=True).decode("utf-8", "replace") if value else ""
        return text(gguf.Keys.Tokenizer.BOS_ID), text(gguf.Keys.Tokenizer.EOS_ID)

    # -- evaluation ---------------------------------------------------------------------------------
    def _context(self, opts: ContextOptions):
        cp = L.llama_context_default_params()
        cp.n_ctx = opts.n_ctx
        cp.n_batch = min(opts.n_batch, opts.n_ctx)
        cp.n_ubatch = min(opts.n_ubatch or cp.n_batch, cp.n_batch)
        cp.type_k = kv_cache_type(opts.type_k)
        cp.type_v = kv_cache_type(opts.type_v)
        cp.n_threads = cp.n_threads_batch = opts.n_threads or os.cpu_count() or 1
        cp.no_perf = True
        cp.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_AUTO if opts.flash_attn is None else
                              L.LLAMA_FLASH_ATTN_TYPE_ENABLED if opts.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if opts.cb_eval is not None:
            cp.cb_eval = opts.cb_eval
        cp.abort_callback = interrupt.ABORT  # Ctrl-C stops a decode between graph nodes
        ctx = L.llama_init_from_model(self._model, cp)
        if not ctx:
            raise GgtoolError(f"{self.path}: llama.cpp could not create a context: {last_error()}")
        return ctx

    @staticmethod
    def _decode(ctx, tokens: list[int], start: int, all_logits: bool) -> None:
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            rc = interrupt.call(L.llama_decode, ctx, batch)
            if rc != 0:
                raise GgtoolError(f"llama_decode failed with code {rc}: {last_error()}")
        finally:
            L.llama_batch_free(batch)

    def logits(self, ids: list[int], opts: ContextOptions | None = None) -> np.ndarray:
        """Logits [n_tokens, n_vocab] for every position of `ids`, one causal sequence."""
        opts = opts or ContextOptions(n_ctx=max(256, len(ids)))
        ctx = self._context(opts)
        try:
            out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
            step = min(opts.n_batch, opts.n_ctx)
            for start in range(0, len(ids), step):
                chunk = ids[start:start + step]
                self._decode(ctx, chunk, start, all_logits=True)
                ptr = L.llama_get_logits(ctx)
                out[start:start + len(chunk)] = np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab))
            return out
        finally:
            L.llama_free(ctx)

    def generate(self, ids: list[int], max_tokens: int, opts: ContextOptions | None = None,
                 sampling: Sampling | None = None) -> list[int]:
        """Continuation of `ids` by llama.cpp's sampler (greedy by default), stopping at end-of-generation."""
        return list(self.stream(ids, max_tokens, opts, sampling))

    def stream(self, ids: list[int], max_tokens: int, opts: ContextOptions | None = None,
               sampling: Sampling | None = None) -> Iterator[int]:
        """Continuation of `ids` (greedy by default), one token id at a time as llama.cpp produces it."""
        opts = opts or ContextOptions(n_ctx=max(256, len(ids) + max_tokens))
        ctx = self._context(opts)
        sampler = (sampling or Sampling())._chain(self.n_vocab)
        try:
            for tok in ids:  # as llama-cli: the prompt counts for the repetition penalty
                L.llama_sampler_accept(sampler, tok)
            step = min(opts.n_batch, opts.n_ctx)
            for start in range(0, len(ids), step):
                self._decode(ctx, ids[start:start + step], start, all_logits=False)
            # one token per step: llama_batch_get_one (position follows the sequence) instead of filling a
            # fresh llama_batch field by field, which costs ~5% of decode speed on small models
            one = (L.llama_token * 1)()
            for _ in range(max_tokens):
                tok = L.llama_sampler_sample(sampler, ctx, -1)
                if self.is_eog(tok):
                    break
                yield tok
                one[0] = tok
                rc = interrupt.call(L.llama_decode, ctx, L.llama_batch_get_one(one, 1))
                if rc != 0:
                    raise GgtoolError(f"llama_decode failed with code {rc}: {last_error()}")
        finally:
            L.llama_sampler_free(sampler)
            L.llama_free(ctx)

    def reserve(self, opts: ContextOptions) -> list[str]:
        """Create and free a context; llama.cpp's log of the load and of the context's buffers."""
        L.llama_free(self._context(opts))
        return log_lines()
