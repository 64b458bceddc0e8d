"""Byte counts as people read them, one format for the CLI's tables and the model card."""

from __future__ import annotations


def size_text(n: float) -> str:
    """`n` bytes in B, KiB, MiB or GiB (one decimal above bytes): 512 B, 3.7 MiB, 4.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
