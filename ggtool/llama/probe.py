"""Would llama.cpp load this GGUF? Asked in a forked child, because on some malformed files it aborts the
process (GGML_ASSERT in the vocabulary or hyperparameter loaders) instead of returning an error.

The child loads the file's hyperparameters and vocabulary (`vocab_only`: no tensor is read),
with ggml's backtrace off and stderr captured; the parent turns a failure or a death into one line with
llama.cpp's own reason. Ctrl-C in the parent stops the child.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
from pathlib import Path

import llama_cpp.llama_cpp as L

from ..errors import GgtoolError
from . import model as _model


_TIMEOUT = 120.0  # seconds


def check_loads(path: Path) -> None:
    """Raise a GgtoolError naming `path` and llama.cpp's reason if llama.cpp cannot load it."""
    path = Path(path)
    st = path.stat()
    _check(str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _check(path: str, *version: int) -> None:  # cached per version of the file: only successes are kept
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: load, say why not, exit without the parent's cleanup
        status = 3
        try:
            os.close(r)
            os.dup2(w, 2)  # GGML_ASSERT's message
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            os.environ["GGML_NO_BACKTRACE"] = "1"
            params = L.llama_model_default_params()
            params.n_gpu_layers = 0
            params.vocab_only = True
            _model._LOG.clear()
            m = L.llama_model_load_from_file(path.encode(), params)
            if m:
                status = 0
            else:
                status = 1
                os.write(w, ("\n" + _model._last_error()).encode("utf-8", "replace")[-4096:])
        finally:
            os._exit(status)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as pipe:
            ready, _, _ = select.select([pipe], [], [], _TIMEOUT)
            said = pipe.read()[-65536:].decode("utf-8", "replace") if ready else None
        if said is None:  # no answer (a vocabulary load takes well under a second): let the real load decide
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        _, status = os.waitpid(pid, 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if "GGML_ASSERT" in ln or "error" in ln.lower()),
                  lines[-1] if lines else "no reason given")
    if "GGML_ASSERT" in reason:
        reason = reason[reason.index("GGML_ASSERT"):]
    raise GgtoolError(f"{path}: llama.cpp cannot load it: {reason}", "the file is corrupted or malformed")
