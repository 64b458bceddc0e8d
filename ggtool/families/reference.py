"""Independent reference forward passes used by `ggtool verify`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VERIFY_HINT, GgtoolError


def transformers_logits(folder: Path, ids: list[int], class_name: str) -> np.ndarray:
    """Logits [n_tokens, n_vocab] from transformers' own model class, in float32, no remote code."""
    try:
        import torch
        import transformers
    except ImportError:
        raise GgtoolError("verify needs transformers and torch for this family", VERIFY_HINT) from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cls = getattr(transformers, class_name)
    model = cls.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()
