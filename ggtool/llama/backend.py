"""llama.cpp started once, on first use, with its log captured instead of printed, so that a failure can be
reported in one line with llama.cpp's own reason (and the planner can read what llama.cpp allocated)."""

from __future__ import annotations

import atexit
import ctypes
from collections import deque

import llama_cpp._utils
import llama_cpp.llama_cpp as L

from . import interrupt

_LOG: deque[str] = deque(maxlen=20000)  # room for a load's debug lines (buffer overrides)


@L.llama_log_callback
@interrupt.guard(None)
def _capture_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    _LOG.append(text.decode("utf-8", errors="replace"))


_ready = False


def backend() -> None:
    """Start llama.cpp once, on first use (not at import): its log captured, its backend initialised."""
    global _ready
    if _ready:
        return
    L.llama_log_set(_capture_log, ctypes.c_void_p())
    L.llama_backend_init()
    # llama_cpp opens two /dev/null handles at import and never closes them: close them at exit so the
    # interpreter's shutdown does not print ResourceWarnings after every command and test run
    atexit.register(llama_cpp._utils.outnull_file.close)
    atexit.register(llama_cpp._utils.errnull_file.close)
    _ready = True


def start_capture() -> None:
    """Forget the log so far: what follows is one call's (a load, a quantization)."""
    _LOG.clear()


def log_lines() -> list[str]:
    """The llama.cpp log captured so far (most recent last), joined into lines."""
    return "".join(_LOG).splitlines()


def last_error() -> str:
    """The line of the captured log that says best why llama.cpp failed."""
    lines = [ln.strip() for ln in log_lines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    specific = [ln for ln in errors if "error" in ln.lower()]  # "error loading model: <why>" over "failed to load"
    return (specific or errors or lines or ["no log output"])[-1]
