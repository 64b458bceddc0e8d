"""The registry of source families and detection from config.json and tensor names."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from ..errors import GgtoolError
from .base import Family
from .metis import Metis
from .olmoe import Olmoe
from .mixtral import Mixtral
from .ssmoelm import Ssmoelm

FAMILIES: list[Family] = [Olmoe(), Mixtral(), Metis(), Ssmoelm()]


def detect(ckpt: Checkpoint) -> Family:
    """The family whose detector accepts this checkpoint, or a clear refusal listing the supported ones."""
    for family in FAMILIES:
        if family.detect(ckpt):
            return family
    arch = ckpt.config.get("architectures") or ckpt.config.get("model_type") or "nothing"
    supported = ", ".join(f.title for f in FAMILIES)
    raise GgtoolError(f"{ckpt.folder / 'config.json'} names {arch}, which ggtool does not convert",
                      f"supported families: {supported}")


def by_arch(arch: str) -> Family | None:
    """The family that writes GGUF architecture `arch` (for verify and inspect)."""
    return next((f for f in FAMILIES if f.arch == arch), None)


def client_note(arch: str | None, client: str) -> str | None:
    """For an architecture that comes from ggtool's llama.cpp patch: what `client` (Ollama, LM Studio) needs first."""
    family = by_arch(arch) if arch else None
    if family is None or not family.patched_arch:
        return None
    return (f"architecture {arch} is not in stock llama.cpp yet (ggtool's patches/llama.cpp/{arch}.patch adds it): "
            f"{client} loads this model only once its bundled llama.cpp carries that architecture")
