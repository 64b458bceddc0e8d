"""Metis-1.5's forward pass in numpy, written from reference/models.md §4.4 (jax_metis.py), for `verify`.

The forward looks weights up by checkpoint name, in the checkpoint's own [in, out] layout. The two
loaders (the checkpoint itself, and a GGUF read back with ggtool's GGUF reader, its keys included) differ only in
where the numbers come from, so a lossless GGUF gives bit-identical logits. Everything runs in
float32 (the release computes in bf16), one layer's weights at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from ..checkpoint import Checkpoint
from ..errors import GgtoolError
from ..gguf_in import read_header, tensor_data
from .metis import BLOCK_TENSORS, GLOBAL_TENSORS, LM_HEAD, NOT_TRANSPOSED, MetisDims, infer_dims

Weights = Callable[[str], np.ndarray]  # checkpoint tensor name -> float32 array in [in, out] layout

# GGUF keys the reference needs, and the values whose semantics it implements
_REQUIRED_SEMANTICS = {"expert_gating_func": int(gguf.ExpertGatingFuncType.SIGMOID), "expert_weights_norm": True,
                       "expert_weights_scale": 1.0, "expert_shared_count": 1}


def checkpoint_weights(ckpt: Checkpoint) -> tuple[MetisDims, Weights]:
    """Sizes and weights straight from the original checkpoint."""
    return infer_dims(ckpt), ckpt.read


def gguf_weights(path: Path) -> tuple[MetisDims, Weights]:
    """Sizes from the GGUF's `metis.*` keys and weights from its tensors, mapped back to checkpoint names."""
    header = read_header(path)

    def key(name: str):
        if header.get(f"metis.{name}") is None:
            raise GgtoolError(f"{path}: GGUF key metis.{name} is missing", "was this file written by ggtool convert?")
        return header.get(f"metis.{name}")

    arch = header.get("general.architecture")
    if arch != "metis":
        raise GgtoolError(f"{path}: architecture {arch!r} is not metis")
    for name, value in _REQUIRED_SEMANTICS.items():
        if key(name) != value:
            raise GgtoolError(f"{path}: metis.{name}={key(name)!r}, but the reference computes {value!r}")
    tensors = {t.name: t for t in header.tensors}
    d = MetisDims(n_layer=key("block_count"), n_head=key("attention.head_count"),
                  n_head_kv=key("attention.head_count_kv"), head_dim=key("attention.key_length"),
                  top_k=key("expert_used_count"), rope_theta=key("rope.freq_base"), n_ctx=key("context_length"),
                  eps=key("attention.layer_norm_rms_epsilon"), tied="output.weight" not in tensors)
    if not isinstance(d.n_layer, int) or not 0 < d.n_layer <= len(tensors):  # sizes the loop below
        raise GgtoolError(f"{path}: metis.block_count {d.n_layer!r} does not fit its {len(tensors)} tensors")
    names = {src: dst for src, (dst, _) in GLOBAL_TENSORS.items()}
    names[LM_HEAD[0]] = LM_HEAD[1]
    for b in range(d.n_layer):
        names.update({src.format(bid=b): dst.format(bid=b) for src, (dst, _) in BLOCK_TENSORS.items()})

    def weight(src: str) -> np.ndarray:
        if names.get(src) not in tensors:
            raise GgtoolError(f"{path}: tensor {names.get(src)} is missing (the checkpoint's {src})")
        t = tensors[names[src]]
        arr = gguf.quants.dequantize(tensor_data(header, t), t.type).reshape([int(n) for n in reversed(t.shape)])
        if arr.ndim >= 2 and src not in NOT_TRANSPOSED:
            arr = np.swapaxes(arr, -1, -2)  # back to [in, out]
        return np.ascontiguousarray(arr, dtype=np.float32)

    return d, weight


def rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x²) + eps) · scale: no bias, no +1 on the scale."""
    return x * (np.float32(1.0) / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps))) * scale


def rope_neox(x: np.ndarray, theta: float) -> np.ndarray:
    """NeoX (rotate-half) RoPE on [tokens, heads, head_dim]: channel i pairs with i + head_dim/2."""
    n, _, hd = x.shape
    half = hd // 2
    theta = float(np.float32(theta))  # as the GGUF stores it, so both loaders rotate identically
    angles = np.arange(n, dtype=np.float64)[:, None] * theta ** (-2.0 * np.arange(half) / hd)[None, :]
    cos, sin = np.cos(angles).astype(np.float32)[:, None, :], np.sin(angles).astype(np.float32)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(y: np.ndarray, w: Weights, d: MetisDims, b: int) -> np.ndarray:
    """Causal GQA attention: query head h reads KV head h // (n_head / n_head_kv), scale 1/sqrt(head_dim)."""
    n = y.shape[0]
    q = rope_neox((y @ w(f"layers.{b}.q")).reshape(n, d.n_head, d.head_dim), d.rope_theta)
    k = rope_neox((y @ w(f"layers.{b}.k")).reshape(n, d.n_head_kv, d.head_dim), d.rope_theta)
    v = (y @ w(f"layers.{b}.v")).reshape(n, d.n_head_kv, d.head_dim)
    group = d.n_head // d.n_head_kv
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = (q.transpose(1, 0, 2) @ k.transpose(1, 2, 0)) / np.float32(np.sqrt(d.head_dim))
    scores[:, np.triu(np.ones((n, n), dtype=bool), 1)] = -np.inf
    out = (softmax(scores) @ v.transpose(1, 0, 2)).transpose(1, 0, 2).reshape(n, d.n_head * d.head_dim)
    return out @ w(f"layers.{b}.o")


def squared_relu(x: np.ndarray) -> np.ndarray:
    return np.square(np.maximum(x, np.float32(0)))


def route(y: np.ndarray, w: Weights, d: MetisDims, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid router on y: the chosen experts [tokens, top_k] (by score + bias: the bias only selects) and
    their weights (the unbiased scores, renormalised)."""
    p = f"layers.{b}."
    with np.errstate(over="ignore"):  # exp overflow for very negative logits just means a score of 0
        scores = np.float32(1) / (np.float32(1) + np.exp(-(y @ w(p + "router"))))
    choice = np.argsort(-(scores + w(p + "router_bias")), axis=-1, kind="stable")[:, :d.top_k]  # ties: lower id
    top = np.take_along_axis(scores, choice, axis=-1)
    return choice, top / np.maximum(top.sum(axis=-1, keepdims=True), np.float32(1e-6))


def latent_moe(y: np.ndarray, w: Weights, d: MetisDims, b: int) -> np.ndarray:
    """The routed experts inside the latent (up-projected once after the weighted sum) plus the shared expert."""
    p = f"layers.{b}."
    z = y @ w(p + "latent_down")
    choice, weights = route(y, w, d, b)
    w1, w2 = w(p + "expert_w1"), w(p + "expert_w2")
    routed = np.zeros_like(z)
    for e in range(w1.shape[0]):
        tok, slot = np.nonzero(choice == e)
        if tok.size:
            routed[tok] += weights[tok, slot, None] * (squared_relu(z[tok] @ w1[e]) @ w2[e])
    shared = squared_relu(y @ w(p + "shared_w1")) @ w(p + "shared_w2")
    return routed @ w(p + "latent_up") + shared


def forward(d: MetisDims, w: Weights, ids: list[int]) -> np.ndarray:
    """Logits [n_tokens, n_vocab] (float32) for one causal sequence starting at position 0."""
    embed = w("embed")
    if not ids or min(ids) < 0 or max(ids) >= embed.shape[0]:
        raise GgtoolError(f"token ids must lie in [0, {embed.shape[0]})")
    x = embed[np.asarray(ids)]
    for b in range(d.n_layer):
        x = x + attention(rms_norm(x, w(f"layers.{b}.attn_norm.scale"), d.eps), w, d, b)
        x = x + latent_moe(rms_norm(x, w(f"layers.{b}.moe_norm.scale"), d.eps), w, d, b)
    x = rms_norm(x, w("final_norm.scale"), d.eps)
    return x @ (embed.T if d.tied else w(LM_HEAD[0]))
