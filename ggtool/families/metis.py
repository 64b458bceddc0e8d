"""Metis-1.5 (Lernex/Metis-1.5-base, -think): a JAX pytree in safetensors -> GGUF architecture `metis`.

The model in one screen (reference/models.md §4): pre-norm decoder, RMSNorm eps 1e-6, GQA with NeoX
RoPE, then a single-latent MoE: one 512-d latent per token (`latent_down`), a sigmoid router on the
full-width normed hidden state whose bias only picks the experts (weights are the unbiased scores,
renormalised), ungated squared-ReLU experts inside the latent, `latent_up` once after the weighted
sum, plus an always-on ungated squared-ReLU shared expert; tied embeddings.

No stock llama.cpp architecture computes that (nemotron_h_moe has the latent MoE but no RoPE and one
mixer per block), so ggtool's llama.cpp carries a `metis` graph of its own (patches/llama.cpp/metis.patch:
llama's attention + nemotron_h_moe's MoE block, upstream style), and the GGUF uses only llama.cpp's own
key and tensor names. On a stock llama.cpp build the commands that run the model say it lacks the
architecture and how to build one that has it.

The checkpoint stores weights as used in `x @ W` ([in, out]): every projection is transposed, and
the last two axes of the expert tensors. config.json as released is a leftover of an older model
(its intermediate_size and hidden_act are wrong and it has no MoE keys), so the MoE sizes come from
the tensor shapes and the fixed semantics from the release's training manifest.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Tokenizer

from ..checkpoint import Checkpoint, bf16_to_f32
from ..errors import GgtoolError
from ..gguf_in import read_header
from ..pre_tokenizers import by_name, definition
from ..vocab import (NORMALIZER_KEY, TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_USER_DEFINED, Vocab, chat_templates,
                     choose_pre_tokenizer, normal_form, normal_form_warning, special_token_ids, token_table)
from .base import Family, HParam, Part, PlannedTensor, cfg

# tokenizer_config.json's chat_template of Metis-1.5-think, verbatim (reference/models.md §4.6)
METIS_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}System: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)

T = gguf.MODEL_TENSOR


def _w(tensor: gguf.MODEL_TENSOR, suffix: str = "weight") -> str:
    """gguf-py's name of a tensor (`{bid}` left for the block index) with its suffix."""
    return f"{gguf.TENSOR_NAMES[tensor]}.{suffix}"


# checkpoint name -> (GGUF name, stored shape in named sizes); {bid} is the block index
GLOBAL_TENSORS = {
    "embed": (_w(T.TOKEN_EMBD), ("vocab", "embd")),
    "final_norm.scale": (_w(T.OUTPUT_NORM), ("embd",)),
}
BLOCK_TENSORS = {
    "layers.{bid}.attn_norm.scale": (_w(T.ATTN_NORM), ("embd",)),
    "layers.{bid}.q": (_w(T.ATTN_Q), ("embd", "q")),
    "layers.{bid}.k": (_w(T.ATTN_K), ("embd", "kv")),
    "layers.{bid}.v": (_w(T.ATTN_V), ("embd", "kv")),
    "layers.{bid}.o": (_w(T.ATTN_OUT), ("q", "embd")),
    "layers.{bid}.moe_norm.scale": (_w(T.FFN_NORM), ("embd",)),
    "layers.{bid}.latent_down": (_w(T.MOE_LATENT_DOWN), ("embd", "latent")),
    "layers.{bid}.latent_up": (_w(T.MOE_LATENT_UP), ("latent", "embd")),
    "layers.{bid}.router": (_w(T.FFN_GATE_INP), ("embd", "expert")),
    "layers.{bid}.router_bias": (_w(T.FFN_EXP_PROBS_B, "bias"), ("expert",)),
    "layers.{bid}.expert_w1": (_w(T.FFN_UP_EXP), ("expert", "latent", "ff_exp")),
    "layers.{bid}.expert_w2": (_w(T.FFN_DOWN_EXP), ("expert", "ff_exp", "latent")),
    "layers.{bid}.shared_w1": (_w(T.FFN_UP_SHEXP), ("embd", "ff_shexp")),
    "layers.{bid}.shared_w2": (_w(T.FFN_DOWN_SHEXP), ("ff_shexp", "embd")),
}
# untied checkpoints (tie_embeddings=false) would add this; the release has none
LM_HEAD = ("lm_head", _w(T.OUTPUT), ("embd", "vocab"))
NOT_TRANSPOSED = {"embed"}  # [vocab, embd] is already ggml's layout; every other matrix is [in, out]
EXPERT_TENSORS = {"layers.{bid}.expert_w1", "layers.{bid}.expert_w2"}
_FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}

