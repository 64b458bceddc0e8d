"""Two GGUF files side by side: tensor names, shapes, types, bytes (sha256 per tensor) and metadata keys."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gguf import GGUFReader

# Keys every writer fills in itself (the file's own layout), not part of what a converter decides.
_LAYOUT_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


@dataclass
class GgufDiff:
    """How file A (ggtool) and file B (llama.cpp) differ."""

    n_tensors: tuple[int, int]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_or_type_differs: list[str] = field(default_factory=list)
    bytes_differ: list[str] = field(default_factory=list)
    identical_tensors: int = 0
    same_tensor_order: bool = True
    same_key_order: bool = True
    keys_only_in_a: list[str] = field(default_factory=list)
    keys_only_in_b: list[str] = field(default_factory=list)
    keys_with_different_values: list[str] = field(default_factory=list)

    @property
    def tensors_equivalent(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.shape_or_type_differs or self.bytes_differ)

    def to_json(self) -> dict:
        return {**asdict(self), "tensors_equivalent": self.tensors_equivalent}


def _field_value(f) -> object:  # noqa: ANN001 - gguf-py ReaderField
    try:
        v = f.contents()
    except Exception:  # noqa: BLE001 - older gguf-py without contents(): compare raw parts
        v = [bytes(p) for p in f.parts]
    return v


def compare(a: Path, b: Path) -> GgufDiff:
    """Compare tensors by name (order-independent) and metadata keys of two GGUF files."""
    ra, rb = GGUFReader(a), GGUFReader(b)
    ta = {t.name: t for t in ra.tensors}
    tb = {t.name: t for t in rb.tensors}
    d = GgufDiff((len(ta), len(tb)), sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta)))
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if list(x.shape) != list(y.shape) or x.tensor_type != y.tensor_type:
            d.shape_or_type_differs.append(f"{name}: {x.tensor_type.name}{list(x.shape)} vs "
                                           f"{y.tensor_type.name}{list(y.shape)}")
        elif hashlib.sha256(x.data.tobytes()).digest() != hashlib.sha256(y.data.tobytes()).digest():
            d.bytes_differ.append(name)
        else:
            d.identical_tensors += 1
    ka = {k: f for k, f in ra.fields.items() if k not in _LAYOUT_KEYS}
    kb = {k: f for k, f in rb.fields.items() if k not in _LAYOUT_KEYS}
    d.same_tensor_order = [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    d.same_key_order = list(ka) == list(kb)
    d.keys_only_in_a = sorted(set(ka) - set(kb))
    d.keys_only_in_b = sorted(set(kb) - set(ka))
    for k in sorted(set(ka) & set(kb)):
        va, vb = _field_value(ka[k]), _field_value(kb[k])
        if va != vb:
            d.keys_with_different_values.append(k)
    return d
