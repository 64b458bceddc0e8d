"""OLMoE (allenai/OLMoE-1B-7B, the base of SmartMoE-1B-7B) -> llama.cpp architecture `olmoe`.

The model card in one screen: pre-norm decoder, whole-vector RMSNorm on Q and K (one weight of size
n_embd, not per head), NeoX RoPE, softmax router over all experts, top-k, weights *not*
renormalised, SwiGLU experts, untied output. llama.cpp's olmoe graph hard-codes exactly that, so
every setting that would change it (norm_topk_prob, clip_qkv, biases, GQA, rope scaling, other
activations) is refused rather than converted into a file that computes something else.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..checkpoint import Checkpoint
from ..errors import GgtoolError
from .base import HParam, cfg, refuse_settings
from .hf_moe import T, HfMoeDecoder, MoeDims, hparams_from

K = gguf.Keys
# config.json key(s) -> GGUF key (gguf-py's, under `olmoe.`)
HPARAMS = [
    (K.LLM.CONTEXT_LENGTH, ("max_position_embeddings",), "u32"),
    (K.LLM.EMBEDDING_LENGTH, ("hidden_size",), "u32"),
    (K.LLM.BLOCK_COUNT, ("num_hidden_layers",), "u32"),
    (K.LLM.FEED_FORWARD_LENGTH, ("intermediate_size",), "u32"),
    (K.Attention.HEAD_COUNT, ("num_attention_heads",), "u32"),
    (K.Attention.HEAD_COUNT_KV, ("num_key_value_heads", "num_attention_heads"), "u32"),
    (K.Rope.FREQ_BASE, ("rope_parameters.rope_theta", "rope_theta"), "f32"),
    (K.Attention.LAYERNORM_RMS_EPS, ("rms_norm_eps",), "f32"),
    (K.LLM.EXPERT_COUNT, ("num_experts",), "u32"),
    (K.LLM.EXPERT_USED_COUNT, ("num_experts_per_tok",), "u32"),
]

# settings llama.cpp's olmoe graph cannot express: (config key, value llama.cpp assumes, why)
REFUSED = [
    ("norm_topk_prob", False,
     "transformers renormalises the top-k routing weights, but llama.cpp's olmoe graph never does, so the GGUF "
     "would compute different outputs (llama.cpp's own converter writes it anyway: top-1 agreement drops to 57%); "
     "no llama.cpp architecture combines OLMoE's whole-vector q/k norm with renormalised routing"),
    ("clip_qkv", None, "llama.cpp's olmoe graph does not clamp Q/K/V, so the clipping would be lost"),
    ("attention_bias", False, "llama.cpp's olmoe graph has no attention biases"),
    ("hidden_act", "silu", "llama.cpp's olmoe experts are SwiGLU (silu) only"),
    ("rope_scaling", None, "rope scaling is not applied by ggtool's olmoe mapping"),
]


class Olmoe(HfMoeDecoder):
    # checkpoint tensors of block {bid} -> GGUF tensor, in file order (embedding, final norm, head: the base's)
    BLOCK = (
        (T.ATTN_NORM, "model.layers.{bid}.input_layernorm.weight"),
        (T.ATTN_Q, "model.layers.{bid}.self_attn.q_proj.weight"),
        (T.ATTN_K, "model.layers.{bid}.self_attn.k_proj.weight"),
        (T.ATTN_V, "model.layers.{bid}.self_attn.v_proj.weight"),
        (T.ATTN_OUT, "model.layers.{bid}.self_attn.o_proj.weight"),
        (T.ATTN_Q_NORM, "model.layers.{bid}.self_attn.q_norm.weight"),
        (T.ATTN_K_NORM, "model.layers.{bid}.self_attn.k_norm.weight"),
        (T.FFN_NORM, "model.layers.{bid}.post_attention_layernorm.weight"),
        (T.FFN_GATE_INP, "model.layers.{bid}.mlp.gate.weight"),
    )
    # per-expert tensors ({xid}) stacked into one 3-D GGUF tensor per block
    EXPERTS = (
        (T.FFN_GATE_EXP, "model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight"),
        (T.FFN_UP_EXP, "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight"),
        (T.FFN_DOWN_EXP, "model.layers.{bid}.mlp.experts.{xid}.down_proj.weight"),
    )
    FUSED = ("model.layers.{bid}.mlp.experts.gate_up_proj", "model.layers.{bid}.mlp.experts.down_proj")
    OUTPUT_REQUIRED = True  # llama.cpp's olmoe requires output.weight

    def __init__(self) -> None:
        super().__init__(name="olmoe", title="OLMoE (OlmoeForCausalLM)", arch="olmoe",
                         ignored_tensors=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",))

    def describes(self, config: dict) -> bool:
        return config.get("model_type") == "olmoe" or "OlmoeForCausalLM" in (config.get("architectures") or [])

    def check(self, ckpt: Checkpoint) -> None:
        c = ckpt.config
        rope = c.get("rope_parameters") or {}
        refuse_settings({**c, "rope_scaling": c.get("rope_scaling") or (
            None if rope.get("rope_type", "default") == "default" else rope)}, REFUSED, self.arch)
        heads, kv = cfg(c, "num_attention_heads"), cfg(c, "num_key_value_heads", "num_attention_heads")
        if heads != kv:
            raise GgtoolError(f"config.json sets num_key_value_heads={kv} != num_attention_heads={heads}: "
                              "llama.cpp's olmoe graph applies one whole-vector k norm of size n_embd, so it "
                              "cannot run grouped-query OLMoE", "ggtool refuses rather than convert it wrong")
        head_dim = c.get("head_dim") or cfg(c, "hidden_size") // heads
        if head_dim * heads != cfg(c, "hidden_size"):
            raise GgtoolError(f"config.json sets head_dim={head_dim}, but llama.cpp's olmoe graph needs "
                              "num_attention_heads * head_dim == hidden_size")

    def hparams(self, ckpt: Checkpoint) -> list[HParam]:
        return hparams_from(ckpt.config, HPARAMS)

    def dims(self, config: dict) -> MoeDims:
        n_embd, n_head = cfg(config, "hidden_size"), cfg(config, "num_attention_heads")
        return MoeDims(n_vocab=cfg(config, "vocab_size"), n_embd=n_embd, n_layer=cfg(config, "num_hidden_layers"),
                       n_head=n_head, n_head_kv=cfg(config, "num_key_value_heads", "num_attention_heads"),
                       head_dim=n_embd // n_head, n_ff=cfg(config, "intermediate_size"),
                       n_expert=cfg(config, "num_experts"), n_expert_used=cfg(config, "num_experts_per_tok"),
                       n_ctx_train=cfg(config, "max_position_embeddings"),
                       tied=bool(config.get("tie_word_embeddings", False)))

    def reference_logits(self, folder: Path, ids: list[int]) -> np.ndarray:
        from .reference import transformers_logits

        return transformers_logits(folder, ids, "OlmoeForCausalLM")
