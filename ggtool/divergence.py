"""How far a model's next-token distributions are from a reference's: log-softmax and KL divergence per position,
as llama-perplexity's --kl-divergence computes them (eval, the mix chooser and verify share them)."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in the logits' own precision, the normaliser summed in float64."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(z.dtype)


def kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p || q) per row from log-probabilities, in float64; rounding's tiny negatives become 0."""
    return np.maximum((np.exp(logp) * (logp - logq)).sum(axis=-1, dtype=np.float64), 0.0)
