"""Would llama.cpp load this GGUF? Asked in a worker process (ggtool.llama.worker), because on some malformed
files llama.cpp aborts the process (GGML_ASSERT in the vocabulary or hyperparameter loaders) instead of
returning an error. The worker loads the file's hyperparameters and vocabulary (`vocab_only`: no tensor is
read); a failure or a death is one line with llama.cpp's own reason. Ctrl-C stops the worker.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import GgtoolError
from . import worker


def check_loads(path: Path) -> None:
    """Raise a GgtoolError naming `path` and llama.cpp's reason if llama.cpp cannot load it."""
    path = Path(path)
    st = path.stat()
    _check(str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _check(path: str, *version: int) -> None:  # cached per version of the file: only successes are kept
    ok, reason = worker.run({"job": "probe", "path": path}, path)
    if not ok:
        raise GgtoolError(f"{path}: llama.cpp cannot load it: {reason}", "the file is corrupted or malformed")
