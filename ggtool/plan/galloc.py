"""llama.cpp's compute buffers from the graph itself: a model of ggml's scheduler and graph allocator.

A compute buffer is the high-water mark of ggml-alloc's dynamic allocator (ggml/src/ggml-alloc.c) walking the
graph llama.cpp reserves for a full micro-batch: every intermediate tensor is allocated when its node runs (in
place over a parent that has no other consumer, for the element-wise ops ggml lists as `ggml_op_can_inplace`),
and freed when its last consumer has run; free space is reused best-fit, so the peak depends on the order and
sizes of the tensors, not only on how many are alive at once. The scheduler (ggml/src/ggml-backend.cpp) cuts the
graph into splits per backend and copies each tensor a split needs from another backend into that backend's
buffer, at the start of the split; the source is kept until then.

`Graph` records the nodes a model graph builds (sizes, sources, views, in-place candidates, backend);
`compute_buffers` runs the scheduler's copies and the allocator over it and returns each backend's buffer size.
`moe_decoder_graph` mirrors the `src/models/*.cpp` of llama-style MoE decoders (olmoe, llama's MoE, deepseek,
metis) and the llm_graph_context helpers they call (build_norm, build_qkv, build_attn, build_moe_ffn, build_ffn),
node by node; an architecture's differences are a `MoeBlock` row in `MOE_BLOCKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf

from ..families.hf_moe import tensor_name

INPLACE = "inplace"  # an op ggml may compute into its parent's memory (ADD, MUL, DIV, SQR, UNARY, ROPE, RMS_NORM, ...)
OP = "op"  # any other op: always gets memory of its own
VIEW = "view"  # a view (reshape/permute/view/transpose): no memory, keeps its base alive
INPUT = "input"  # a graph input set by llama.cpp (tokens, positions, KQ mask, row indices): a leaf on the CPU
WEIGHT = "weight"  # a tensor in a model/KV buffer: not the allocator's
SET = "set"  # an op that writes into a view of a cache (ggml_set_rows): scheduled like an op, no memory of its own
DEP = "dep"  # the scheduler's placeholder that keeps a copied tensor until its copy is made (no memory)

EXP = gguf.MODEL_TENSOR


@dataclass(slots=True)
class Node:
    name: str
    kind: str
    size: int  # bytes (ggml_nbytes); 0 for views and weights
    srcs: list[int]
    backend: str | None  # None: placed by the scheduler (assign)
    base: int = -1  # views: the tensor they view (ggml's view_src is always a non-view)
    output: bool = False  # a graph output (never freed, never reused in place)
    shape: tuple = ()  # type and shape, for ggml_are_same_layout


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)

    def add(self, name: str, kind: str, size: int, srcs: list[int], backend: str | None, shape: tuple = (),
            output: bool = False, base: int = -1) -> int:
        if kind in (VIEW, SET) and base < 0:
            s = self.nodes[srcs[0]]
            base = s.base if s.kind == VIEW else srcs[0]
        self.nodes.append(Node(name, kind, size, list(srcs), backend, base, output, shape or (size,)))
        return len(self.nodes) - 1


class DynAllocator:
    """ggml_dyn_tallocr: best fit among the free blocks below the end, else the end block; merges on free."""

    def __init__(self, alignment: int):
        self.align = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]  # [offset, size], sorted; the last one is the open end
        self.max_size = 0

    def _pad(self, n: int) -> int:
        return (n + self.align - 1) // self.align * self.align

    def alloc(self, size: int) -> int:
        size = self._pad(size)
        best = -1
        for i, (_, bsize) in enumerate(self.blocks[:-1]):
            if bsize >= size and (best < 0 or bsize <= self.blocks[best][1]):
                best = i
        if best < 0:
            best = len(self.blocks) - 1
        off = self.blocks[best][0]
        self.blocks[best][0] += size
        self.blocks[best][1] -= size
        if self.blocks[best][1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, off + size)
        return off

    def free(self, off: int, size: int) -> None:
        size = self._pad(size)
        for i, b in enumerate(self.blocks):
            if b[0] + b[1] == off:  # the freed range follows this block
                b[1] += size
                if i + 1 < len(self.blocks) and b[0] + b[1] == self.blocks[i + 1][0]:
                    b[1] += self.blocks[i + 1][1]
                    del self.blocks[i + 1]
                return
            if off + size == b[0]:  # the freed range precedes this block
                b[0] = off
                b[1] += size
                if i > 0 and self.blocks[i - 1][0] + self.blocks[i - 1][1] == b[0]:
                    self.blocks[i - 1][1] += b[1]
                    del self.blocks[i]
                return
        pos = next((i for i, b in enumerate(self.blocks) if b[0] > off), len(self.blocks))
        self.blocks.insert(pos, [off, size])


def assign(g: Graph, cpu: str = "CPU") -> None:
    """ggml_backend_sched's passes 2-4 for the nodes a weight, cache or input did not place (backend None):
    spread the device backends down then up over them, ignoring the CPU; then any backend down, then up; views
    follow the tensor they view."""
    ops = [j for j, x in enumerate(g.nodes) if x.kind in (OP, INPLACE, SET)]
    for seq, skip_cpu in ((ops, True), (ops[::-1], True), (ops, False), (ops[::-1], False)):
        cur = None
        for j in seq:
            x = g.nodes[j]
            if x.backend is not None:
                cur = None if skip_cpu and x.backend == cpu else x.backend
            elif cur is not None:
                x.backend = cur
    for x in g.nodes:
        if x.backend is None and x.kind == VIEW:
            x.backend = g.nodes[x.base].backend
    for x in g.nodes:
        if x.backend is None:
            x.backend = cpu


def schedule(g: Graph, cpu: str = "CPU", n_copies: int = 1) -> Graph:
    """The scheduler's graph copy (ggml_backend_sched_split_graph, passes 5-6): splits of consecutive nodes on one
    backend (a new one also where a node uses a weight of another backend and the split already has inputs),
    and before each split a copy of every source that lives on another backend (one copy per backend, reused by
    later splits); a placeholder node before each copy keeps its source alive until the copy is made.

    With pipeline parallelism (`n_copies` > 1) every graph input and every copy exists `n_copies` times, allocated
    before anything else and never freed."""
    assign(g, cpu)
    for x in g.nodes:
        if x.kind == VIEW:
            x.backend = g.nodes[x.base].backend
    out = Graph()
    remap: dict[int, int] = {}
    copies: dict[tuple[int, str], int] = {}
    body: list[tuple] = []  # ("dep"/"copy", source, backend) or ("node", index), in graph-copy order
    backend, n_inputs, first = None, 0, 0
    for j, x in enumerate(g.nodes):
        if x.kind in (INPUT, WEIGHT):
            continue
        if x.kind != VIEW:
            new_split = x.backend != backend or (n_inputs > 0 and any(
                g.nodes[s].kind == WEIGHT and g.nodes[s].backend != backend for s in x.srcs))
            if new_split:
                backend, n_inputs, first = x.backend, 0, len(body)
            for s in x.srcs:
                src = g.nodes[s]
                if src.backend != backend and (s, backend) not in copies:
                    copies[(s, backend)] = -1
                    body.insert(first, ("copy", s, backend))  # copies come before the split's nodes
                    body.insert(first, ("dep", s, backend))
                    first += 2
                    n_inputs += 1
        body.append(("node", j))
    pinned = n_copies > 1
    for j, x in enumerate(g.nodes):  # leafs first: the graph inputs (and their pipeline copies), then weights
        if x.kind == INPUT:
            remap[j] = out.add(x.name, x.kind, x.size, [], x.backend, x.shape, pinned)
            for c in range(1, n_copies):
                out.add(f"{x.name}#{c}", INPUT, x.size, [], x.backend, x.shape, True)
    if pinned:  # the split inputs' copies as leafs
        for item in body:
            if item[0] == "copy":
                _, s, b = item
                copies[(s, b)] = out.add(f"{b}#{g.nodes[s].name}", INPUT, _size_of(g, s), [], b, g.nodes[s].shape,
                                         True)
                for c in range(1, n_copies):
                    out.add(f"{b}#{g.nodes[s].name}#{c}", INPUT, _size_of(g, s), [], b, g.nodes[s].shape, True)
    for j, x in enumerate(g.nodes):
        if x.kind == WEIGHT:
            remap[j] = out.add(x.name, x.kind, x.size, [], x.backend, x.shape)
    for item in body:
        if item[0] == "dep":
            _, s, b = item
            out.add(g.nodes[s].name + " (dep)", DEP, 0, [remap[s]], g.nodes[s].backend)
        elif item[0] == "copy":
            _, s, b = item
            if not pinned:
                copies[(s, b)] = out.add(f"{b}#{g.nodes[s].name}", OP, _size_of(g, s), [], b, g.nodes[s].shape)
        else:
            j = item[1]
            x = g.nodes[j]
            srcs = [copies[(s, x.backend)] if x.kind != VIEW and g.nodes[s].backend != x.backend else remap[s]
                    for s in x.srcs]
            base = remap[x.base] if x.kind in (VIEW, SET) and x.base >= 0 else -1
            remap[j] = out.add(x.name, x.kind, x.size, srcs, x.backend, x.shape, x.output, base)
    return out


def _size_of(g: Graph, j: int) -> int:
    x = g.nodes[j]
    return x.size if x.kind != VIEW or x.size else g.nodes[x.base].size


def compute_buffers(g: Graph, alignment: dict[str, int], n_copies: int = 1) -> dict[str, int]:
    """Each backend's compute buffer for graph `g` (ggml_gallocr_alloc_graph_impl over the scheduler's copy)."""
    g = schedule(g, n_copies=n_copies)
    allocs = {b: DynAllocator(a) for b, a in alignment.items()}
    n_children = [0] * len(g.nodes)
    n_views = [0] * len(g.nodes)
    addr: dict[int, tuple[str, int]] = {}  # nodes holding memory of this allocator → (backend, offset)
    done: set[int] = set()  # nodes allocated (or computed into a parent's memory)

    def allocate(j: int) -> None:
        x = g.nodes[j]
        if j in done or x.kind in (VIEW, WEIGHT, DEP, SET):
            return
        done.add(j)
        if x.kind == INPLACE:  # reuse a parent's memory: its only consumer, same layout, not a view or output
            for s in x.srcs:
                p = g.nodes[s]
                if s in addr and not p.output and p.shape == x.shape and n_children[s] == 1 and n_views[s] == 0:
                    addr[j] = addr.pop(s)
                    return
        addr[j] = (x.backend, allocs[x.backend].alloc(x.size))

    def release(j: int) -> None:
        if g.nodes[j].output or j not in addr:
            return
        backend, off = addr.pop(j)
        allocs[backend].free(off, g.nodes[j].size)

    for j, x in enumerate(g.nodes):  # leafs: the graph inputs
        if x.kind == INPUT:
            allocate(j)
    for j, x in enumerate(g.nodes):
        if x.kind in (VIEW, SET):
            n_views[x.base] += 1
        for s in x.srcs:
            n_children[s] += 1
    for j, x in enumerate(g.nodes):
        if x.kind in (INPUT, WEIGHT):
            continue
        for s in x.srcs:
            allocate(s)
        allocate(j)
        for s in x.srcs:
            n_children[s] -= 1
            if n_children[s] == 0 and n_views[s] == 0:
                p = g.nodes[s]
                if p.kind == VIEW:
                    n_views[p.base] -= 1
                    if n_views[p.base] == 0 and n_children[p.base] == 0:
                        release(p.base)
                else:
                    release(s)
    return {b: a.max_size for b, a in allocs.items()}


@dataclass(frozen=True)
class MoeBlock:
    """How an architecture's MoE block calls llm_graph_context::build_moe_ffn, and what surrounds it."""

    gating: str  # "softmax" (ggml_soft_max, in place) or "sigmoid" (a unary op, in place)
    norm_w: bool  # the top-k weights divided by their sum (sum_rows, clamp, div)
    gated: bool  # SiLU-gated experts: gate and up matmuls, then ggml_swiglu_split (a GLU op: memory of its own)
    selection_bias: bool = False  # exp_probs_b added to the scores for selection only
    qk_norm: bool = False  # RMS norms with weights on the full-width Q and K before RoPE (OLMoE)
    latent: bool = False  # the routed experts work in moe_latent_size, between ffn_latent_down / _up
    shared: str = ""  # a shared expert of width n_ff_shexp beside the routed ones: "relu_sqr" (ungated, ReLU²) or
    # "swiglu" (build_ffn with a parallel SiLU gate)


