"""Hugging Face-style MoE decoders (OLMoE, Mixtral / neo-3): the layout once, each family a set of tables.

Such a checkpoint is an embedding, n_layer blocks of attention + router + experts, a final norm and an
LM head (or a tied one). The experts come per expert (`...experts.{xid}.gate_proj.weight`, stacked here
into one 3-D GGUF tensor per block) or fused (`experts.gate_up_proj` / `down_proj`, the layout
transformers >= 5 keeps in memory and may save). Every GGUF shape follows from one `MoeDims` record read
from config.json, so the same description answers both "which tensors does this checkpoint become"
(`tensor_plan`, for convert) and "which tensors and shapes would this config produce" (`layout`, for the
planner's what-if path). GGUF names and keys are gguf-py's (`MODEL_TENSOR`, `TENSOR_NAMES`, `Keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import gguf
import numpy as np

from ..checkpoint import Checkpoint
from .base import Family, HParam, Part, PlannedTensor

T = gguf.MODEL_TENSOR
K = gguf.Keys
# GGUF keys whose values are sizes of the dims record (MoeDims attribute), written in the order a family lists them
SIZE_KEYS = {K.LLM.CONTEXT_LENGTH: "n_ctx_train", K.LLM.EMBEDDING_LENGTH: "n_embd", K.LLM.BLOCK_COUNT: "n_layer",
             K.LLM.FEED_FORWARD_LENGTH: "n_ff", K.Attention.HEAD_COUNT: "n_head",
             K.Attention.HEAD_COUNT_KV: "n_head_kv", K.LLM.EXPERT_COUNT: "n_expert",
             K.LLM.EXPERT_USED_COUNT: "n_expert_used"}
SIZES = (K.LLM.CONTEXT_LENGTH, K.LLM.EMBEDDING_LENGTH, K.LLM.BLOCK_COUNT, K.LLM.FEED_FORWARD_LENGTH,
         K.Attention.HEAD_COUNT, K.Attention.HEAD_COUNT_KV)
EXPERT_SIZES = (K.LLM.EXPERT_COUNT, K.LLM.EXPERT_USED_COUNT)
# the attention half of a transformers Llama-style block, which its MoE descendants keep under the same names
ATTENTION = (
    (T.ATTN_NORM, "model.layers.{bid}.input_layernorm.weight"),
    (T.ATTN_Q, "model.layers.{bid}.self_attn.q_proj.weight"),
    (T.ATTN_K, "model.layers.{bid}.self_attn.k_proj.weight"),
    (T.ATTN_V, "model.layers.{bid}.self_attn.v_proj.weight"),
    (T.ATTN_OUT, "model.layers.{bid}.self_attn.o_proj.weight"),
)
FFN_NORM = (T.FFN_NORM, "model.layers.{bid}.post_attention_layernorm.weight")


def tensor_name(tensor: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    """The GGUF name of a weight: gguf-py's name for `tensor` (block `bid`) plus `.weight`."""
    return gguf.TENSOR_NAMES[tensor].format(bid=bid) + ".weight"


@dataclass(frozen=True)
class MoeDims:
    """The sizes that fix every tensor shape of a decoder (read from config.json by the family)."""

    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int  # one expert's intermediate width
    n_expert: int
    n_expert_used: int
    n_ctx_train: int
    tied: bool  # tie_word_embeddings: the LM head is the token embedding

    def hparams(self, keys: tuple[str, ...]) -> list[HParam]:
        """The u32 GGUF keys (gguf-py's, from SIZE_KEYS) that state these sizes."""
        return [HParam(key, getattr(self, SIZE_KEYS[key])) for key in keys]

    def shapes(self) -> dict[gguf.MODEL_TENSOR, tuple[int, ...]]:
        """numpy-order shape of every tensor such a decoder may have."""
        q, kv, e, ff = self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.n_embd, self.n_ff
        return {
            T.TOKEN_EMBD: (self.n_vocab, e), T.OUTPUT_NORM: (e,), T.OUTPUT: (self.n_vocab, e),
            T.ATTN_NORM: (e,), T.ATTN_Q: (q, e), T.ATTN_K: (kv, e), T.ATTN_V: (kv, e), T.ATTN_OUT: (e, q),
            T.ATTN_Q_NORM: (q,), T.ATTN_K_NORM: (kv,), T.FFN_NORM: (e,), T.FFN_GATE_INP: (self.n_expert, e),
            T.FFN_GATE_EXP: (self.n_expert, ff, e), T.FFN_UP_EXP: (self.n_expert, ff, e),
            T.FFN_DOWN_EXP: (self.n_expert, e, ff),
        }


