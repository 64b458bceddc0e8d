"""A float64 numpy forward pass of SSMoELM, written from the card and ssmoelm.CHOICES (used by `ggtool verify`).

It works on the checkpoint's own (unpermuted) weights and runs the layers in `pass_order`, so it checks
the converter's Q/K row permutation, routing and block duplication instead of sharing them.
"""

from __future__ import annotations

import numpy as np

from ..checkpoint import Checkpoint
from .ssmoelm import CHOICES, Layout, choice, dense, layout


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, theta: float) -> np.ndarray:
    """RoPE on [tokens, heads, head_dim] at positions 0.., in CHOICES["rope_style"]."""
    n, _, d = x.shape
    angles = np.arange(n)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]  # [tokens, d/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if CHOICES["rope_style"] == "neox":  # pairs (i, i + d/2)
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # adjacent pairs (2i, 2i + 1)
    return np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


def swiglu(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    g = x @ gate.T
    return (g / (1 + np.exp(-g)) * (x @ up.T)) @ down.T


def forward(ckpt: Checkpoint, ids: list[int]) -> np.ndarray:
    """Logits [n_tokens, n_vocab] for one causal sequence of token ids."""
    lay: Layout = layout(ckpt)
    eps, theta = float(choice(ckpt, "rms_norm_eps")), float(choice(ckpt, "rope_theta"))
    top_k = int(choice(ckpt, "num_experts_per_tok"))

    def w(key: str) -> np.ndarray:
        return dense(ckpt, lay.stored[key]).astype(np.float64)

    embed = w("embed.weight")
    x = embed[ids]
    n, hd, group = len(ids), lay.head_dim, lay.n_head // lay.n_head_kv
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for layer in lay.pass_order:  # each pass attends over its own keys and values
        p = f"layers.{lay.name_index[layer]}."
        h = rms_norm(x, w(p + "attn_norm.weight"), eps)
        q = rope((h @ w(p + "attn.q_proj.weight").T).reshape(n, lay.n_head, hd), theta)
        k = rope((h @ w(p + "attn.k_proj.weight").T).reshape(n, lay.n_head_kv, hd), theta)
        v = (h @ w(p + "attn.v_proj.weight").T).reshape(n, lay.n_head_kv, hd)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # query head j reads KV head j // group
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, -1)
        x = x + attn @ w(p + "attn.o_proj.weight").T

        h = rms_norm(x, w(p + "ffn_norm.weight"), eps)
        logits = h @ w(p + "moe.router.weight").T
        gates = np.exp(logits - logits.max(-1, keepdims=True))
        gates /= gates.sum(-1, keepdims=True)  # softmax over all experts
        chosen = np.argsort(-gates, axis=-1, kind="stable")[:, :top_k]
        weights = np.take_along_axis(gates, chosen, axis=-1)
        if CHOICES["router"] == "softmax_renorm":
            weights /= weights.sum(-1, keepdims=True)
        out = swiglu(h, w(p + "moe.shared_expert.gate_proj.weight"), w(p + "moe.shared_expert.up_proj.weight"),
                     w(p + "moe.shared_expert.down_proj.weight"))  # ungated shared expert
        for e in range(lay.n_expert):
            rows, slot = np.nonzero(chosen == e)
            if len(rows):
                ex = f"{p}moe.experts.{e}."
                y = swiglu(h[rows], w(ex + "gate_proj.weight"), w(ex + "up_proj.weight"), w(ex + "down_proj.weight"))
                out[rows] += weights[rows, slot][:, None] * y
        x = x + out
    return (rms_norm(x, w("norm.weight"), eps) @ embed.T).astype(np.float32)  # tied output