def moe_decoder_graph(shape, p, where: dict[int, str], experts_on_cpu: set[int], weight_bytes: dict[str, int],
                      moe: MoeBlock) -> Graph:
    """The graph a llama-style MoE decoder (llama's attention, build_moe_ffn) builds for one micro-batch of
    ub = min(n_ubatch, n_batch, n_ctx) tokens with every token an output, as the worst-case reserve does.

    `where` maps layer il (n_layer: the output layer) to its backend; the routed experts of the layers in
    `experts_on_cpu` run on the CPU (their weights stay there and the device does not take the batch over);
    `weight_bytes` gives the size of CPU-resident expert weights a device computes with (they are copied)."""
    T = min(p.n_ubatch, p.n_batch, p.n_ctx)
    C = -(-max(p.n_ctx, 1) // 256) * 256
    D, H, Hk, dk, dv = shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim_k, shape.head_dim_v
    N, K, F, V = shape.n_expert, shape.n_expert_used, shape.n_ff_exp, shape.n_vocab
    Lt, Fs = shape.moe_latent or D, shape.n_ff_shexp
    fa = p.flash_attn
    g = Graph()
    f32 = lambda *ne: ("f32",) + ne  # noqa: E731
    tokens = g.add("inp_tokens", INPUT, T * 4, [], "CPU", ("i32", T))
    # the embeddings input of batches that bring vectors instead of tokens: part of every graph (llama.cpp
    # selects between the two inputs), allocated and never consumed
    g.add("inp_embd", INPUT, D * T * 4, [], "CPU", f32(D, T))
    pos = g.add("inp_pos", INPUT, T * 4, [], "CPU", ("i32", T))
    # a quantized cache stores K and V rotated by a Hadamard matrix (llama_kv_cache's attn_rot_k / attn_rot_v):
    # Q, K and V are multiplied by it before the cache, the attention output after it
    quant = ("q8_0", "q4_0")
    rot_k = rot_v = None
    if p.type_k in quant and dk % 64 == 0:
        nrot = 64
        while dk % (nrot * 2) == 0:
            nrot *= 2
        rot_k = g.add("attn_inp_k_rot", INPUT, nrot * nrot * 4, [], "CPU", f32(nrot, nrot))
    if p.type_v in quant and dv % 64 == 0:
        rot_v = g.add("attn_inp_v_rot", INPUT, 64 * 64 * 4, [], "CPU", f32(64, 64))
    k_idxs = g.add("k_idxs", INPUT, T * 8, [], "CPU", ("i64", T))
    v_idxs = g.add("v_idxs", INPUT, T * 8 if fa else T * Hk * dv * 8, [], "CPU", ("i64", T))
    mask = g.add("kq_mask", INPUT, C * T * (2 if fa else 4), [], "CPU", ("f16" if fa else "f32", C, T))
    out_ids = g.add("out_ids", INPUT, T * 4, [], "CPU", ("i32", T))

    def rotated(name: str, cur: int, rot: int | None, size: int) -> int:  # llama_mul_mat_hadamard
        if rot is None:
            return cur
        cur = g.add(name + " (rot)", OP, size, [rot, g.add(name + " (2d)", VIEW, 0, [cur], None)], None, f32(size))
        return g.add(name + " (rotated)", VIEW, 0, [cur], None)

    def qk_normed(name: str, cur: int, nb: str | None, b: str, width: int) -> int:  # build_norm on Q or K
        if not moe.qk_norm:
            return cur
        cur = g.add(f"{name} (norm)", INPLACE, width * T * 4, [cur], nb, f32(width, T))
        return g.add(f"{name}_normed", INPLACE, width * T * 4, [cur], b, f32(width, T))

    def weight(name: str, backend: str) -> int:
        return g.add(name, WEIGHT, weight_bytes.get(name, 0), [], backend)

    x = g.add("embd", OP, D * T * 4, [tokens], "CPU", f32(D, T))
    # llama_context's graph callback puts a layer's RMS norms on the layer's device on full offload (or for
    # batches under 32), so they do not follow the previous layer's device
    pin_norms = p.n_gpu_layers > shape.n_layer or T < 32
    for il in range(shape.n_layer):
        b = where[il]
        nb = b if pin_norms else None
        last = il == shape.n_layer - 1
        n = g.add(f"norm-{il}", INPLACE, D * T * 4, [x], nb, f32(D, T))
        n = g.add(f"attn_norm-{il}", INPLACE, D * T * 4, [n], b, f32(D, T))
        q = g.add(f"Qcur-{il}", OP, H * dk * T * 4, [n], b, f32(H * dk, T))
        q = qk_normed(f"Qcur-{il}", q, nb, b, H * dk)
        q = g.add(f"Qcur-{il} (reshaped)", VIEW, 0, [q], b)
        q = g.add(f"Qcur-{il} (rope)", INPLACE, H * dk * T * 4, [q, pos], None, f32(dk, H, T))
        q = rotated(f"Qcur-{il}", q, rot_k, H * dk * T * 4)
        v = g.add(f"Vcur-{il}", OP, Hk * dv * T * 4, [n], b, f32(Hk * dv, T))
        v = rotated(f"Vcur-{il}", v, rot_v, Hk * dv * T * 4)
        k = g.add(f"Kcur-{il}", OP, Hk * dk * T * 4, [n], b, f32(Hk * dk, T))
        k = qk_normed(f"Kcur-{il}", k, nb, b, Hk * dk)
        k = g.add(f"Kcur-{il} (reshaped)", VIEW, 0, [k], b)
        k = g.add(f"Kcur-{il} (rope)", INPLACE, Hk * dk * T * 4, [k, pos], None, f32(dk, Hk, T))
        k = rotated(f"Kcur-{il}", k, rot_k, Hk * dk * T * 4)
        for what, cur, idxs in (("k", k, k_idxs), ("v", v, v_idxs)):  # ggml_set_rows: a view of the cache
            cache = g.add(f"cache_{what}_l{il}", WEIGHT, 0, [], b)
            g.add(f"cache_{what}_l{il} (set)", SET, 0, [g.add(f"{what}cur-{il} (view)", VIEW, 0, [cur], b), idxs,
                                                       cache], b, base=cache)
        qp = g.add(f"Qcur-{il} (permuted)", VIEW, 0, [q], b)
        if fa:
            a = g.add(f"fattn-{il}", OP, dv * H * T * 4, [qp, mask], None, f32(dv, H, T))
        else:
            kq = g.add(f"kq-{il}", OP, C * T * H * 4, [qp], None, f32(C, T, H))
            kq = g.add(f"kq_soft_max-{il}", INPLACE, C * T * H * 4, [kq, mask], None, f32(C, T, H))
            a = g.add(f"kqv-{il}", OP, dv * T * H * 4, [kq], None, f32(dv, T, H))
            a = g.add(f"kqv-{il} (permuted)", VIEW, 0, [a], b)
            a = g.add(f"kqv_merged_cont-{il}", OP, dv * H * T * 4, [a], None, f32(dv, H, T))
        a = rotated(f"kqv_out-{il}", a, rot_v, dv * H * T * 4)
        a = g.add(f"kqv_out-{il}", VIEW, 0, [a], b)
        a = g.add(f"attn_out-{il}", OP, D * T * 4, [a], b, f32(D, T))
        if last:  # only the output rows go on (the reserve outputs every token)
            a = g.add(f"attn_out-{il} (rows)", OP, D * T * 4, [a, out_ids], None, f32(D, T))
            x = g.add(f"inpSA-{il} (rows)", OP, D * T * 4, [x, out_ids], None, f32(D, T))
        ffn_inp = g.add(f"ffn_inp-{il}", INPLACE, D * T * 4, [a, x], None, f32(D, T))
        n = g.add(f"norm2-{il}", INPLACE, D * T * 4, [ffn_inp], nb, f32(D, T))
        n = g.add(f"ffn_norm-{il}", INPLACE, D * T * 4, [n], b, f32(D, T))
        # router (build_moe_ffn): softmax or sigmoid scores (in place), a selection bias on a copy, top-k,
        # the chosen experts' weights, normalised to sum 1 where the architecture asks
        r = g.add(f"ffn_moe_logits-{il}", OP, N * T * 4, [n], b, f32(N, T))
        probs = g.add(f"ffn_moe_probs-{il}", INPLACE, N * T * 4, [r], None, f32(N, T))
        sel = g.add(f"ffn_moe_probs_biased-{il}", INPLACE, N * T * 4, [probs], b, f32(N, T)) \
            if moe.selection_bias else probs
        order = g.add(f"ffn_moe_argsort-{il}", OP, N * T * 4, [sel], None, ("i32", N, T))
        topk = g.add(f"ffn_moe_topk-{il}", VIEW, K * T * 4, [order], b)
        w = g.add(f"ffn_moe_weights-{il}", OP, K * T * 4, [g.add("probs (reshaped)", VIEW, 0, [probs], b), topk],
                  None, f32(1, K, T))
        if moe.norm_w:
            w = g.add(f"ffn_moe_weights-{il} (reshaped)", VIEW, 0, [w], b)
            s = g.add(f"ffn_moe_weights_sum-{il}", OP, T * 4, [w], None, f32(1, T))
            s = g.add(f"ffn_moe_weights_sum_clamped-{il}", INPLACE, T * 4, [s], None, f32(1, T))
            w = g.add(f"ffn_moe_weights_norm-{il}", INPLACE, K * T * 4, [w, s], None, f32(K, T))
            w = g.add(f"ffn_moe_weights_norm-{il} (reshaped)", VIEW, 0, [w], b)
        lat = g.add(f"ffn_latent_down-{il}", OP, Lt * T * 4, [n], b, f32(Lt, T)) if moe.latent else n
        lat = g.add(f"ffn_latent_down-{il} (reshaped)", VIEW, 0, [lat], b)
        eb = "CPU" if il in experts_on_cpu else b
        ups, gates, downs = [], [], []
        up_w, gate_w, down_w = (tensor_name(t, il) for t in (EXP.FFN_UP_EXP, EXP.FFN_GATE_EXP, EXP.FFN_DOWN_EXP))
        if eb != b and up_w in weight_bytes:
            # a GPU takes the batch over from CPU-resident experts: their weights are copied to it
            eb = b
            ups = [weight(up_w, "CPU")]
            gates = [weight(gate_w, "CPU")] if moe.gated else []
            downs = [weight(down_w, "CPU")]
        if moe.gated:  # ggml_swiglu_split(gate, up): the graph reaches the gate matmul first
            e = g.add(f"ffn_moe_gate-{il}", OP, F * K * T * 4, gates + [lat, topk], eb, f32(F, K, T))
            u = g.add(f"ffn_moe_up-{il}", OP, F * K * T * 4, ups + [lat, topk], eb, f32(F, K, T))
            e = g.add(f"ffn_moe_swiglu-{il}", OP, F * K * T * 4, [e, u], None, f32(F, K, T))
        else:  # ReLU²
            e = g.add(f"ffn_moe_up-{il}", OP, F * K * T * 4, ups + [lat, topk], eb, f32(F, K, T))
            e = g.add(f"ffn_moe_relu-{il}", INPLACE, F * K * T * 4, [e], None, f32(F, K, T))
            e = g.add(f"ffn_moe_relu_sqr-{il}", INPLACE, F * K * T * 4, [e], None, f32(F, K, T))
        e = g.add(f"ffn_moe_down-{il}", OP, Lt * K * T * 4, downs + [e, topk], eb, f32(Lt, K, T))
        e = g.add(f"ffn_moe_weighted-{il}", INPLACE, Lt * K * T * 4, [e, w], None, f32(Lt, K, T))
        views = [g.add(f"ffn_moe_weighted-{il} ({i})", VIEW, 0, [e], b) for i in range(K)]
        m = g.add(f"ffn_moe_out-{il}", INPLACE, Lt * T * 4, views[:2], None, f32(Lt, T)) if K > 1 else \
            g.add(f"ffn_moe_out-{il}", OP, Lt * T * 4, views, None, f32(Lt, T))
        for vi in views[2:]:
            m = g.add(f"ffn_moe_out-{il}", INPLACE, Lt * T * 4, [m, vi], None, f32(Lt, T))
        if moe.latent:
            m = g.add(f"ffn_latent_up-{il}", OP, D * T * 4, [m], b, f32(D, T))
        if moe.shared:
            if moe.shared == "swiglu":  # ggml_swiglu_split(gate, up): the gate matmul comes first
                sg = g.add(f"ffn_gate_shexp-{il}", OP, Fs * T * 4, [n], b, f32(Fs, T))
                su = g.add(f"ffn_up_shexp-{il}", OP, Fs * T * 4, [n], b, f32(Fs, T))
                sh = g.add(f"ffn_swiglu_shexp-{il}", OP, Fs * T * 4, [sg, su], None, f32(Fs, T))
            else:
                sh = g.add(f"ffn_up_shexp-{il}", OP, Fs * T * 4, [n], b, f32(Fs, T))
                sh = g.add(f"ffn_relu_shexp-{il}", INPLACE, Fs * T * 4, [sh], None, f32(Fs, T))
                sh = g.add(f"ffn_sqr_shexp-{il}", INPLACE, Fs * T * 4, [sh], None, f32(Fs, T))
            sh = g.add(f"ffn_shexp-{il}", OP, D * T * 4, [sh], b, f32(D, T))
            m = g.add(f"ffn_out-{il}", INPLACE, D * T * 4, [m, sh], None, f32(D, T))
        x = g.add(f"l_out-{il}", INPLACE, D * T * 4, [m, ffn_inp], None, f32(D, T))
    b = where[shape.n_layer]
    n = g.add("norm", INPLACE, D * T * 4, [x], None, f32(D, T))
    n = g.add("result_norm", INPLACE, D * T * 4, [n], b, f32(D, T), output=True)
    g.add("result_output", OP, V * T * 4, [n], b, f32(V, T), output=True)
    return g


# the MoE blocks of the architectures whose compute buffers come from their graph (src/models/<arch>.cpp): the
# others (and dense models) from memory.compute_bytes' phases; a new architecture's row is added here
MOE_BLOCKS = {
    # nemotron_h_moe's block: sigmoid scores with a selection bias, ReLU² experts in a latent, a shared expert
    "metis": MoeBlock("sigmoid", norm_w=True, gated=False, selection_bias=True, latent=True, shared="relu_sqr"),
    # Mixtral-style MoE in llama.cpp's llama graph
    "llama": MoeBlock("softmax", norm_w=True, gated=True),
    "olmoe": MoeBlock("softmax", norm_w=False, gated=True, qk_norm=True),
    # DeepSeek-MoE (v1) as SSMoELM converts it: softmax top-k, not renormalised, and a SiLU-gated shared expert
    "deepseek": MoeBlock("softmax", norm_w=False, gated=True, shared="swiglu"),
}


def graph_for(shape, p, where: dict[int, str], experts_on_cpu: set[int], weight_bytes: dict[str, int]
              ) -> Graph | None:
    """The graph of `shape`'s architecture, or None where it is not modelled node by node."""
    moe = MOE_BLOCKS.get(shape.arch)
    if moe is None or not shape.n_expert or (moe.shared and not shape.n_ff_shexp):
        return None
    if {t.layer for t in shape.tensors if t.is_expert} != set(range(shape.n_layer)):
        return None  # dense layers (a leading dense block, a dense model) are not modelled here
    return moe_decoder_graph(shape, p, where, experts_on_cpu, weight_bytes, moe)
