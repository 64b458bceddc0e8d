"""Memory model of llama.cpp for one placement: weights, KV cache, output and compute buffers per device.

Everything comes from tensor infos and metadata (a GGUF's, or shapes + quant recipe from a config.json);
no weights are read. The rules follow the vendored llama.cpp and are checked against the sizes it logs:
- layers: with n_gpu_layers = ngl, layer il (0..n_layer, where il = n_layer is the output layer) is
  offloaded iff il >= n_layer + 1 - ngl (src/llama-model.cpp), so the OUTPUT layer is offloaded first and
  then the LAST repeating layers; token_embd (the input layer) always stays on the CPU.
- host weights are memory-mapped: llama.cpp's "CPU_Mapped" buffer spans the file from the first to the
  last CPU-resident tensor (`logged_model`; resident pages are only the tensors used); tensors the CPU
  repacks (x86 AVX2: Q4_0/Q4_K/IQ4_NL/MXFP4 matrices with ne1 % 8 == 0) are copied into "CPU_REPACK".
- KV cache: kv_size = pad(n_ctx, 256) cells, per layer row_size(type_k, n_embd_k_gqa) + row_size(type_v,
  n_embd_v_gqa), on the device of its layer (offload_kqv on).
- output buffer: n_vocab * n_seq_max * 4 bytes on the host.
- compute buffers: for the MoE graphs galloc.py models (olmoe, llama-style MoE, deepseek, metis), the
  allocator's peak over the graph itself (the graph node by node, the scheduler's splits and copies, ggml-alloc's
  best-fit reuse); for the others, `compute_bytes`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ..errors import GgtoolError
from ..families import by_config
from ..gguf_in import read_header
from . import galloc

# the routed experts' tensor names (llama-arch.cpp's ffn_*_exps / *_chexps), for -ot patterns and the planner
EXPERT_PATTERN = r"ffn_(up|down|gate|gate_up)_(ch|)exps"
EXPERT_RX = re.compile(rf"\.{EXPERT_PATTERN}\.")
LAYER_RX = re.compile(r"^blk\.(\d+)\.")
REPACK_TYPES = {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"}  # ggml-cpu repack.cpp on x86 with AVX2 (no AVX512)
CPU_ALIGN = 32  # ggml-cpu TENSOR_ALIGNMENT; also what an RPC server backed by a CPU reports


def pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of a row of n values of a ggml type (gguf.GGML_QUANT_SIZES: block size, bytes per block)."""
    blck, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name.upper()]]
    return n // blck * size


@dataclass
class Tensor:
    name: str
    type: str
    shape: list[int]  # ne0 first
    n_bytes: int
    offset: int  # position of its data in the file (or in the file that would be written)

    @property
    def layer(self) -> int | None:
        m = LAYER_RX.match(self.name)
        return int(m.group(1)) if m else None

    @property
    def is_expert(self) -> bool:
        return bool(EXPERT_RX.search(self.name))