class HfMoeDecoder(Family):
    """A transformers MoE decoder: subclasses give the tables below, `dims`, `hparams` and their checks.

    Checkpoint names are templates: `{bid}` is the block, `{xid}` the expert, and any key `sources()` returns
    (e.g. Mixtral's `{moe}` module name) is filled in from the checkpoint's own names.
    """

    EMBED: ClassVar[str] = "model.embed_tokens.weight"
    FINAL_NORM: ClassVar[str] = "model.norm.weight"
    LM_HEAD: ClassVar[str] = "lm_head.weight"
    BLOCK: ClassVar[tuple[tuple[gguf.MODEL_TENSOR, str], ...]] = ()  # per-block tensors, in file order
    EXPERTS: ClassVar[tuple[tuple[gguf.MODEL_TENSOR, str], ...]] = ()  # per-expert: gate, up, down
    FUSED: ClassVar[tuple[str, str]] = ("", "")  # fused gate_up [E, 2*ff, embd] (gate half first), down [E, embd, ff]
    # True when llama.cpp's graph needs output.weight even for tied embeddings (the embedding is written there)
    OUTPUT_REQUIRED: ClassVar[bool] = False

    def dims(self, config: dict) -> MoeDims:
        raise NotImplementedError

    def sources(self, names: set[str] | frozenset[str]) -> dict[str, str]:
        """Extra template keys of the checkpoint names, decided by the names present (none by default)."""
        return {}

    def transforms(self, d: MoeDims) -> dict[gguf.MODEL_TENSOR, Callable[[np.ndarray], np.ndarray]]:
        """Row reorderings applied on the way into the GGUF (none by default)."""
        return {}

    def tensor_plan(self, ckpt: Checkpoint) -> list[PlannedTensor]:
        return self._tensors(self.dims(ckpt.config), ckpt.names)

    def layout(self, config: dict) -> list[tuple[str, tuple[int, ...]]]:
        """GGUF tensor names and numpy-order shapes a checkpoint with this config.json converts to."""
        return [(t.name, t.shape) for t in self._tensors(self.dims(config), frozenset())]

    def _tensors(self, d: MoeDims, names: set[str] | frozenset[str]) -> list[PlannedTensor]:
        shapes, transforms, subs = d.shapes(), self.transforms(d), self.sources(names)

        def single(tensor: gguf.MODEL_TENSOR, src: str, bid: int | None = None) -> PlannedTensor:
            shape = shapes[tensor]
            force = "F32" if tensor == T.FFN_GATE_INP else None  # the router stays F32, as llama.cpp keeps it
            return PlannedTensor(tensor_name(tensor, bid), shape, [Part(src, shape, transform=transforms.get(tensor))],
                                 force_type=force)

        plan = [single(T.TOKEN_EMBD, self.EMBED)]
        gate_up, down = self.FUSED
        fused = gate_up.format(bid=0, **subs) in names
        for b in range(d.n_layer):
            plan += [single(tensor, src.format(bid=b, **subs), b) for tensor, src in self.BLOCK]
            if fused:
                plan += fused_experts(b, gate_up.format(bid=b, **subs), down.format(bid=b, **subs), d)
            else:
                for tensor, src in self.EXPERTS:
                    shape = shapes[tensor]
                    parts = [Part(src.format(bid=b, xid=x, **subs), shape[1:]) for x in range(d.n_expert)]
                    plan.append(PlannedTensor(tensor_name(tensor, b), shape, parts))
        plan.append(single(T.OUTPUT_NORM, self.FINAL_NORM))
        if not d.tied:
            plan.append(single(T.OUTPUT, self.LM_HEAD))
        elif self.LM_HEAD in names:
            # transformers ties lm_head to the embedding and ignores a stored copy; the copy is consumed here
            # (so the unknown-tensor check passes) and the embedding written, which is what the model computes
            shape = shapes[T.OUTPUT]
            plan.append(PlannedTensor(tensor_name(T.OUTPUT), shape,
                                      [Part(self.LM_HEAD, shape, loader=lambda ck: ck.read(self.EMBED))]))
        elif self.OUTPUT_REQUIRED:
            plan.append(single(T.OUTPUT, self.EMBED))  # the embedding written as the head is exact
        # otherwise no output.weight: llama.cpp falls back to token_embd
        return plan


def fused_experts(b: int, gate_up: str, down: str, d: MoeDims) -> list[PlannedTensor]:
    """Block b's ffn_{gate,up,down}_exps from fused tensors (gate_up [E, 2*ff, embd] with the gate half first,
    down [E, embd, ff]), one expert per part."""
    n_expert, n_ff, n_embd = d.n_expert, d.n_ff, d.n_embd
    fused_shape = (n_expert, 2 * n_ff, n_embd)
    return [
        PlannedTensor(tensor_name(T.FFN_GATE_EXP, b), (n_expert, n_ff, n_embd),
                      [Part(gate_up, fused_shape, index=(x, slice(0, n_ff))) for x in range(n_expert)]),
        PlannedTensor(tensor_name(T.FFN_UP_EXP, b), (n_expert, n_ff, n_embd),
                      [Part(gate_up, fused_shape, index=(x, slice(n_ff, 2 * n_ff))) for x in range(n_expert)]),
        PlannedTensor(tensor_name(T.FFN_DOWN_EXP, b), (n_expert, n_embd, n_ff),
                      [Part(down, (n_expert, n_embd, n_ff), index=x) for x in range(n_expert)]),
    ]

