"""What every source family provides, and the shared machinery for tables of names and keys.

A family module declares: how to recognise its checkpoints, which hyperparameters become which GGUF
keys (and which settings llama.cpp's graph cannot express, so they are refused), and a table from
checkpoint tensor names to GGUF tensor names. The converter streams the resulting tensor plan.
Hugging Face-style MoE decoders share one description of their layout (hf_moe.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..checkpoint import FLOAT_DTYPES, Checkpoint
from ..errors import GgtoolError
from ..vocab import Vocab, load_bpe_vocab


@dataclass
class Part:
    """One source tensor (or a slice of it) that becomes a consecutive piece of a GGUF tensor."""

    source: str
    expect: tuple[int, ...]  # the source tensor's shape as config.json implies it
    index: Any = None  # numpy index applied to the source (e.g. one expert of a fused tensor)
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    loader: Callable[[Checkpoint], np.ndarray] | None = None  # for sources that are not plain tensors

    def load(self, ckpt: Checkpoint) -> np.ndarray:
        """The part as float32 (or the source dtype for non-float tensors)."""
        arr = self.loader(ckpt) if self.loader else ckpt.read(self.source)
        if self.index is not None:
            arr = arr[self.index]
        if self.transform is not None:
            arr = self.transform(arr)
        return arr


@dataclass
class PlannedTensor:
    """A GGUF tensor: its name, numpy-order shape and the parts concatenated along axis 0."""

    name: str
    shape: tuple[int, ...]
    parts: list[Part]
    force_type: str | None = None  # "F32" for tensors llama.cpp keeps in full precision


@dataclass
class HParam:
    """One GGUF key and its value: a gguf-py key (`gguf.Keys`, `{arch}` filled in on writing), an absolute
    `general.`/`tokenizer.` key, or a name relative to `{arch}.`."""

    key: str
    value: Any
    kind: str = "u32"  # u32 | f32 | bool | str | i32 | arr_i32


@dataclass
class Family:
    """Base class of a source family; subclasses fill in the tables and the few lines that differ."""

    name: str = ""  # short id used on the command line and in messages
    title: str = ""  # what a person would call it
    arch: str = ""  # llama.cpp architecture written to general.architecture
    ignored_tensors: tuple[str, ...] = field(default_factory=tuple)  # regexes of names safe to drop
    # False when no llama.cpp graph computes `arch`: run/quantize refuse the GGUF with this reason, and verify
    # compares the reference on the GGUF read back (gguf_reference_logits) instead of llama.cpp
    runnable: bool = True
    not_runnable_reason: str = ""
    # True when `arch` comes from ggtool's llama.cpp patches (patches/llama.cpp): a stock build lacks it
    patched_arch: bool = False

    def detect(self, ckpt: Checkpoint) -> bool:
        """Whether this family converts the checkpoint (by default: whether its config.json names the family)."""
        return self.describes(ckpt.config)

    def check(self, ckpt: Checkpoint) -> None:
        """Refuse settings the target graph would silently ignore."""

    def hparams(self, ckpt: Checkpoint) -> list[HParam]:
        raise NotImplementedError

    def tensor_plan(self, ckpt: Checkpoint) -> list[PlannedTensor]:
        """The GGUF tensors this checkpoint becomes, each with the source parts it is streamed from."""
        raise NotImplementedError

    def describes(self, config: dict) -> bool:
        """Whether config.json alone names this family (for questions asked without weights)."""
        return False

    def layout(self, config: dict) -> list[tuple[str, tuple[int, ...]]]:
        """GGUF tensor names and numpy-order shapes a checkpoint with this config.json converts to."""
        raise GgtoolError(f"{self.title}: the tensor shapes do not follow from config.json alone",
                          "convert the checkpoint and give the GGUF instead")

    def vocab_size(self, ckpt: Checkpoint) -> int:
        """Rows of the token embedding, which the GGUF vocabulary is padded to."""
        return int(cfg(ckpt.config, "vocab_size"))

    def vocab(self, ckpt: Checkpoint) -> Vocab:
        """The GGUF vocabulary; byte-level BPE from tokenizer.json unless the family says otherwise."""
        return load_bpe_vocab(ckpt.folder, self.vocab_size(ckpt), ckpt.config)

    def reference_logits(self, folder, ids: list[int]) -> np.ndarray:
        """Logits [n_tokens, n_vocab] of an independent reference implementation for `ids`."""
        raise NotImplementedError

    def gguf_reference_logits(self, path, ids: list[int]) -> np.ndarray:
        """The same reference run on the weights and keys of a GGUF read back (for families that are not runnable)."""
        raise NotImplementedError

    def gguf_token_ids(self, path, text: str) -> list[int]:
        """`text` tokenized as the GGUF's vocabulary describes, special tokens added (when llama.cpp cannot load it)."""
        raise NotImplementedError


def cfg(config: dict, *keys: str, default: Any = ...) -> Any:
    """The first of `keys` present in config.json, else `default` (an error if none is given)."""
    for key in keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    if default is ...:
        raise GgtoolError(f"config.json lacks {keys[0]}", "the checkpoint's config.json is incomplete")
    return default


def refuse_settings(config: dict, table: list[tuple[str, Any, str]], arch: str) -> None:
    """Refuse every (key, value the graph assumes, why) whose config.json value differs (None means unset)."""
    for key, assumed, why in table:
        value = config.get(key, assumed)
        if value is not None and value != assumed:
            raise GgtoolError(f"config.json sets {key}={value!r}: {why}",
                              f"ggtool refuses to write a GGUF that llama.cpp's {arch} graph would run differently")


def unknown_tensors(ckpt: Checkpoint, plan: list[PlannedTensor], ignored: tuple[str, ...]) -> list[str]:
    """Checkpoint tensors the tensor plan does not consume and no ignore rule covers."""
    used = {p.source for t in plan for p in t.parts}
    return sorted(n for n in ckpt.names - used if not any(re.fullmatch(rx, n) for rx in ignored))


def validate_plan(ckpt: Checkpoint, plan: list[PlannedTensor], ignored: tuple[str, ...]) -> None:
    """Every source present with the shape config.json implies; nothing unexplained left over."""
    for t in plan:
        for p in t.parts:
            if p.loader is not None:
                continue
            if p.source not in ckpt.entries:
                raise GgtoolError(f"tensor {p.source} is missing from the checkpoint (needed for {t.name})",
                                  "the checkpoint is incomplete or its config.json does not match its weights")
            dtype = ckpt.entry(p.source).dtype
            if dtype not in FLOAT_DTYPES:
                raise GgtoolError(f"tensor {p.source} is stored as {dtype}, which does not convert exactly to float "
                                  f"weights (needed for {t.name})", "re-save the checkpoint's weights as floats")
            got = ckpt.shape(p.source)
            if got != p.expect:
                raise GgtoolError(f"tensor {p.source} has shape {list(got)} but config.json implies {list(p.expect)}",
                                  "the weights and config.json disagree; use the config.json saved with these weights")
    extra = unknown_tensors(ckpt, plan, ignored)
    if extra:
        shown = ", ".join(extra[:6]) + (f" and {len(extra) - 6} more" if len(extra) > 6 else "")
        raise GgtoolError(f"the checkpoint has tensors this family's table does not know: {shown}",
                          "they would be dropped silently; this checkpoint is not the format ggtool expects")