@dataclass
class ModelShape:
    """What the memory model needs to know about a model."""

    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ctx_train: int
    tensors: list[Tensor]
    file_type: str = ""
    moe_latent: int = 0  # width the routed experts work in (moe_latent_size; 0: n_embd)
    n_ff_shexp: int = 0  # shared expert width (computed beside the routed experts)

    @property
    def n_embd_k_gqa(self) -> int:
        return self.head_dim_k * self.n_head_kv

    @property
    def n_embd_v_gqa(self) -> int:
        return self.head_dim_v * self.n_head_kv

    @property
    def weight_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def read_gguf(path: Path) -> ModelShape:
    """The shape of a GGUF from its header (tensor infos and metadata) alone."""
    path = Path(path)
    header = read_header(path)  # bounds-checked, tensor data within the file
    try:
        arch = str(header.get("general.architecture"))
        g = lambda key, default=None: header.get(f"{arch}.{key}", default)  # noqa: E731
        tensors = [Tensor(t.name, t.type.name, list(t.shape), t.n_bytes, t.offset) for t in header.tensors]
        n_layer = int(g("block_count"))
        n_embd = int(g("embedding_length"))
        n_head = int(g("attention.head_count"))
        n_head_kv = int(g("attention.head_count_kv", n_head))
        hk = int(g("attention.key_length", n_embd // n_head))
        hv = int(g("attention.value_length", n_embd // n_head))
        emb = next((t for t in tensors if t.name == "token_embd.weight"), None)
        n_vocab = header.array_lengths.get("tokenizer.ggml.tokens", emb.shape[1] if emb else 0)
        n_expert = int(g("expert_count", 0))
        n_used = int(g("expert_used_count", 0))
        n_ff_exp = int(g("expert_feed_forward_length", g("feed_forward_length", 0)))
        n_ctx_train = int(g("context_length", 4096))
        latent = int(g("moe_latent_size", 0))
        # the shared experts' width: its own key, or (deepseek) expert_shared_count experts of the routed width
        n_ff_shexp = int(g("expert_shared_feed_forward_length", n_ff_exp * int(g("expert_shared_count", 0))))
        ft = header.get("general.file_type")
    except (TypeError, ValueError, ZeroDivisionError) as e:  # keys missing or of the wrong type: one clear line
        raise GgtoolError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})",
                          "the file is truncated or corrupted; convert or download it again") from None
    if n_layer <= 0 or n_embd <= 0 or n_head <= 0 or n_head_kv <= 0 or not tensors:
        raise GgtoolError(f"{path}: GGUF metadata lacks the model's shape", "is this a model GGUF?")
    # metadata and tensor infos must tell the same story (a corrupted count would plan a different model)
    layers = {t.layer for t in tensors if t.layer is not None}
    if layers and max(layers) + 1 != n_layer:
        raise GgtoolError(f"{path}: {arch}.block_count is {n_layer} but the tensors hold {max(layers) + 1} layers",
                          "the file is corrupted")
    if emb is not None and (emb.shape[0] != n_embd or emb.shape[1] < n_vocab or n_vocab <= 0):
        raise GgtoolError(f"{path}: token_embd.weight {emb.shape} does not match {arch}.embedding_length "
                          f"{n_embd} and {n_vocab} tokens", "the file is corrupted")
    if n_expert and not 0 < n_used <= n_expert:
        raise GgtoolError(f"{path}: {n_used} experts used of {n_expert}", "the file is corrupted")
    file_type = gguf.LlamaFileType(int(ft)).name.replace("MOSTLY_", "") if ft is not None else ""
    return ModelShape(path.name, arch, n_layer, n_embd, n_head, n_head_kv, hk, hv, n_vocab, n_expert, n_used,
                      n_ff_exp, n_ctx_train, tensors, file_type, latent, n_ff_shexp)


# -- shapes from a source checkpoint's config.json plus llama.cpp's quantization recipe -------------------------

def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def recipe_type(ftype: str, name: str, layer: int | None, n_layer: int, n_expert: int, gqa: int,
                i_attn_v: int, i_ffn_down: int) -> str:
    """The ggml type llama.cpp's quantizer gives a 2-D+ tensor for `ftype` (llamacpp.md §1.3; non-70B, non-Falcon)."""
    ft = ftype.upper()
    if ft in ("F16", "BF16", "F32", "Q8_0", "Q4_0"):
        if ft == "Q4_0" and name == "output.weight":
            return "Q6_K"
        return ft
    if name == "output.weight":
        return "Q5_K" if ft == "IQ2_M" else "Q6_K"
    default = {"Q4_K_M": "Q4_K", "Q3_K_M": "Q3_K", "IQ3_M": "IQ3_S", "IQ2_M": "IQ2_S", "Q2_K": "Q2_K"}.get(ft)
    if default is None:
        raise GgtoolError(f"no quantization recipe for --type {ftype}",
                          "choose one of F16, Q8_0, Q4_0, Q4_K_M, Q3_K_M, IQ3_M, IQ2_M, Q2_K")
    if name == "token_embd.weight":
        return "IQ3_S" if ft == "IQ2_M" else default
    exp8 = n_expert == 8
    if ".attn_v." in name:
        if ft == "Q4_K_M":
            return "Q8_0" if exp8 else ("Q6_K" if _use_more_bits(i_attn_v, n_layer) else "Q4_K")
        if ft == "Q3_K_M":
            return "Q8_0" if exp8 else ("Q5_K" if i_attn_v < 2 else "Q4_K")
        if ft == "IQ3_M":
            return "Q8_0" if exp8 else "Q4_K"
        if ft == "IQ2_M":
            return "Q4_K" if gqa >= 4 or n_expert >= 4 else "IQ3_S"
        return "Q8_0" if exp8 else ("Q4_K" if gqa >= 4 else "Q3_K")
    if ".attn_k." in name:
        if exp8:
            return "Q4_K" if ft == "IQ2_M" else "Q8_0"
        return default
    if ".attn_output." in name:
        if exp8:
            return "Q5_K"
        return {"Q4_K_M": "Q4_K", "Q3_K_M": "Q4_K", "IQ3_M": "Q4_K", "IQ2_M": "IQ3_S", "Q2_K": "Q3_K"}[ft]
    if ".ffn_down" in name:
        if ft == "Q4_K_M":
            return "Q6_K" if _use_more_bits(layer or 0, n_layer) else "Q4_K"
        if ft == "Q3_K_M":
            return "Q5_K" if (layer or 0) < n_layer // 16 else "Q4_K"
        if ft == "IQ3_M":
            return "Q4_K" if (layer or 0) < n_layer // 8 or (exp8 and _use_more_bits(layer or 0, n_layer)) else "IQ3_S"
        if ft == "IQ2_M":
            return "IQ3_S" if i_ffn_down < n_layer // 8 else default
        return "Q3_K"
    return default


def from_config(src: Path, ftype: str) -> ModelShape:
    """The shape a GGUF of checkpoint `src` (folder or config.json) quantized to `ftype` would have: the tensors
    and shapes come from the family that converts it (its `layout`), in the order llama.cpp's quantizer meets them."""
    src = Path(src)
    cfg_path = src / "config.json" if src.is_dir() else src
    if not cfg_path.is_file():
        raise GgtoolError(f"{src}: no config.json", "give a GGUF file, or a checkpoint folder / config.json "
                          "with --type")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise GgtoolError(f"{cfg_path}: cannot read the model's shape ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise GgtoolError(f"{cfg_path}: cannot read the model's shape (not a JSON object)")
    family = by_config(cfg, str(cfg_path))
    try:
        d = family.dims(cfg)
        layout = [(name, [int(n) for n in reversed(shape)]) for name, shape in family.layout(cfg)]  # ne0 first
        n_layer, n_embd, n_head, n_head_kv = int(d.n_layer), int(d.n_embd), int(d.n_head), int(d.n_head_kv)
        n_vocab, n_expert, n_used, n_ff = int(d.n_vocab), int(d.n_expert), int(d.n_expert_used), int(d.n_ff)
        head_dim, n_ctx_train = int(d.head_dim), int(d.n_ctx_train)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise GgtoolError(f"{cfg_path}: cannot read the model's shape ({type(e).__name__}: {e})") from None
    gqa = n_head // max(n_head_kv, 1)
    tied = not any(name == "output.weight" for name, _ in layout)  # llama.cpp then quantizes token_embd as the head

    def layer_of(name: str) -> int:
        m = LAYER_RX.match(name)
        return int(m.group(1)) if m else -1

    specs = sorted(layout, key=lambda t: (layer_of(t[0]), t[0]))  # the output layer's tensors, then each block's
    tensors, offset, i_attn_v, i_ffn_down = [], 0, 0, 0
    for name, shape in specs:
        m = LAYER_RX.match(name)
        layer = int(m.group(1)) if m else None
        if len(shape) == 1 or ".ffn_gate_inp." in name:
            typ = "F32"  # norms and the router are copied unchanged
        else:
            src_name = "output.weight" if tied and name == "token_embd.weight" else name
            typ = recipe_type(ftype, src_name, layer, n_layer, n_expert, gqa, i_attn_v, i_ffn_down)
            blck = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[typ]][0]
            if shape[0] % blck:  # llama.cpp falls back when rows do not fill whole blocks
                typ = "Q8_0" if shape[0] % 32 == 0 else "F16"
            i_attn_v += ".attn_v." in name
            i_ffn_down += ".ffn_down" in name
        n_bytes = row_bytes(typ, shape[0]) * int(np.prod(shape[1:], dtype=np.int64))
        tensors.append(Tensor(name, typ, shape, n_bytes, offset))
        offset += pad(n_bytes, 32)
    return ModelShape(cfg_path.parent.name, family.arch, n_layer, n_embd, n_head, n_head_kv, head_dim, head_dim,
                      n_vocab, n_expert, n_used, n_ff, n_ctx_train, tensors, ftype.upper())


# -- placement and prediction ------------------------------------------------------------------------------------

@dataclass
class Device:
    """A device llama.cpp offloads to: a local GPU (`kind` "gpu") or an RPC host (`kind` "rpc")."""

    name: str
    budget: int  # bytes
    bandwidth: float = 100e9  # bytes/s
    kind: str = "gpu"  # "gpu": offloads ops on CPU-resident weights for batches >= 32 (CUDA); "rpc": does not
    align: int = 128  # buffer alignment (CUDA 128; an RPC server backed by a CPU reports 32)


@dataclass
class Placement:
    n_gpu_layers: int
    n_ctx: int = 4096
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False
    cpu_expert_layers: tuple[int, ...] = ()  # layers whose expert tensors are overridden to the CPU
    n_batch: int = 512
    n_ubatch: int = 512
    tensor_split: tuple[float, ...] = ()  # layers per device (several devices)
    repack: bool = True  # the CPU repacks supported quant types into CPU_REPACK (llama.cpp's default)


@dataclass
class Usage:
    """Bytes one device (or the host) holds."""

    model: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0
    repack: int = 0  # host only: part of `model` that is the CPU_REPACK copy
    logged_model: int = 0  # host only: what llama.cpp logs, CPU_Mapped (an address span of the file) + CPU_REPACK
    read_per_token: float = 0.0  # bytes read from this memory per generated token

    @property
    def total(self) -> int:
        return self.model + self.kv + self.compute + self.output


@dataclass
class Prediction:
    devices: dict[str, Usage]
    host: Usage
    layer_device: dict[int, str] = field(default_factory=dict)  # layer (n_layer = output) → device or "CPU"


def layer_devices(shape: ModelShape, p: Placement, devices: list[Device]) -> dict[int, str]:
    """Which device each layer lands on (il = n_layer is the output layer), as llama_model::load_tensors does."""
    n = shape.n_layer
    ngl = min(p.n_gpu_layers, n + 1) if devices else 0
    start = max(n + 1 - ngl, 0)
    split = list(p.tensor_split) or [1.0] * len(devices)
    if len(split) < len(devices):
        split += [0.0] * (len(devices) - len(split))
    total = sum(split[:len(devices)]) or 1.0
    cum, acc = [], 0.0
    for s in split[:len(devices)]:
        acc += s
        cum.append(acc / total)
    out = {}
    for il in range(n + 1):
        if il < start or not devices:
            out[il] = "CPU"
            continue
        frac = (il - start) / ngl
        idx = next((i for i, c in enumerate(cum) if c > frac), len(devices) - 1)  # std::upper_bound
        out[il] = devices[idx].name
    return out


def tensor_device(t: Tensor, shape: ModelShape, p: Placement, where: dict[int, str]) -> str:
    if t.name.startswith("token_embd."):
        return "CPU"  # the input layer always stays on the host
    il = t.layer
    if il is None:
        return where[shape.n_layer]  # output and output_norm belong to the output layer
    if t.is_expert and il in p.cpu_expert_layers:
        return "CPU"
    return where[il]


def kv_cells(n_ctx: int) -> int:
    return pad(max(n_ctx, 1), 256)


def kv_layer_bytes(shape: ModelShape, p: Placement) -> int:
    """KV cache bytes of one layer for the placement's context size and cache types."""
    cells = kv_cells(p.n_ctx)
    return cells * (row_bytes(p.type_k, shape.n_embd_k_gqa) + row_bytes(p.type_v, shape.n_embd_v_gqa))


SCHED_MAX_COPIES = 4  # ggml-backend's copies of split inputs under pipeline parallelism


def compute_bytes(shape: ModelShape, p: Placement, holds_layers: bool, holds_output: bool, is_host: bool,
                  receives_hidden: bool, computes_experts: bool, offload_copy: int = 0,
                  pipeline: bool = False) -> int:
    """Compute buffer of one backend: the peak of the largest graph phase it runs (ggml-alloc reuses memory).

    With ub = min(n_ubatch, n_ctx) tokens, kv = pad(n_ctx, 256) cells, all f32 unless noted:
      E = n_embd*ub*4 (one hidden state), Lg = n_vocab*ub*4 (logits), KQ = kv*ub*n_head*4 (scores, no FA),
      M = kv*ub*4 (mask; f16 with FA), VI = ub*n_embd_v_gqa*8 (V row indices when V is stored transposed,
      no FA; ub*8 with FA), F = n_ff_exp*n_expert_used*ub*4 (one MoE intermediate), S = ub*20 (small inputs).
    Device:  attention KQ + M + 6E (no FA) or M + 6E (FA); output Lg + E (+E/2 with FA when the hidden state
             arrives from the CPU: 0 or E by allocation order); MoE 2E + max(3F, 2·n_used·E) + copies of CPU-resident
             expert weights a "gpu" device offloads the batch to; the largest of the phases it runs.
             (2·n_used·E only on a device that runs expert matmuls: measured on a hidden-1024 top-4 model)
    Host:    graph inputs M + VI + S always live, + 2E; when it runs layers: attention KQ + M + VI + 5E + S
             (no FA) or M + 6E + S (FA); output Lg + 3E (no FA) or Lg + 2E (FA, +E on a quantized cache);
             MoE 2E + 3F (its split does not keep the attention inputs).
    Pipeline parallelism (several devices, every layer offloaded, no overrides): each device keeps
      SCHED_MAX_COPIES copies of its split inputs, i.e. 3 more of E + M + VI + S (the host too).
    Calibrated on llama.cpp's logged sizes with a loopback RPC device (tests/test_plan.py).
    """
    ub = min(p.n_ubatch, p.n_batch, p.n_ctx)
    kv = kv_cells(p.n_ctx)
    fa = p.flash_attn
    E = shape.n_embd * ub * 4
    Lg = shape.n_vocab * ub * 4
    KQ = kv * ub * shape.n_head * 4
    M = kv * ub * (2 if fa else 4)
    VI = ub * 8 if fa else ub * shape.n_embd_v_gqa * 8
    F = shape.n_ff_exp * max(shape.n_expert_used, 1) * ub * 4 if shape.n_expert else shape.n_ff_exp * ub * 4
    S = ub * 20
    # routed experts working in a latent (moe_latent_size) have latent-wide inputs and outputs; a shared expert
    # of width n_ff_shexp runs beside them on the full-width state (metis itself is modelled by galloc.py)
    El = (shape.moe_latent or shape.n_embd) * ub * 4
    Fs = shape.n_ff_shexp * ub * 4
    # attention without q/k norms (llama-style) keeps one hidden-state-sized tensor fewer than OLMoE's
    A = 6 * E if any(".attn_q_norm." in t.name for t in shape.tensors) else 5 * E
    phases = []
    if is_host:
        inputs = M + VI + S
        phases.append(inputs + 2 * E)
        if holds_layers:
            phases.append(M + 6 * E + S if fa else KQ + M + VI + 5 * E + S)
        if holds_output:
            phases.append(Lg + (2 if fa else 3) * E + S)
        if holds_output:
            phases[-1] += E if fa and p.type_k != "f16" else 0  # FA on a quantized cache converts K/V rows
        if computes_experts:
            phases.append(2 * E + 3 * F)
    else:
        if holds_layers:
            phases.append(M + A if fa else KQ + M + A)
            # when it runs the experts, their outputs [n_embd, n_used, ub] and the routing-weighted copy
            # (ggml_mul, not in place) are live together: 2·n_used·E, more than 3F for wide models with top-k ≥ 4
            weighted = 2 * shape.n_expert_used * El if computes_experts else 0
            phases.append(2 * E + max(3 * F, weighted) + offload_copy)
            if Fs:
                phases.append(3 * E + 2 * Fs)
        if holds_output:
            # with FA and a hidden state arriving from the CPU, ggml-alloc's layout costs one extra E in some
            # layer splits and none in others (measured both ways): predict half of it
            phases.append(Lg + E + (E // 2 if fa and receives_hidden else 0))
    extra = (SCHED_MAX_COPIES - 1) * (E + M + VI + S) if pipeline and phases else 0
    return max(phases, default=0) + extra


def predict(shape: ModelShape, p: Placement, devices: list[Device]) -> Prediction:
    """Bytes per device and on the host that llama.cpp allocates for placement `p`."""
    where = layer_devices(shape, p, devices)
    dev_by_name = {d.name: d for d in devices}
    usage = {d.name: Usage() for d in devices}
    host = Usage()
    cpu_tensors: list[Tensor] = []
    frac_used = shape.n_expert_used / shape.n_expert if shape.n_expert else 1.0
    cpu_expert_bytes_by_layer: dict[int, int] = {}
    for t in shape.tensors:
        dev = tensor_device(t, shape, p, where)
        read = t.n_bytes * (frac_used if t.is_expert else 1.0)
        if t.name.startswith("token_embd."):
            read = row_bytes(t.type, t.shape[0])  # one row per token
        if dev == "CPU":
            cpu_tensors.append(t)
            host.read_per_token += read
            if t.is_expert and t.layer is not None:
                cpu_expert_bytes_by_layer[t.layer] = cpu_expert_bytes_by_layer.get(t.layer, 0) + t.n_bytes
        else:
            usage[dev].model += pad(t.n_bytes, dev_by_name[dev].align)
            usage[dev].read_per_token += read
    emb = next((t for t in shape.tensors if t.name == "token_embd.weight"), None)
    out_dev = where[shape.n_layer]
    if emb is not None and not any(t.name == "output.weight" for t in shape.tensors):
        # tied output: llama.cpp loads token_embd a second time as the output layer's matrix (TENSOR_DUPLICATED),
        # a copy on a device, the same mapped pages on the host
        if out_dev == "CPU":
            host.read_per_token += emb.n_bytes
        else:
            usage[out_dev].model += pad(emb.n_bytes, dev_by_name[out_dev].align)
            usage[out_dev].read_per_token += emb.n_bytes
    repacked = [t for t in cpu_tensors if p.repack and t.type in REPACK_TYPES and len(t.shape) >= 2
                and t.shape[1] % 8 == 0 and not t.name.startswith("token_embd.")]  # GET_ROWS is not repacked
    repacked_names = {t.name for t in repacked}
    mapped = [t for t in cpu_tensors if t.name not in repacked_names]
    host.repack = sum(pad(t.n_bytes, CPU_ALIGN) for t in repacked)
    # resident host weights: pages of the tensors the CPU uses from the mapping, plus the repacked copies
    # (pages of offloaded or repacked tensors are read once at load and stay only as reclaimable page cache)
    host.model = sum(t.n_bytes for t in mapped) + host.repack
    if mapped:  # llama.cpp's CPU_Mapped buffer spans the file from its first to its last mapped tensor
        host.logged_model = max(t.offset + t.n_bytes for t in mapped) - min(t.offset for t in mapped)
    host.logged_model += host.repack
    kv_layer = kv_layer_bytes(shape, p)
    for il in range(shape.n_layer):
        u = host if where[il] == "CPU" else usage[where[il]]
        u.kv += kv_layer
        u.read_per_token += kv_layer  # attention reads the whole cache at full context
    host.output = shape.n_vocab * 4  # n_seq_max = 1
    ngl_start = shape.n_layer + 1 - min(p.n_gpu_layers, shape.n_layer + 1) if devices else shape.n_layer + 1
    first_dev = where.get(max(ngl_start, 0))
    pipeline = (len(devices) > 1 and p.n_gpu_layers > shape.n_layer and not p.cpu_expert_layers
                and all(d.kind in ("gpu", "rpc") for d in devices))  # llama_context's conditions
    ub = min(p.n_ubatch, p.n_batch, p.n_ctx)
    offloaded = {}  # CPU-resident expert weights a GPU computes with for a batch (copied into its buffer)
    for t in shape.tensors:
        il = t.layer
        if (t.is_expert and il in p.cpu_expert_layers and where[il] != "CPU" and ub >= 32
                and dev_by_name[where[il]].kind == "gpu"):
            offloaded[t.name] = t.n_bytes
    g = galloc.graph_for(shape, p, where, set(p.cpu_expert_layers), offloaded)
    if g is not None:
        # a graph modelled node by node: the allocator's peak per backend (galloc.py)
        sizes = galloc.compute_buffers(g, {"CPU": CPU_ALIGN, **{d.name: d.align for d in devices}},
                                       SCHED_MAX_COPIES if pipeline else 1)
        for d in devices:
            usage[d.name].compute = sizes.get(d.name, 0)
        host.compute = sizes.get("CPU", 0)
        return Prediction(usage, host, where)
    for d in devices:
        layers = [il for il in range(shape.n_layer) if where[il] == d.name]
        has_out = where[shape.n_layer] == d.name
        copy = 0
        if d.kind == "gpu" and layers and min(p.n_ubatch, p.n_ctx) >= 32 and cpu_expert_bytes_by_layer:
            copy = max(cpu_expert_bytes_by_layer.get(il, 0) for il in layers)
        receives = ngl_start > 0 or d.name != first_dev
        # the device runs the expert matmuls of its layers whose experts stay on it (and of the others when
        # it takes over CPU-resident experts' batches)
        experts_here = shape.n_expert > 0 and (copy > 0 or any(il not in p.cpu_expert_layers for il in layers))
        usage[d.name].compute = compute_bytes(shape, p, bool(layers), has_out, False, receives, experts_here, copy,
                                              pipeline)
    cpu_layers = [il for il in range(shape.n_layer) if where[il] == "CPU"]
    cpu_experts = bool(cpu_layers) or any(dev_by_name[where[il]].kind != "gpu" for il in cpu_expert_bytes_by_layer
                                          if where[il] != "CPU")
    host.compute = compute_bytes(shape, p, bool(cpu_layers), where[shape.n_layer] == "CPU", True, False,
                                 cpu_experts and shape.n_expert > 0, pipeline=pipeline)
    return Prediction(usage, host, where)
