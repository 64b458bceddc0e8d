"""OLMoE (allenai/OLMoE-1B-7B, the base of SmartMoE-1B-7B) -> llama.cpp architecture `olmoe`.

The model card in one screen: pre-norm decoder, whole-vector RMSNorm on Q and K (one weight of size
n_embd, not per head), NeoX RoPE, softmax router over all experts, top-k, weights *not*
renormalised, SwiGLU experts, untied output. llama.cpp's olmoe graph hard-codes exactly that, so
every setting that would change it (norm_topk_prob, clip_qkv, biases, GQA, rope scaling, other
activations) is refused rather than converted into a file that computes something else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import GgtoolError
from .base import Family, HParam, Part, PlannedTensor, cfg, fused_experts, refuse_settings

# checkpoint name -> GGUF name; {bid} is the block index
TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight": "blk.{bid}.attn_q.weight",
    "model.layers.{bid}.self_attn.k_proj.weight": "blk.{bid}.attn_k.weight",
    "model.layers.{bid}.self_attn.v_proj.weight": "blk.{bid}.attn_v.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.self_attn.q_norm.weight": "blk.{bid}.attn_q_norm.weight",
    "model.layers.{bid}.self_attn.k_norm.weight": "blk.{bid}.attn_k_norm.weight",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.mlp.gate.weight": "blk.{bid}.ffn_gate_inp.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# per-expert checkpoint names ({xid} = expert) stacked into one 3-D GGUF tensor per block
EXPERTS = {
    "model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight": "blk.{bid}.ffn_gate_exps.weight",
    "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight": "blk.{bid}.ffn_up_exps.weight",
    "model.layers.{bid}.mlp.experts.{xid}.down_proj.weight": "blk.{bid}.ffn_down_exps.weight",
}
# the fused layout transformers >= 5 keeps in memory (and may save): gate and up halves in one tensor
FUSED_GATE_UP = "model.layers.{bid}.mlp.experts.gate_up_proj"
FUSED_DOWN = "model.layers.{bid}.mlp.experts.down_proj"

# config.json key(s) -> GGUF key under `olmoe.`
HPARAMS = [
    ("context_length", ("max_position_embeddings",), "u32"),
    ("embedding_length", ("hidden_size",), "u32"),
    ("block_count", ("num_hidden_layers",), "u32"),
    ("feed_forward_length", ("intermediate_size",), "u32"),
    ("attention.head_count", ("num_attention_heads",), "u32"),
    ("attention.head_count_kv", ("num_key_value_heads", "num_attention_heads"), "u32"),
    ("rope.freq_base", ("rope_parameters.rope_theta", "rope_theta"), "f32"),
    ("attention.layer_norm_rms_epsilon", ("rms_norm_eps",), "f32"),
    ("expert_count", ("num_experts",), "u32"),
    ("expert_used_count", ("num_experts_per_tok",), "u32"),
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


class Olmoe(Family):
    def __init__(self) -> None:
        super().__init__(name="olmoe", title="OLMoE (OlmoeForCausalLM)", arch="olmoe",
                         ignored_tensors=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",))

    def detect(self, ckpt: Checkpoint) -> bool:
        c = ckpt.config
        return c.get("model_type") == "olmoe" or "OlmoeForCausalLM" in (c.get("architectures") or [])

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
        return [HParam(key, cfg(ckpt.config, *src), kind) for key, src, kind in HPARAMS]

    def plan(self, ckpt: Checkpoint) -> list[PlannedTensor]:
        c = ckpt.config
        n_layer, n_embd = cfg(c, "num_hidden_layers"), cfg(c, "hidden_size")
        n_ff, n_expert = cfg(c, "intermediate_size"), cfg(c, "num_experts")
        n_vocab = self.vocab_size(ckpt)
        n_kv = cfg(c, "num_key_value_heads", "num_attention_heads") * (n_embd // cfg(c, "num_attention_heads"))
        shapes = {  # numpy-order shape of every GGUF tensor, from config.json
            "token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,),
            "output.weight": (n_vocab, n_embd), "attn_norm.weight": (n_embd,),
            "attn_q.weight": (n_embd, n_embd), "attn_k.weight": (n_kv, n_embd), "attn_v.weight": (n_kv, n_embd),
            "attn_output.weight": (n_embd, n_embd), "attn_q_norm.weight": (n_embd,),
            "attn_k_norm.weight": (n_kv,), "ffn_norm.weight": (n_embd,), "ffn_gate_inp.weight": (n_expert, n_embd),
            "ffn_gate_exps.weight": (n_expert, n_ff, n_embd), "ffn_up_exps.weight": (n_expert, n_ff, n_embd),
            "ffn_down_exps.weight": (n_expert, n_embd, n_ff),
        }

        def shape_of(gguf_name: str) -> tuple[int, ...]:
            return shapes[gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name]

        def single(src: str, dst: str) -> PlannedTensor:
            shape = shape_of(dst)
            force = "F32" if dst.endswith("ffn_gate_inp.weight") else None
            return PlannedTensor(dst, shape, [Part(src, shape)], force_type=force)

        plan = [single("model.embed_tokens.weight", "token_embd.weight")]
        fused = FUSED_GATE_UP.format(bid=0) in ckpt.names
        for b in range(n_layer):
            for src, dst in TENSORS.items():
                if "{bid}" in src:
                    plan.append(single(src.format(bid=b), dst.format(bid=b)))
            if fused:
                plan += fused_experts(b, FUSED_GATE_UP.format(bid=b), FUSED_DOWN.format(bid=b), n_expert, n_ff, n_embd)
            else:
                for src, dst in EXPERTS.items():
                    name = dst.format(bid=b)
                    shape = shape_of(name)
                    parts = [Part(src.format(bid=b, xid=x), shape[1:]) for x in range(n_expert)]
                    plan.append(PlannedTensor(name, shape, parts))
        plan.append(single("model.norm.weight", "output_norm.weight"))
        # llama.cpp's olmoe requires output.weight: for tied embeddings writing the embedding there is exact
        tied = c.get("tie_word_embeddings", False) and "lm_head.weight" not in ckpt.names
        head = "model.embed_tokens.weight" if tied else "lm_head.weight"
        plan.append(single(head, "output.weight"))
        return plan

    def reference_logits(self, folder: Path, ids: list[int]) -> np.ndarray:
        from .reference import transformers_logits

        return transformers_logits(folder, ids, "OlmoeForCausalLM")