# what the release fixes and config.json does not say (models.md §4.3 manifest, §4.4 code)
RMS_EPS = 1e-6  # jax_metis.rms_norm's default; in no config file
RELEASE_EXPERTS, RELEASE_TOP_K = 32, 4  # model card and configs/metis15_manifest.json
DEFAULT_CONTEXT = 1024

# manifest-style keys a config.json might carry: (key, value the GGUF's semantics assume, why)
REFUSED = [
    ("moe_router_score", "sigmoid", "the GGUF records sigmoid gating (expert_gating_func=2)"),
    ("moe_router_temperature", 1.0, "the GGUF has no router temperature"),
    ("moe_activation", "squared_relu", "the GGUF records squared-ReLU experts"),
    ("moe_single_latent_router_input", "hidden", "the GGUF's router reads the full-width hidden state"),
    ("moe_shared_experts", 1, "the GGUF holds exactly one shared expert"),
    ("rope_convention", "neox", "the GGUF records NeoX (rotate-half) RoPE"),
    ("rope_scaling", None, "the GGUF has no RoPE scaling"),
]
# config.json keys that, when present, must agree with the size inferred from the tensors
CONSISTENT = [("moe_num_experts", "expert"), ("moe_expert_intermediate_size", "ff_exp"),
              ("moe_routed_latent_size", "latent"), ("moe_router_latent_size", "latent")]

@dataclass(frozen=True)
class MetisDims:
    """Every size and setting the forward pass needs."""

    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    top_k: int
    rope_theta: float
    n_ctx: int
    sizes: dict[str, int] = field(default_factory=dict)  # named sizes used in the tensor tables
    tied: bool = True
    eps: float = RMS_EPS

    def stored_shape(self, names: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self.sizes[n] for n in names)


def gguf_shape(source: str, stored: tuple[int, ...]) -> tuple[int, ...]:
    """numpy-order GGUF shape of a checkpoint tensor: [in, out] matrices (and expert slices) transposed."""
    if len(stored) < 2 or source in NOT_TRANSPOSED:
        return stored
    return stored[:-2] + (stored[-1], stored[-2])


def to_gguf_layout(arr: np.ndarray) -> np.ndarray:
    """[.., in, out] -> [.., out, in]: ggml wants ne0 = in."""
    return np.swapaxes(arr, -1, -2)


def expected_tensors(d: MetisDims) -> dict[str, tuple[str, tuple[int, ...]]]:
    """checkpoint name -> (GGUF name, stored shape), in GGUF order: embedding, blocks, output."""
    table = {"embed": GLOBAL_TENSORS["embed"]}
    for b in range(d.n_layer):
        table.update({src.format(bid=b): (dst.format(bid=b), shape) for src, (dst, shape) in BLOCK_TENSORS.items()})
    table["final_norm.scale"] = GLOBAL_TENSORS["final_norm.scale"]
    if not d.tied:
        table[LM_HEAD[0]] = LM_HEAD[1:]
    return {src: (dst, d.stored_shape(shape)) for src, (dst, shape) in table.items()}


def _anchor_shape(ckpt: Checkpoint, name: str, ndim: int) -> tuple[int, ...]:
    if name not in ckpt.entries:
        raise GgtoolError(f"tensor {name} is missing from the checkpoint",
                          "a Metis-1.5 checkpoint (metis_jax_safetensors_v1) needs it to size the model")
    shape = ckpt.shape(name)
    if len(shape) != ndim:
        raise GgtoolError(f"tensor {name} has shape {list(shape)}, expected {ndim} dimensions",
                          "this is not the metis_jax_safetensors_v1 layout")
    return shape


def _layer_indices(ckpt: Checkpoint) -> list[int]:
    return sorted({int(m.group(1)) for n in ckpt.names if (m := re.match(r"layers\.(\d+)\.", n))})


