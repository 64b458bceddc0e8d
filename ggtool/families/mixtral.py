"""neo-3 and other Mixtral-style checkpoints (MixtralForCausalLM) -> llama.cpp architecture `llama` with experts.

The model in one screen: pre-norm decoder, RMSNorm, grouped-query attention with rotate-half RoPE
over the whole head, a softmax router over all experts whose top-k weights are renormalised to sum
to 1, SwiGLU experts (w1 gate, w3 up, w2 down), no shared expert, no biases. llama.cpp's llama graph
computes exactly that once Q and K rows are permuted from rotate-half to adjacent pairs (its NORM
RoPE). Every config setting that graph would ignore is refused instead of silently dropped; the
training-only ones (router_jitter_noise, attention_dropout, router_aux_loss_coef) do not change inference.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import GgtoolError
from ..vocab import Vocab, load_llama_vocab
from .base import HParam, cfg, refuse_settings
from .hf_moe import ATTENTION, EXPERT_SIZES, FFN_NORM, SIZES, HfMoeDecoder, K, MoeDims, T
from .reference import transformers_logits

CLASS = "MixtralForCausalLM"

# transformers <= 4 and its savers call the MoE module block_sparse_moe; transformers 5 renames it mlp
MOE_NAMES = ("block_sparse_moe", "mlp")
ROUTER = re.compile(r"model\.layers\.\d+\.block_sparse_moe\.gate\.weight")
PER_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.w[123]\.weight")

# MixtralConfig's defaults, used for keys a config.json leaves out (transformers fills in the same)
DEFAULTS = {"num_key_value_heads": 8, "hidden_act": "silu", "max_position_embeddings": 4096 * 32,
            "rms_norm_eps": 1e-5, "num_experts_per_tok": 2, "num_local_experts": 8, "rope_theta": 1e6,
            "tie_word_embeddings": False, "sliding_window": None}

# settings llama.cpp's llama graph cannot express: (config key, value llama.cpp assumes, why)
REFUSED = [
    ("hidden_act", "silu", "llama.cpp's llama experts are SwiGLU (silu) only"),
    ("attention_bias", False, "llama.cpp's llama graph reads no q/k/v biases"),
    ("mlp_bias", False, "llama.cpp's llama experts have no biases"),
    ("qkv_bias", False, "llama.cpp's llama graph reads no q/k/v biases"),
    ("use_qk_norm", False, "llama.cpp's llama graph has no q/k norm for Mixtral-style models"),
    ("partial_rotary_factor", 1.0, "llama.cpp's llama graph rotates the whole head (rope.dimension_count = head_dim)"),
    ("num_shared_experts", 0, "llama.cpp's llama graph has no shared expert"),
    ("logit_scale", 1.0, "llama.cpp's llama graph does not scale logits"),
    ("attn_logit_softcapping", None, "llama.cpp's llama graph does not soft-cap attention"),
    ("final_logit_softcapping", None, "llama.cpp's llama graph does not soft-cap logits"),
]
# NEO-3's documented chat convention (model card): `<user>\n…\n</user>\n<assistant>\n`, turns concatenated.
# A system message has no tag of its own on the card, which puts instructions inside the user turn.
NEO3_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n' %}"
    "{% elif message['role'] == 'user' %}{{ '<user>\\n' + ns.system + message['content'] + '\\n</user>\\n' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ '<assistant>\\n' + message['content'] + '\\n</assistant>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<assistant>\\n' }}{% endif %}"
)
# rope_parameters.rope_type -> GGUF rope.scaling.type written for it (both scale positions the same way)
ROPE_TYPES = {"default": None, "linear": "linear"}


def _mixtral_names(ckpt: Checkpoint) -> bool:
    """Whether the tensors carry Mixtral's own names (its router or w1/w2/w3 experts), whatever config.json says."""
    return any(ROUTER.fullmatch(n) or PER_EXPERT.fullmatch(n) for n in ckpt.names)


def _moe_name(names: set[str] | frozenset[str]) -> str:
    return next((m for m in MOE_NAMES if f"model.layers.0.{m}.gate.weight" in names), MOE_NAMES[0])


