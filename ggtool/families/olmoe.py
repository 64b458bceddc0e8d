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
from .base import HParam, cfg, refuse_settings
from .hf_moe import ATTENTION, EXPERT_SIZES, FFN_NORM, SIZES, HfMoeDecoder, K, MoeDims, T
from .reference import transformers_logits

# OLMoE-1B-7B-0125-Instruct's chat template (Tulu), as its tokenizer_config.json has it: the SmartMoE seed and the
# fixtures use it
TULU_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}"
)

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
        *ATTENTION,
        (T.ATTN_Q_NORM, "model.layers.{bid}.self_attn.q_norm.weight"),  # whole-vector, not per head
        (T.ATTN_K_NORM, "model.layers.{bid}.self_attn.k_norm.weight"),
        FFN_NORM,
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
        c, d = ckpt.config, self.dims(ckpt.config)
        return [*d.hparams(SIZES), HParam(K.Rope.FREQ_BASE, cfg(c, "rope_parameters.rope_theta", "rope_theta"), "f32"),
                HParam(K.Attention.LAYERNORM_RMS_EPS, cfg(c, "rms_norm_eps"), "f32"), *d.hparams(EXPERT_SIZES)]

    def dims(self, config: dict) -> MoeDims:
        n_embd, n_head = cfg(config, "hidden_size"), cfg(config, "num_attention_heads")
        return MoeDims(n_vocab=cfg(config, "vocab_size"), n_embd=n_embd, n_layer=cfg(config, "num_hidden_layers"),
                       n_head=n_head, n_head_kv=cfg(config, "num_key_value_heads", "num_attention_heads"),
                       head_dim=n_embd // n_head, n_ff=cfg(config, "intermediate_size"),
                       n_expert=cfg(config, "num_experts"), n_expert_used=cfg(config, "num_experts_per_tok"),
                       n_ctx_train=cfg(config, "max_position_embeddings"),
                       tied=bool(config.get("tie_word_embeddings", False)))

    def reference_logits(self, folder: Path, ids: list[int]) -> np.ndarray:
        return transformers_logits(folder, ids, "OlmoeForCausalLM")