def infer_dims(ckpt: Checkpoint) -> MetisDims:
    """Sizes from the tensor shapes (MoE) and config.json (attention), with the release's fixed settings."""
    c = ckpt.config
    n_vocab, n_embd = _anchor_shape(ckpt, "embed", 2)
    n_expert, latent, ff_exp = _anchor_shape(ckpt, "layers.0.expert_w1", 3)
    ff_shexp = _anchor_shape(ckpt, "layers.0.shared_w1", 2)[1]
    layers = _layer_indices(ckpt)
    n_layer = int(cfg(c, "n_layer", "num_hidden_layers", default=layers[-1] + 1))
    n_head = int(cfg(c, "n_heads", "num_attention_heads"))
    n_head_kv = int(cfg(c, "n_kv_heads", "num_key_value_heads", default=n_head))
    head_dim = int(cfg(c, "head_dim", default=n_embd // n_head))
    if n_head_kv <= 0 or n_head % n_head_kv:
        raise GgtoolError(f"config.json sets n_heads={n_head}, n_kv_heads={n_head_kv}: query heads must be a "
                          "multiple of KV heads", "fix config.json to match the checkpoint")
    top_k = cfg(c, "moe_top_k", "num_experts_per_tok", default=None)
    if top_k is None:
        if n_expert != RELEASE_EXPERTS:  # the release's 4-of-32 cannot be assumed for another expert count
            raise GgtoolError(f"config.json does not say how many experts each token uses, and this checkpoint "
                              f"has {n_expert} experts where the Metis-1.5 release (top-{RELEASE_TOP_K}) has "
                              f"{RELEASE_EXPERTS}", 'add "moe_top_k": N to config.json')
        top_k = RELEASE_TOP_K
    if not 0 < int(top_k) <= n_expert:
        raise GgtoolError(f"config.json sets moe_top_k={top_k}, but the checkpoint has {n_expert} experts")
    sizes = {"vocab": n_vocab, "embd": n_embd, "q": n_head * head_dim, "kv": n_head_kv * head_dim,
             "latent": latent, "expert": n_expert, "ff_exp": ff_exp, "ff_shexp": ff_shexp}
    for key, size in CONSISTENT:
        if key in c and int(c[key]) != sizes[size]:
            raise GgtoolError(f"config.json sets {key}={c[key]}, but layers.0's tensors hold {sizes[size]}",
                              "the weights and config.json disagree; use the config.json saved with these weights")
    return MetisDims(n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, top_k=int(top_k),
                     rope_theta=float(cfg(c, "rope_theta", "rope_parameters.rope_theta", default=10000.0)),
                     n_ctx=int(cfg(c, "block_size", "max_position_embeddings", default=DEFAULT_CONTEXT)),
                     sizes=sizes, tied=LM_HEAD[0] not in ckpt.names)


def _read_expert(ckpt: Checkpoint, name: str, x: int) -> np.ndarray:
    """One expert's slice as float32, widening only that slice (not the whole stacked tensor)."""
    raw = ckpt.raw(name)[x]
    return bf16_to_f32(raw) if ckpt.entry(name).dtype == "BF16" else raw.astype(np.float32)


class Metis(Family):
    """Metis-1.5 -> `metis`: runs on ggtool's patched llama.cpp, verified against the numpy reference."""

    def __init__(self) -> None:
        super().__init__(name="metis", title="Metis-1.5 (metis_jax_safetensors_v1)", arch="metis",
                         patched_arch=True)

    def detect(self, ckpt: Checkpoint) -> bool:
        c = ckpt.config
        named = str(c.get("model_type", "")).startswith("metis") or "MetisMoRLMHeadModel" in (
            c.get("architectures") or [])
        return named or {"embed", "layers.0.latent_down", "layers.0.expert_w1"} <= ckpt.names

    def check(self, ckpt: Checkpoint) -> None:
        c = ckpt.config
        for key, assumed, why in REFUSED:
            if key in c and c[key] != assumed:
                raise GgtoolError(f"config.json sets {key}={c[key]!r}, but Metis-1.5 uses {assumed!r}: {why}",
                                  "ggtool refuses to write a GGUF that describes a different model")
        d = infer_dims(ckpt)
        if c.get("tie_embeddings", True) is False and d.tied:
            raise GgtoolError("config.json sets tie_embeddings=false, but the checkpoint has no lm_head tensor",
                              "the checkpoint is incomplete or its config.json does not match its weights")
        beyond = sorted(n for n in ckpt.names
                        if (m := re.match(r"layers\.(\d+)\.", n)) and int(m.group(1)) >= d.n_layer)
        if beyond:
            raise GgtoolError(f"tensor {beyond[0]} belongs to a layer beyond config.json's n_layer={d.n_layer}",
                              "the checkpoint and config.json disagree on the number of layers")
        for src, (_, shape) in expected_tensors(d).items():
            if src not in ckpt.entries:
                raise GgtoolError(f"tensor {src} is missing from the checkpoint (n_layer={d.n_layer})",
                                  "the checkpoint is incomplete; re-download or re-export it")
            entry = ckpt.entry(src)
            if entry.dtype not in _FLOAT_DTYPES:
                raise GgtoolError(f"tensor {src} has dtype {entry.dtype}; Metis weights are floating point")
            if entry.shape != shape:
                raise GgtoolError(f"tensor {src} has shape {list(entry.shape)}, but layer 0's tensors and "
                                  f"config.json imply {list(shape)}",
                                  "every Metis layer has the same experts and sizes; the checkpoint is inconsistent")

    def hparams(self, ckpt: Checkpoint) -> list[HParam]:
        d = infer_dims(ckpt)
        s = d.sizes
        return [
            HParam("context_length", d.n_ctx), HParam("embedding_length", s["embd"]),
            HParam("block_count", d.n_layer), HParam("vocab_size", s["vocab"]),
            HParam("attention.head_count", d.n_head), HParam("attention.head_count_kv", d.n_head_kv),
            HParam("attention.key_length", d.head_dim), HParam("attention.value_length", d.head_dim),
            HParam("attention.layer_norm_rms_epsilon", d.eps, "f32"),
            HParam("rope.dimension_count", d.head_dim), HParam("rope.freq_base", d.rope_theta, "f32"),
            # NeoX RoPE, squared-ReLU experts and shared expert: fixed by the `metis` graph, as llama.cpp does per arch
            HParam("expert_count", s["expert"]), HParam("expert_used_count", d.top_k),
            HParam("expert_shared_count", 1),
            HParam("expert_feed_forward_length", s["ff_exp"]),
            HParam("expert_shared_feed_forward_length", s["ff_shexp"]),
            HParam("moe_latent_size", s["latent"]),
            HParam("expert_gating_func", int(gguf.ExpertGatingFuncType.SIGMOID)),
            HParam("expert_weights_norm", True, "bool"),  # top-k sigmoid scores divided by their sum
            HParam("expert_weights_scale", 1.0, "f32"),
        ]  # general.sampling.* come from generation_config.json through gguf-py's Metadata (convert.py)

    def tensor_plan(self, ckpt: Checkpoint) -> list[PlannedTensor]:
        d = infer_dims(ckpt)
        plan = []
        for src, (dst, stored) in expected_tensors(d).items():
            shape = gguf_shape(src, stored)
            transform = None if src in NOT_TRANSPOSED or len(stored) < 2 else to_gguf_layout
            if re.sub(r"\.\d+\.", ".{bid}.", src, count=1) in EXPERT_TENSORS:
                parts = [Part(src, stored, loader=partial(_read_expert, name=src, x=x), transform=transform)
                         for x in range(stored[0])]
            else:
                parts = [Part(src, stored, transform=transform)]
            # the router stays F32 as llama.cpp keeps ffn_gate_inp; exp_probs_b is 1-D and F32 anyway
            force = "F32" if dst.endswith("ffn_gate_inp.weight") else None
            plan.append(PlannedTensor(dst, shape, parts, force_type=force))
        return plan

    def vocab_size(self, ckpt: Checkpoint) -> int:
        return infer_dims(ckpt).sizes["vocab"]

    def vocab(self, ckpt: Checkpoint) -> Vocab:
        return load_metis_vocab(ckpt, self.vocab_size(ckpt))

    def reference_logits(self, folder: Path, ids: list[int]) -> np.ndarray:
        from .metis_reference import checkpoint_weights, forward

        return forward(*checkpoint_weights(Checkpoint(Path(folder))), ids)

    def gguf_reference_logits(self, path: Path, ids: list[int]) -> np.ndarray:
        from .metis_reference import forward, gguf_weights

        return forward(*gguf_weights(Path(path)), ids)

    def gguf_token_ids(self, path: Path, text: str) -> list[int]:
        return gguf_tokenizer(Path(path)).encode(text).ids


# --- tokenizer -----------------------------------------------------------------------------------
#
# The release tokenizer is a GPT-2-style byte-level BPE behind an NFKC normalizer, and 44 of the 256
# byte symbols never made it into the vocabulary (HF maps those bytes to <unk>). llama.cpp's `gpt2`
# tokenizer does neither, so both are recorded in extra keys for the future implementation.

UNKNOWN_BYTES_KEY = "tokenizer.ggml.unknown_bytes"  # byte values with no token: they become unknown_token_id


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value (index = byte)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


@dataclass
class MetisVocab(Vocab):
    """A `gpt2` vocabulary plus the bytes that have no token (the normalizer is recorded as for any vocabulary)."""

    unknown_bytes: list[int] = field(default_factory=list)

    def write(self, w: gguf.GGUFWriter) -> None:
        """Add the standard tokenizer keys and the Metis-specific one."""
        super().write(w)
        w.add_array(UNKNOWN_BYTES_KEY, self.unknown_bytes)


def load_metis_vocab(ckpt: Checkpoint, n_vocab: int) -> MetisVocab:
    """tokenizer.json (NFKC + byte-level BPE) as a GGUF `gpt2` vocabulary padded to the embedding's rows."""
    path = ckpt.folder / "tokenizer.json"
    tj = ckpt.read_json("tokenizer.json")
    if tj is None:
        raise GgtoolError(f"{path}: not found", "the checkpoint needs its tokenizer.json to make a usable GGUF")
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        raise GgtoolError(f"{path}: model type {model.get('type')} (byte_fallback={model.get('byte_fallback')}) is not "
                          "the byte-level BPE Metis-1.5 ships", "this is not the Metis-1.5 tokenizer")
    pre = choose_pre_tokenizer(tj, str(path))  # refuses normalizers other than a normal form, as for any BPE
    form = normal_form(tj.get("normalizer"), str(path))
    if form:
        warnings.warn(normal_form_warning(form, str(path)), stacklevel=2)
    tokens, types = token_table(tj, n_vocab, path)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tc = ckpt.read_json("tokenizer_config.json") or {}
    special = special_token_ids(tokens, tc, ckpt.config, {})
    if model.get("unk_token") in tokens:  # the token the BPE model really falls back to
        special["unk"] = tokens.index(model["unk_token"])
    if "bos" not in special:
        raise GgtoolError(f"{path}: no <bos> token found",
                          "Metis-1.5 prompts start with <bos>; the tokenizer is incomplete")
    symbols = byte_symbols()
    unknown = [b for b in range(256) if symbols[b] not in model["vocab"]]
    if unknown and "unk" not in special:
        raise GgtoolError(f"{path}: {len(unknown)} byte symbols are missing and there is no unk_token",
                          "such bytes could not be tokenized at all")
    template, named = chat_templates(ckpt.folder, tc)
    # The authors prepend <bos> and encode without specials: tokenizer_config's add_eos_token=true would append
    # <eos> to every prompt and make the model start a new document.
    return MetisVocab(model="gpt2", pre=pre.name, tokens=tokens, token_types=types, merges=merges, special=special,
                      add_bos=True, add_eos=False, chat_template=template, named_templates=named,
                      normalizer=form, unknown_bytes=unknown)


def tokenizer_json_from_gguf(path: Path) -> dict:
    """A Hugging Face tokenizer.json rebuilt from a Metis GGUF's tokenizer keys alone."""
    header = read_header(path)
    tokens = header.array("tokenizer.ggml.tokens")
    types = header.array("tokenizer.ggml.token_type")
    merges = header.array("tokenizer.ggml.merges", [])
    pre = by_name(header.get("tokenizer.ggml.pre"))
    if header.get("tokenizer.ggml.model") != "gpt2" or pre is None:
        raise GgtoolError(f"{path}: not a byte-level BPE (`gpt2`) vocabulary with a known pre-tokenizer")
    if not isinstance(tokens, list) or not isinstance(merges, list) or not hasattr(types, "dtype") \
            or len(types) != len(tokens):
        raise GgtoolError(f"{path}: tokenizer.ggml.tokens / token_type / merges are missing or do not match")
    types = types.tolist()

    def value(key: str, default=None):  # noqa: ANN001, ANN202
        v = header.get(key, default)
        if key.endswith("_token_id") and v is not None and not (isinstance(v, int) and 0 <= v < len(tokens)):
            raise GgtoolError(f"{path}: {key} {v!r} is not a token id")
        return v

    pre_tok = definition(pre)
    unk = value("tokenizer.ggml.unknown_token_id")
    bos = value("tokenizer.ggml.bos_token_id")
    eos = value("tokenizer.ggml.eos_token_id")
    add_bos, add_eos = value("tokenizer.ggml.add_bos_token"), value("tokenizer.ggml.add_eos_token")
    single = ([{"SpecialToken": {"id": tokens[bos], "type_id": 0}}] if add_bos else []) \
        + [{"Sequence": {"id": "A", "type_id": 0}}] \
        + ([{"SpecialToken": {"id": tokens[eos], "type_id": 0}}] if add_eos else [])
    specials = {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]}
                for i in (bos, eos) if i is not None}
    normalizer = value(NORMALIZER_KEY, "none")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == TOKEN_CONTROL}
                         for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)],
        "normalizer": {"type": normalizer} if normalizer != "none" else None,
        "pre_tokenizer": pre_tok,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single,
                           "special_tokens": specials},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk] if unk is not None else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": pre.ignore_merges,
                  "vocab": {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty != TOKEN_UNUSED},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def gguf_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` that tokenizes as the GGUF's vocabulary describes."""
    return Tokenizer.from_str(json.dumps(tokenizer_json_from_gguf(path)))