def _rope_parameters(c: dict) -> dict:
    """rope_parameters (transformers >= 5) or the older rope_theta / rope_scaling keys, as one dict."""
    rp = dict(c.get("rope_parameters") or {})
    scaling = c.get("rope_scaling") or {}
    rp.setdefault("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    for key, value in scaling.items():
        rp.setdefault(key, value)
    rp.setdefault("rope_theta", c.get("rope_theta", DEFAULTS["rope_theta"]))
    return rp


def head_dim(c: dict) -> int:
    """Attention head width: config.json's head_dim, else hidden_size / num_attention_heads (as transformers)."""
    return int(c.get("head_dim") or cfg(c, "hidden_size") // cfg(c, "num_attention_heads"))


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's Q/K rows from rotate-half (x_i, x_{i+d/2}) pairs to the adjacent pairs NORM RoPE rotates."""
    rows = w.shape[0] // n_head
    return w.reshape(n_head, 2, rows // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Mixtral(HfMoeDecoder):
    # checkpoint tensors of block {bid} -> GGUF tensor, in file order; {moe} is the MoE module's name (MOE_NAMES)
    BLOCK = (*ATTENTION, FFN_NORM, (T.FFN_GATE_INP, "model.layers.{bid}.{moe}.gate.weight"))
    # per-expert tensors ({xid}) stacked into one 3-D GGUF tensor per block: w1 gate, w3 up, w2 down
    EXPERTS = (
        (T.FFN_GATE_EXP, "model.layers.{bid}.{moe}.experts.{xid}.w1.weight"),
        (T.FFN_UP_EXP, "model.layers.{bid}.{moe}.experts.{xid}.w3.weight"),
        (T.FFN_DOWN_EXP, "model.layers.{bid}.{moe}.experts.{xid}.w2.weight"),
    )
    # the fused layout transformers >= 5 keeps in memory (5.23 saves the per-expert one)
    FUSED = ("model.layers.{bid}.{moe}.experts.gate_up_proj", "model.layers.{bid}.{moe}.experts.down_proj")

    def __init__(self) -> None:
        super().__init__(name="mixtral", title="neo-3 / Mixtral (MixtralForCausalLM)", arch="llama",
                         ignored_tensors=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",))

    def describes(self, config: dict) -> bool:
        return config.get("model_type") == "mixtral" or CLASS in (config.get("architectures") or [])

    def detect(self, ckpt: Checkpoint) -> bool:
        return self.describes(ckpt.config) or _mixtral_names(ckpt)

    @staticmethod
    def _get(c: dict, *keys: str) -> Any:
        """A config value, MixtralConfig's default when absent; null num_key_value_heads means one per head."""
        value = cfg(c, *keys, default=DEFAULTS.get(keys[0], ...))
        if value is None and keys[0] == "num_key_value_heads":
            return cfg(c, "num_attention_heads")
        return value

    def check(self, ckpt: Checkpoint) -> None:
        c = ckpt.config
        if not self.describes(c):
            named = ", ".join(c.get("architectures") or []) or c.get("model_type") or "no model class"
            warnings.warn(f"{ckpt.folder / 'config.json'} names {named}, but its tensors are Mixtral-shaped: "
                          f"converting it as {CLASS}; check the result with `ggtool verify`", stacklevel=2)
        refuse_settings(c, REFUSED, self.arch)
        window, n_ctx = self._get(c, "sliding_window"), self._get(c, "max_position_embeddings")
        if window is not None and window < n_ctx:
            raise GgtoolError(f"config.json sets sliding_window={window}, smaller than the context "
                              f"max_position_embeddings={n_ctx}: llama.cpp's llama graph attends to the whole context",
                              "ggtool refuses rather than write a GGUF that diverges beyond the window")
        rp = _rope_parameters(c)
        if rp["rope_type"] not in ROPE_TYPES:
            raise GgtoolError(f"config.json sets rope type {rp['rope_type']!r}: ggtool maps only "
                              f"{', '.join(ROPE_TYPES)} exactly onto llama.cpp's rope settings",
                              "ggtool refuses rather than write a GGUF with different positions")
        if ROPE_TYPES[rp["rope_type"]] and not isinstance(rp.get("factor"), (int, float)):
            raise GgtoolError(f"config.json sets rope type {rp['rope_type']!r} without a numeric factor",
                              "the config is incomplete")
        if rp.get("partial_rotary_factor", 1.0) != 1.0:
            raise GgtoolError(f"config.json sets partial_rotary_factor={rp['partial_rotary_factor']}: "
                              "llama.cpp's llama graph rotates the whole head")
        biases = sorted(n for n in ckpt.names if n.endswith(".bias"))
        if biases:
            raise GgtoolError(f"tensor {biases[0]} is a bias: llama.cpp's llama graph reads no q/k/v or expert biases",
                              "ggtool refuses rather than drop it")
        heads, kv = cfg(c, "num_attention_heads"), self._get(c, "num_key_value_heads")
        if heads % kv:
            raise GgtoolError(f"config.json sets num_attention_heads={heads}, not a multiple of "
                              f"num_key_value_heads={kv}", "the config is inconsistent")
        if head_dim(c) % 2:
            raise GgtoolError(f"config.json implies head_dim={head_dim(c)}: RoPE needs an even head width")
        self._check_expert_counts(ckpt)

    def _check_expert_counts(self, ckpt: Checkpoint) -> None:
        """Per-expert tensors: every layer has exactly the experts config.json declares."""
        n_expert = self._get(ckpt.config, "num_local_experts", "num_experts")
        seen: dict[int, dict[int, str]] = {}  # layer -> expert -> one of its tensor names
        for name in sorted(ckpt.names):
            if m := PER_EXPERT.fullmatch(name):
                seen.setdefault(int(m[1]), {}).setdefault(int(m[2]), name)
        for layer, experts in sorted(seen.items()):
            extra = sorted(set(experts) - set(range(n_expert)))
            missing = sorted(set(range(n_expert)) - set(experts))
            if extra:
                what = f"has tensor {experts[extra[0]]}"
            elif missing:
                w1 = self.EXPERTS[0][1]
                what = f"lacks tensor {w1.format(bid=layer, moe=_moe_name(ckpt.names), xid=missing[0])}"
            else:
                continue
            raise GgtoolError(f"layer {layer} {what}: it holds {len(experts)} experts but config.json sets "
                              f"num_local_experts={n_expert}",
                              "the weights and config.json disagree; use the config.json saved with these weights")

    def hparams(self, ckpt: Checkpoint) -> list[HParam]:
        c, d = ckpt.config, self.dims(ckpt.config)
        hps = [*d.hparams(SIZES), HParam(K.Attention.LAYERNORM_RMS_EPS, self._get(c, "rms_norm_eps"), "f32"),
               *d.hparams(EXPERT_SIZES)]
        rp = _rope_parameters(c)
        hd = head_dim(c)
        hps += [HParam(K.Rope.FREQ_BASE, float(rp["rope_theta"]), "f32"),
                HParam(K.Rope.DIMENSION_COUNT, hd),  # llama requires it to equal the head width
                HParam(K.Attention.KEY_LENGTH, hd), HParam(K.Attention.VALUE_LENGTH, hd)]
        if ROPE_TYPES[rp["rope_type"]]:
            hps += [HParam(K.Rope.SCALING_TYPE, ROPE_TYPES[rp["rope_type"]], "str"),
                    HParam(K.Rope.SCALING_FACTOR, float(rp["factor"]), "f32")]
        return hps

    def dims(self, config: dict) -> MoeDims:
        g = self._get
        return MoeDims(n_vocab=cfg(config, "vocab_size"), n_embd=cfg(config, "hidden_size"),
                       n_layer=cfg(config, "num_hidden_layers"), n_head=cfg(config, "num_attention_heads"),
                       n_head_kv=g(config, "num_key_value_heads"), head_dim=head_dim(config),
                       n_ff=cfg(config, "intermediate_size"), n_expert=g(config, "num_local_experts", "num_experts"),
                       n_expert_used=g(config, "num_experts_per_tok"), n_ctx_train=g(config, "max_position_embeddings"),
                       tied=bool(g(config, "tie_word_embeddings")))

    def sources(self, names: set[str] | frozenset[str]) -> dict[str, str]:
        return {"moe": _moe_name(names)}

    def transforms(self, d: MoeDims) -> dict:
        # HF rotates (x_i, x_{i+d/2}); llama.cpp's NORM RoPE rotates (x_2i, x_2i+1)
        return {T.ATTN_Q: lambda w: permute_rope(w, d.n_head), T.ATTN_K: lambda w: permute_rope(w, d.n_head_kv)}

    def vocab(self, ckpt: Checkpoint) -> Vocab:
        """SentencePiece (or byte-fallback BPE) vocabulary; the model card's chat convention if none is stored."""
        vocab = load_llama_vocab(ckpt.folder, self.vocab_size(ckpt), ckpt.config)
        if vocab.chat_template is None:
            vocab.chat_template = NEO3_CHAT_TEMPLATE
        return vocab

    def reference_logits(self, folder: Path, ids: list[int]) -> np.ndarray:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") == "mixtral":
            return transformers_logits(folder, ids, CLASS)
        # transformers renames the per-expert tensors into its fused layout only when config.json says
        # model_type mixtral; otherwise it would silently leave the experts random. Load a view that says so.
        with tempfile.TemporaryDirectory() as tmp:
            view = Path(tmp)
            for f in folder.iterdir():
                if f.is_file() and f.name != "config.json":
                    (view / f.name).symlink_to(f.resolve())
            config.update(model_type="mixtral", architectures=[CLASS])
            config.pop("auto_map", None)
            (view / "config.json").write_text(json.dumps(config), encoding="utf-8")
            return transformers_logits(view, ids, CLASS)
