"""Reading GGUF files: one clear message for a missing, foreign, truncated or corrupted file, and one parse
per file version (gguf-py's reader is slow on large vocabularies, and a command asks several questions of
the same model)."""

from __future__ import annotations

import functools
from pathlib import Path

import gguf

from .errors import GgtoolError


def open_gguf(path: Path | str) -> gguf.GGUFReader:
    """gguf-py's reader for a GGUF file, parsed once per version of the file (identity, size, mtime)."""
    path = Path(path)
    if not path.is_file():
        raise GgtoolError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GgtoolError(f"{path}: not a GGUF file", "pass a .gguf model, e.g. one made by `ggtool convert`")
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    try:
        return _read(key)
    except GgtoolError:
        raise
    except Exception as e:  # noqa: BLE001 - gguf-py fails in many ways on a cut-off file
        raise GgtoolError(f"{path}: truncated or damaged GGUF file ({type(e).__name__}: {e})",
                          "copy or convert it again") from None


@functools.lru_cache(maxsize=8)
def _read(key: tuple) -> gguf.GGUFReader:
    from .inspect import check_header

    path = Path(key[0])
    check_header(path)  # bounds-checked first: gguf-py hangs on some corrupted counts
    return gguf.GGUFReader(path)
