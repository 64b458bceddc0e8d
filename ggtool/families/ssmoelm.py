"""SSMoELM (brulee-1/SSMoELM-Base, -it, -it-5L): packed 1-bit/4-bit safetensors -> llama.cpp `deepseek`.

The card in one screen: pre-norm decoder, RMSNorm, GQA (12 heads, 3 KV heads, head_dim 64), RoPE,
8 routed SwiGLU experts top-2 plus one shared SwiGLU expert (d_ff 256, ungated: the card's 25.80M
active parameters leave no room for a shared-expert gate), tied embeddings. Weights are stored packed:
`{key}__bin` (1 bit a weight) or `{key}__int4` (4 bits) with an fp16 scale per row, `{key}__shape`
and `{key}__cols`; router and norms plain. -it-5L stores 5 layers and runs 6 passes (layer 3 twice),
listed in the safetensors metadata as `layer_ids`/`pass_order`; ggtool writes six physical blocks.

Target architecture: llama.cpp's `deepseek` (v1). It is the stock graph that computes exactly this
block: softmax router over all experts, top-k, weights *not* renormalised (the DeepSeekMoE design
this model's shared-plus-routed layout follows), SwiGLU experts, one ungated SwiGLU shared expert
added to the routed output, optional output.weight (tied embeddings), no q/k norm, no biases.
Its RoPE is NORM (adjacent pairs); a rotate-half (NeoX) model is written exactly by permuting the
Q/K rows, as llama.cpp's own llama converter does. qwen2moe was rejected (sigmoid-gated shared
expert), olmoe (no shared expert, whole-vector q/k norm), llama/Mixtral (no shared expert). If the
real router renormalises its top-k weights, CHOICES["router"] = "softmax_renorm" switches to
`granitemoe`, the same block with renormalised routing and an ungated shared expert.

What the card leaves open is decided in CHOICES below, in one place; the converter, `--lossless`
and the numpy reference (ssmoelm_reference.py) all read it, so correcting a value there corrects
all three. `--lossless` stores 1-bit rows as TQ1_0 blocks and 4-bit rows as Q4_0 blocks whose scale
is the row scale: the GGUF then holds exactly the packed weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import gguf
import numpy as np

from ..checkpoint import Checkpoint
from ..errors import GgtoolError
from ..gguf_out import encode
from ..vocab import TOKEN_CONTROL, Vocab, load_llama_vocab
from .base import Family, HParam, Part, PlannedTensor

Q = gguf.GGMLQuantizationType

# The card's chat format (`<bos><|user|>\n{user}<|eot|>\n<|assistant|>\n{response}<|eot|><eos>`) as a
# template. Assumed beyond the card: a system turn uses <|system|> like the user turn, and turns after
# an assistant reply are separated by "\n" (the card shows one exchange only).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '<|eot|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|eot|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|eot|>' }}"
    "{% if loop.last %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Every choice the card leaves open, with ggtool's default. Correct a value here once the real
# checkpoint's inference.py shows otherwise. The five HF-style numeric keys are also read from
# config.json when it has them (the checkpoint's own statement beats a default).
CHOICES = {
    # -- packed format
    "bin_bit_order": "big",  # numpy.packbits default: column 0 of a row is the MSB of its first byte
    "bin_one": +1,  # a set bit is +1 and a clear bit -1 (weight = row scale x sign)
    "int4_low_nibble_first": True,  # byte k of a row holds column 2k in its low nibble, 2k+1 in its high
    "int4_codes": "twos_complement",  # nibble read as -8..7; "offset_binary": nibble - 8
    # `{key}__shape` is [rows, cols] before padding; `{key}__cols` (optional) repeats cols; rows are output
    # channels (torch/MLX Linear layout) and each row is padded to whole bytes on its own.
    # -- model (the tensor names are the assumed layout in TENSORS / LAYER_TENSORS / EXPERT_TENSORS below;
    # the shared expert is ungated and query head j reads KV head j // (heads / kv_heads), as llama.cpp does)
    "router": "softmax",  # softmax over all experts, top-k, not renormalised; "softmax_renorm": Mixtral-style
    "rope_style": "neox",  # rotate-half (MLX nn.RoPE's default, traditional=False); "norm": adjacent pairs
    "rope_theta": 10000.0,  # MLX nn.RoPE's default base
    "rms_norm_eps": 1e-5,  # MLX nn.RMSNorm's default
    "head_dim": 64,  # card
    "num_experts_per_tok": 2,  # card
    "max_position_embeddings": 2048,  # card
    # -- tokenizer
    "add_bos": True,  # the chat template starts with <bos>; plain prompts are assumed to as well
    "chat_template": CHAT_TEMPLATE,
}
CONFIG_OVERRIDES = ("rope_theta", "rms_norm_eps", "head_dim", "num_experts_per_tok", "max_position_embeddings")

# router choice -> the stock llama.cpp architecture that computes it (both NORM RoPE, ungated shared expert)
ARCH_FOR_ROUTER = {"softmax": "deepseek", "softmax_renorm": "granitemoe"}

# Special tokens and decoding defaults, from the card.
SPECIAL_TOKENS = [("<bos>", "bos"), ("<eos>", "eos"), ("<pad>", "pad"), ("<|system|>", None), ("<|user|>", None),
                  ("<|assistant|>", None), ("<|eot|>", "eot")]  # ids 0..6
SAMPLING = [(gguf.Keys.General.SAMPLING_TEMP, 0.0, "f32"), (gguf.Keys.General.SAMPLING_TOP_K, 1, "i32"),
            (gguf.Keys.General.SAMPLING_TOP_P, 0.9, "f32"), (gguf.Keys.General.SAMPLING_PENALTY_REPEAT, 1.3, "f32")]

# The assumed unpacked key names (the card does not list them) -> GGUF names. Any key may be stored
# packed (`{key}__bin` / `{key}__int4` + `__scale`, `__shape`, `__cols`) or plain; the file says which.
# {bid} is the stored layer's index in tensor names, {xid} the expert.
TENSORS = {
    "embed.weight": "token_embd.weight",  # tied: llama.cpp reuses it as the output matrix
    "norm.weight": "output_norm.weight",
}
LAYER_TENSORS = {
    "layers.{bid}.attn_norm.weight": "attn_norm.weight",
    "layers.{bid}.attn.q_proj.weight": "attn_q.weight",
    "layers.{bid}.attn.k_proj.weight": "attn_k.weight",
    "layers.{bid}.attn.v_proj.weight": "attn_v.weight",
    "layers.{bid}.attn.o_proj.weight": "attn_output.weight",
    "layers.{bid}.ffn_norm.weight": "ffn_norm.weight",
    "layers.{bid}.moe.router.weight": "ffn_gate_inp.weight",
    "layers.{bid}.moe.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "layers.{bid}.moe.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "layers.{bid}.moe.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
}
EXPERT_TENSORS = {  # stacked over {xid} into one 3-D GGUF tensor per block
    "layers.{bid}.moe.experts.{xid}.gate_proj.weight": "ffn_gate_exps.weight",
    "layers.{bid}.moe.experts.{xid}.up_proj.weight": "ffn_up_exps.weight",
    "layers.{bid}.moe.experts.{xid}.down_proj.weight": "ffn_down_exps.weight",
}
PACKED_PARTS = ("bin", "int4", "scale", "shape", "cols")  # the `__` suffixes of a packed key
# the exact GGUF type of each packing; plain matrices keep their 16-bit source type, the rest is F32
LOSSLESS_TYPES = {"bin": Q.TQ1_0, "int4": Q.Q4_0, "F16": Q.F16, "BF16": Q.BF16}


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)"))


_KNOWN = [(_pattern(t), t) for t in [*TENSORS, *LAYER_TENSORS, *EXPERT_TENSORS]]


def choice(ckpt: Checkpoint, name: str):
    """CHOICES[name], unless config.json states it (for the HF-style numeric keys)."""
    if name in CONFIG_OVERRIDES and name in ckpt.config:
        return ckpt.config[name]
    return CHOICES[name]


# -- the packed format ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    """One unpacked key as the checkpoint stores it."""

    key: str
    packing: str  # "bin" | "int4" | "plain"
    shape: tuple[int, ...]  # the unpacked shape ([rows, cols] for packed keys)
    dtype: str = "U8"  # safetensors dtype of the data tensor

    @property
    def source(self) -> str:
        """The tensor holding the data (the name a plan part cites)."""
        return self.key if self.packing == "plain" else f"{self.key}__{self.packing}"


def _ints(ckpt: Checkpoint, name: str) -> list[int]:
    arr = ckpt.raw(name)
    if arr.dtype.kind not in "iu":
        raise GgtoolError(f"tensor {name} has dtype {ckpt.entry(name).dtype}, expected integers",
                          "the packed checkpoint is corrupt or not SSMoELM's format")
    return [int(v) for v in arr.reshape(-1)]


def _stored(ckpt: Checkpoint, key: str, parts: set[str]) -> Stored:
    """Check one key's packed parts against each other: byte counts, scale count, shape and cols."""
    packings = [p for p in ("bin", "int4") if p in parts]
    if not packings:
        if parts - {""}:
            raise GgtoolError(f"tensor {key}__{min(parts - {''})} has no {key}__bin or {key}__int4 beside it",
                              "the packed checkpoint is incomplete")
        return Stored(key, "plain", ckpt.shape(key), ckpt.entry(key).dtype)
    if len(packings) > 1 or "" in parts:
        raise GgtoolError(f"{key} is stored more than once ({', '.join(sorted(parts))})",
                          "the packed checkpoint is inconsistent")
    packing = packings[0]
    for needed in ("scale", "shape"):
        if needed not in parts:
            raise GgtoolError(f"tensor {key}__{needed} is missing (needed to unpack {key}__{packing})",
                              "the packed checkpoint is incomplete")
    shape = _ints(ckpt, f"{key}__shape")
    if len(shape) != 2 or min(shape) <= 0:
        raise GgtoolError(f"tensor {key}__shape is {shape}, expected [rows, cols]", "the packed checkpoint is corrupt")
    rows, cols = shape
    if "cols" in parts and _ints(ckpt, f"{key}__cols") != [cols]:
        raise GgtoolError(f"tensor {key}__cols is {_ints(ckpt, f'{key}__cols')} but {key}__shape says {cols} columns",
                          "ggtool assumes __cols repeats the unpadded column count; see CHOICES in ssmoelm.py")
    per_row = -(-cols // (8 if packing == "bin" else 2))
    data = f"{key}__{packing}"
    got = ckpt.entry(data).end - ckpt.entry(data).begin
    if ckpt.entry(data).dtype not in ("U8", "I8") or got != rows * per_row:
        raise GgtoolError(f"tensor {data} holds {got} bytes ({ckpt.entry(data).dtype}) but {key}__shape {shape} "
                          f"needs {rows * per_row} uint8 ({per_row} per row)", "the packed checkpoint is corrupt")
    if ckpt.entry(f"{key}__scale").dtype != "F16":  # the card's format; TQ1_0/Q4_0 blocks hold fp16 scales
        raise GgtoolError(f"tensor {key}__scale is {ckpt.entry(f'{key}__scale').dtype}, but packed scales are fp16",
                          "the packed checkpoint is not SSMoELM's format")
    n_scale = int(np.prod(ckpt.shape(f"{key}__scale"), dtype=np.int64))
    if n_scale != rows:
        raise GgtoolError(f"tensor {key}__scale has {n_scale} values but {key}__shape has {rows} rows",
                          "the packed checkpoint is corrupt")
    return Stored(key, packing, (rows, cols))


def codes_and_scales(ckpt: Checkpoint, s: Stored, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The integer codes [rows, cols] (int8) and fp16 row scales of a packed key, optionally rows reordered."""
    n_rows, cols = s.shape
    raw = ckpt.raw(s.source).reshape(n_rows, -1).view(np.uint8)
    if s.packing == "bin":
        bits = np.unpackbits(raw, axis=1, bitorder=CHOICES["bin_bit_order"])[:, :cols]
        one = np.int8(CHOICES["bin_one"])
        codes = np.where(bits == 1, one, -one).astype(np.int8)
    else:
        low, high = raw & 0xF, raw >> 4
        first, second = (low, high) if CHOICES["int4_low_nibble_first"] else (high, low)
        nibbles = np.stack([first, second], axis=2).reshape(n_rows, -1)[:, :cols].astype(np.int8)
        codes = nibbles - 16 * (nibbles >= 8) if CHOICES["int4_codes"] == "twos_complement" else nibbles - 8
        codes = codes.astype(np.int8)
    scales = np.ascontiguousarray(ckpt.raw(f"{s.key}__scale").reshape(-1)).astype(np.float16)
    if rows is not None:
        codes, scales = codes[rows], scales[rows]
    return codes, scales


def dense(ckpt: Checkpoint, s: Stored, rows: np.ndarray | None = None) -> np.ndarray:
    """The unpacked weight as float32: row scale x code (plain keys as stored, widened)."""
    if s.packing == "plain":
        arr = ckpt.read(s.key).astype(np.float32)
        return arr if rows is None else arr[rows]
    codes, scales = codes_and_scales(ckpt, s, rows)
    return scales.astype(np.float32)[:, None] * codes.astype(np.float32)


def tq1_0_blocks(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ggml block_tq1_0 bytes of ternary codes [rows, cols % 256 == 0], every block scaled by its row's scale."""
    cols = codes.shape[1]
    trits = (codes.astype(np.int16) + 1).reshape(-1, 256)  # -1, 0, 1 -> 0, 1, 2
    n = trits.shape[0]
    powers5 = np.array([81, 27, 9, 3, 1])[None, :, None]  # the first element is the most significant trit
    qs = [(trits[:, :160].reshape(n, 5, 32) * powers5).sum(1),  # 32 bytes of 5 trits, stride 32
          (trits[:, 160:240].reshape(n, 5, 16) * powers5).sum(1),  # 16 bytes of 5 trits, stride 16
          (trits[:, 240:].reshape(n, 4, 4) * np.array([81, 27, 9, 3])[None, :, None]).sum(1)]  # qh: 4 trits, x3
    q = (np.concatenate(qs, axis=1) * 256 + 242) // 243  # ceil(q * 256 / 3^5): trits become a fixed-point fraction
    d = np.repeat(scales.astype("<f2"), cols // 256).view(np.uint8).reshape(n, 2)
    return np.concatenate([q.astype(np.uint8), d], axis=1).reshape(-1)


def q4_0_blocks(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ggml block_q4_0 bytes of -8..7 codes [rows, cols % 32 == 0], every block scaled by its row's scale."""
    cols = codes.shape[1]
    nib = (codes.astype(np.int16) + 8).astype(np.uint8).reshape(-1, 32)  # stored as code + 8
    qs = nib[:, :16] | (nib[:, 16:] << 4)  # element j in the low nibble of byte j, element j + 16 in its high
    d = np.repeat(scales.astype("<f2"), cols // 32).view(np.uint8).reshape(-1, 2)
    return np.concatenate([d, qs], axis=1).reshape(-1)


def lossless_type(stored: list[Stored]) -> Q:
    """The smallest exact GGUF type for these (stacked) keys: TQ1_0, Q4_0, the 16-bit source type, or F32."""
    kinds = {s.dtype if s.packing == "plain" else s.packing for s in stored}
    qtype = LOSSLESS_TYPES.get(kinds.pop()) if len(kinds) == 1 else None
    if qtype is None or len(stored[0].shape) < 2 or stored[0].shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return Q.F32  # norms, mixed packings, rows that do not fill whole blocks: f32 holds every value exactly
    return qtype


def encoded(ckpt: Checkpoint, s: Stored, qtype: Q, rows: np.ndarray | None = None) -> np.ndarray:
    """The stored bytes of one key in `qtype`, built from the codes (no rounding anywhere)."""
    if qtype in (Q.F32, Q.F16, Q.BF16):  # widened from that type, so narrowing again is exact
        return encode(dense(ckpt, s, rows), qtype)
    codes, scales = codes_and_scales(ckpt, s, rows)
    return tq1_0_blocks(codes, scales) if qtype == Q.TQ1_0 else q4_0_blocks(codes, scales)


# -- names, layers and dimensions ------------------------------------------------------------------------

@dataclass
class Layout:
    """What the checkpoint holds: every key, the layer mapping and the dimensions."""

    stored: dict[str, Stored]
    name_index: dict[int, int]  # original layer id -> {bid} used in its tensor names
    pass_order: list[int]  # original layer id run by each GGUF block
    n_vocab: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_expert: int
    n_ff: int
    n_ff_shexp: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Numpy-order shape of every source key's unpacked tensor, by GGUF name (one expert for *_exps)."""
        d, q, kv = self.n_embd, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        return {"token_embd.weight": (self.n_vocab, d), "output_norm.weight": (d,), "attn_norm.weight": (d,),
                "attn_q.weight": (q, d), "attn_k.weight": (kv, d), "attn_v.weight": (kv, d),
                "attn_output.weight": (d, q), "ffn_norm.weight": (d,), "ffn_gate_inp.weight": (self.n_expert, d),
                "ffn_gate_shexp.weight": (self.n_ff_shexp, d), "ffn_up_shexp.weight": (self.n_ff_shexp, d),
                "ffn_down_shexp.weight": (d, self.n_ff_shexp), "ffn_gate_exps.weight": (self.n_ff, d),
                "ffn_up_exps.weight": (self.n_ff, d), "ffn_down_exps.weight": (d, self.n_ff)}


def _id_list(metadata: dict[str, str], key: str) -> list[int] | None:
    """A list of layer ids from the safetensors metadata (JSON, Python repr or comma-separated)."""
    text = metadata.get(key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [v for v in text.strip().strip("[]()").split(",") if v.strip()]
    try:
        ids = [int(v) for v in value]
    except (TypeError, ValueError):
        ids = None
    if not ids or any(i < 0 for i in ids):
        raise GgtoolError(f"safetensors metadata {key}={text!r} is not a list of layer ids",
                          "expected e.g. [0, 1, 2, 3, 5]")
    return ids


def _layers(metadata: dict[str, str], present: set[int]) -> tuple[dict[int, int], list[int]]:
    """Original layer id -> name index, and the pass order; refuses missing layers."""
    layer_ids = _id_list(metadata, "layer_ids")
    if layer_ids is None:
        missing = sorted(set(range(max(present) + 1)) - present)
        if missing:
            raise GgtoolError(f"layer {missing[0]} is missing: the checkpoint has no layers.{missing[0]}.* tensors "
                              f"but has layers up to {max(present)}", "the checkpoint is incomplete")
        layer_ids = sorted(present)
    if present == set(layer_ids):  # tensors named by original layer id
        name_index = {i: i for i in layer_ids}
    elif present == set(range(len(layer_ids))):  # tensors named by storage position
        name_index = {i: pos for pos, i in enumerate(layer_ids)}
    else:
        missing = sorted(set(layer_ids) - present) or sorted(set(range(len(layer_ids))) - present)
        raise GgtoolError(f"layer {missing[0]} is missing: metadata layer_ids={layer_ids} but the checkpoint has "
                          f"layers.{{{','.join(map(str, sorted(present)))}}}.*", "the checkpoint is incomplete")
    pass_order = _id_list(metadata, "pass_order") or layer_ids
    unknown = [i for i in pass_order if i not in name_index]
    if unknown:
        raise GgtoolError(f"safetensors metadata pass_order={pass_order} runs layer {unknown[0]}, which layer_ids="
                          f"{layer_ids} does not store", "the checkpoint's metadata is inconsistent")
    return name_index, pass_order


def _split(name: str) -> tuple[str, str]:
    """(key, packed part) of a tensor name: `k__bin` -> (k, "bin"); a plain name -> (name, "")."""
    key, sep, suffix = name.rpartition("__")
    return (key, suffix) if sep and suffix in PACKED_PARTS else (name, "")


def _match(key: str) -> tuple[str, int | None, int | None] | None:
    """(table template, layer index, expert index) of a key, or None if no table knows it."""
    for pattern, template in _KNOWN:
        m = pattern.fullmatch(key)
        if m:
            groups = m.groupdict()
            return template, (int(groups["bid"]) if "bid" in groups else None), \
                (int(groups["xid"]) if "xid" in groups else None)
    return None


@lru_cache(maxsize=4)
def layout(ckpt: Checkpoint) -> Layout:
    """Group the tensors into keys, match them against the tables and derive the dimensions, refusing anything odd."""
    parts: dict[str, set[str]] = {}
    for name in ckpt.names:
        key, part = _split(name)
        parts.setdefault(key, set()).add(part)
    unknown = sorted(n for n in ckpt.names if _match(_split(n)[0]) is None)
    if unknown:
        shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        hint = ("a 3-bit (-it-5L embedding) packing's layout is unknown to ggtool; add it beside bin/int4"
                if any("__int3" in n for n in unknown) else
                "ggtool's SSMoELM name table (ssmoelm.py) assumes other names; map these names there")
        raise GgtoolError(f"the checkpoint has tensors the SSMoELM table does not know: {shown}", hint)
    stored = {key: _stored(ckpt, key, p) for key, p in parts.items()}

    present: set[int] = set()
    experts: dict[tuple[str, int], set[int]] = {}  # (template, layer) -> expert indices
    for key in stored:
        template, bid, xid = _match(key)
        if bid is not None:
            present.add(bid)
        if xid is not None:
            experts.setdefault((template, bid), set()).add(xid)
    if not present:
        raise GgtoolError(f"{ckpt.folder}: no layers.N.* tensors", "the checkpoint holds no transformer layers")
    name_index, pass_order = _layers(ckpt.metadata, present)

    def get(key: str) -> Stored:
        if key not in stored:
            raise GgtoolError(f"tensor {key} is missing from the checkpoint (neither plain nor packed)",
                              "the checkpoint is incomplete")
        return stored[key]

    b0 = min(present)
    gate0 = next(iter(EXPERT_TENSORS))
    n_expert = len(experts.get((gate0, b0), ()))
    for b in sorted(present):
        for template in EXPERT_TENSORS:
            xids = experts.get((template, b), set())
            if xids != set(range(n_expert)) or not n_expert:
                raise GgtoolError(f"tensor {template.format(bid=b, xid='*')} exists for experts {sorted(xids)} but "
                                  f"{gate0.format(bid=b0, xid='*')} for {n_expert} (0-{n_expert - 1})",
                                  "every expert matrix must exist for the same experts 0..n-1 in every layer")

    head_dim = int(choice(ckpt, "head_dim"))
    embd = get("embed.weight").shape
    q_rows, k_rows = get(f"layers.{b0}.attn.q_proj.weight").shape[0], get(f"layers.{b0}.attn.k_proj.weight").shape[0]
    lay = Layout(stored, name_index, pass_order, n_vocab=embd[0], n_embd=embd[-1], n_head=q_rows // head_dim,
                 n_head_kv=k_rows // head_dim, head_dim=head_dim, n_expert=n_expert,
                 n_ff=get(gate0.format(bid=b0, xid=0)).shape[0],
                 n_ff_shexp=get(f"layers.{b0}.moe.shared_expert.gate_proj.weight").shape[0])
    if q_rows % head_dim or k_rows % head_dim or not lay.n_head_kv or lay.n_head % lay.n_head_kv:
        raise GgtoolError(f"layers.{b0}.attn.q_proj/k_proj have {q_rows}/{k_rows} rows, which head_dim={head_dim} "
                          "does not split into query heads that are a multiple of the KV heads",
                          "set head_dim in config.json (or CHOICES) to the model's head size")
    shapes = lay.shapes()
    expected = [(src, dst) for src, dst in TENSORS.items()]
    for b in sorted(present):
        expected += [(src.format(bid=b), dst) for src, dst in LAYER_TENSORS.items()]
        expected += [(src.format(bid=b, xid=x), dst) for src, dst in EXPERT_TENSORS.items() for x in range(n_expert)]
    for key, dst in expected:
        s = get(key)
        if tuple(s.shape) != shapes[dst]:
            raise GgtoolError(f"tensor {s.source} has shape {list(s.shape)} but embed.weight and layers.{b0} imply "
                              f"{list(shapes[dst])}", "the checkpoint's tensors disagree with each other")
    return lay


def neox_to_norm_rows(n_head: int, head_dim: int) -> np.ndarray:
    """Row order that makes NORM RoPE (adjacent pairs) compute rotate-half RoPE on the original rows."""
    half = head_dim // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)  # 0, h, 1, h+1, ...
    return (np.arange(n_head)[:, None] * head_dim + within[None, :]).reshape(-1)


# -- the family -----------------------------------------------------------------------------------------

class Ssmoelm(Family):
    def __init__(self) -> None:
        # a packed key's scale/shape/cols are consumed with its data; layout() has already refused unknown keys
        super().__init__(name="ssmoelm", title="SSMoELM (packed 1-bit/4-bit safetensors)",
                         arch=ARCH_FOR_ROUTER.get(CHOICES["router"], "deepseek"),
                         ignored_tensors=(r".+__(scale|shape|cols)",))

    def detect(self, ckpt: Checkpoint) -> bool:
        return ckpt.config.get("model_type") == "ssmoelm" or any(n.endswith(("__bin", "__int4")) for n in ckpt.names)

    def check(self, ckpt: Checkpoint) -> None:
        for key, allowed in (("router", ARCH_FOR_ROUTER), ("rope_style", ("neox", "norm")),
                             ("int4_codes", ("twos_complement", "offset_binary")),
                             ("bin_bit_order", ("big", "little"))):
            if CHOICES[key] not in allowed:
                raise GgtoolError(f"ssmoelm.py CHOICES[{key!r}] = {CHOICES[key]!r} is not one of {', '.join(allowed)}")
        lay = layout(ckpt)
        if self.arch == "deepseek" and lay.n_ff_shexp % lay.n_ff:
            raise GgtoolError(f"the shared expert is {lay.n_ff_shexp} wide but the routed experts {lay.n_ff}: "
                              "llama.cpp's deepseek graph sizes its shared expert as a multiple of the expert width",
                              "ggtool refuses rather than convert it wrong")
        if self.arch == "deepseek" and lay.n_head * lay.head_dim != lay.n_embd:
            raise GgtoolError(f"{lay.n_head} heads x head_dim {lay.head_dim} != d_model {lay.n_embd}: llama.cpp's "
                              "deepseek graph sizes Q and the attention output as d_model",
                              "ggtool refuses rather than convert it wrong")
        if not 0 < int(choice(ckpt, "num_experts_per_tok")) <= lay.n_expert:
            raise GgtoolError(f"num_experts_per_tok={choice(ckpt, 'num_experts_per_tok')} with {lay.n_expert} experts")

    def vocab_size(self, ckpt: Checkpoint) -> int:
        return layout(ckpt).n_vocab

    def hparams(self, ckpt: Checkpoint) -> list[HParam]:
        lay = layout(ckpt)
        common = [
            HParam("context_length", int(choice(ckpt, "max_position_embeddings"))),
            HParam("embedding_length", lay.n_embd), HParam("block_count", len(lay.pass_order)),
            HParam("feed_forward_length", lay.n_ff), HParam("attention.head_count", lay.n_head),
            HParam("attention.head_count_kv", lay.n_head_kv), HParam("attention.key_length", lay.head_dim),
            HParam("attention.value_length", lay.head_dim), HParam("rope.dimension_count", lay.head_dim),
            HParam("rope.freq_base", float(choice(ckpt, "rope_theta")), "f32"),
            HParam("attention.layer_norm_rms_epsilon", float(choice(ckpt, "rms_norm_eps")), "f32"),
            HParam("expert_count", lay.n_expert), HParam("expert_used_count", int(choice(ckpt, "num_experts_per_tok"))),
        ]
        if self.arch == "deepseek":
            arch = [HParam("expert_feed_forward_length", lay.n_ff), HParam("leading_dense_block_count", 0),
                    HParam("expert_shared_count", lay.n_ff_shexp // lay.n_ff)]
        else:  # granitemoe: its logit/residual/embedding scales left at 1 / unset
            arch = [HParam("expert_shared_feed_forward_length", lay.n_ff_shexp), HParam("logit_scale", 1.0, "f32")]
        return common + arch + [HParam(key, value, kind) for key, value, kind in SAMPLING]

    def vocab(self, ckpt: Checkpoint) -> Vocab:
        """The byte-fallback BPE as a GGUF `llama` vocabulary, with the card's special tokens and chat template."""
        v = load_llama_vocab(ckpt.folder, self.vocab_size(ckpt), ckpt.config)
        for i, (text, kind) in enumerate(SPECIAL_TOKENS):
            if v.tokens[i] != text:
                raise GgtoolError(f"{ckpt.folder / 'tokenizer.json'}: token {i} is {v.tokens[i]!r}, but the SSMoELM "
                                  f"card puts {text} there", "this tokenizer does not belong to an SSMoELM checkpoint")
            v.token_types[i] = TOKEN_CONTROL
            if kind:
                v.special[kind] = i
        v.add_bos, v.add_eos = bool(CHOICES["add_bos"]), False
        v.chat_template = v.chat_template or CHOICES["chat_template"]
        return v

    def tensor_plan(self, ckpt: Checkpoint) -> list[PlannedTensor]:
        return self._plan(ckpt, lossless=False)

    def lossless(self, ckpt: Checkpoint) -> tuple[list[PlannedTensor], gguf.LlamaFileType]:
        """The plan with every packed tensor in its exact block type (force_type), and the file type to record."""
        plan = self._plan(ckpt, lossless=True)
        weights: dict[str, int] = {}
        for t in plan:
            weights[t.force_type] = weights.get(t.force_type, 0) + int(np.prod(t.shape))
        main = max((k for k in weights if k in ("TQ1_0", "Q4_0")), key=weights.get, default="F32")
        return plan, {"TQ1_0": gguf.LlamaFileType.MOSTLY_TQ1_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                      "F32": gguf.LlamaFileType.ALL_F32}[main]

    def _plan(self, ckpt: Checkpoint, lossless: bool) -> list[PlannedTensor]:
        lay = layout(ckpt)
        shapes = lay.shapes()
        neox = CHOICES["rope_style"] == "neox"
        reorder = {"attn_q.weight": neox_to_norm_rows(lay.n_head, lay.head_dim) if neox else None,
                   "attn_k.weight": neox_to_norm_rows(lay.n_head_kv, lay.head_dim) if neox else None}

        def tensor(name: str, keys: list[str]) -> PlannedTensor:
            suffix = name.split(".", 2)[-1] if name.startswith("blk.") else name
            stored = [lay.stored[k] for k in keys]
            rows = reorder.get(suffix)
            shape = (len(keys), *shapes[suffix]) if "_exps." in name else shapes[suffix]
            if lossless:  # parts yield finished bytes in the tensor's exact type
                qtype = lossless_type(stored)
                loaders = [partial(encoded, s=s, qtype=qtype, rows=rows) for s in stored]
                force = qtype.name
            else:  # parts yield float32 weights for gguf_out to encode
                loaders = [partial(dense, s=s, rows=rows) for s in stored]
                force = "F32" if suffix == "ffn_gate_inp.weight" else None
            parts = [Part(s.source, s.shape, loader=load) for s, load in zip(stored, loaders)]
            return PlannedTensor(name, shape, parts, force_type=force)

        plan = [tensor("token_embd.weight", ["embed.weight"])]
        for blk, layer in enumerate(lay.pass_order):
            b = lay.name_index[layer]
            for src, dst in LAYER_TENSORS.items():
                plan.append(tensor(f"blk.{blk}.{dst}", [src.format(bid=b)]))
            for src, dst in EXPERT_TENSORS.items():
                plan.append(tensor(f"blk.{blk}.{dst}", [src.format(bid=b, xid=x) for x in range(lay.n_expert)]))
        plan.append(tensor("output_norm.weight", ["norm.weight"]))
        return plan

    def reference_logits(self, folder: Path, ids: list[int]) -> np.ndarray:
        from .ssmoelm_reference import forward

        return forward(Checkpoint(Path(folder)), ids)
