"""Ctrl-C during a llama.cpp call: recorded, llama.cpp told to stop, raised once the call has returned.

Python runs its SIGINT handler in the main thread at the next Python instruction, which during a llama.cpp
call is inside one of our ctypes callbacks (the log, cb_eval, abort). A KeyboardInterrupt raised there
cannot cross the C boundary: ctypes prints "Exception ignored" and llama.cpp carries on. So while a C call
runs (`call`), ggtool's SIGINT handler only records the interrupt; the callbacks see it (`pending`) and
return the value that makes llama.cpp stop (cb_eval false, abort true), and `call` raises KeyboardInterrupt
when the C function returns. Outside C calls the handler raises KeyboardInterrupt as Python's own does.
`ABORT` is the abort callback for contexts: graph computation checks it between nodes, so an interrupt
stops a long decode within one node. `guard` keeps any other exception in a callback from being lost.
"""

from __future__ import annotations

import ctypes
import functools
import signal
import threading
from typing import Any, Callable

import llama_cpp.llama_cpp as L

_pending: list[BaseException] = []
_depth = 0


def _on_sigint(signum: int, frame: object) -> None:
    if _depth:
        _pending.append(KeyboardInterrupt())
    else:
        raise KeyboardInterrupt


def install() -> None:
    """Take over SIGINT from Python's default handler (nothing else's), in the main thread only."""
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def guard(stop_value: Any) -> Callable:
    """Run a ctypes callback body; on any exception record it and return `stop_value` instead."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            if _pending:
                return stop_value
            try:
                return fn(*args)
            except BaseException as e:  # noqa: BLE001 - nothing may cross the C boundary
                _pending.append(e)
                return stop_value
        return wrapper
    return wrap


def record(e: BaseException) -> None:
    """Keep an exception a callback caught, to be raised when the C call returns."""
    _pending.append(e)


def pending() -> bool:
    """Whether an interrupt (or a callback's exception) is waiting for the current C call to return."""
    return bool(_pending)


def raise_pending() -> None:
    """Raise what was recorded during the last C call (KeyboardInterrupt first)."""
    if _pending:
        e = next((x for x in _pending if isinstance(x, KeyboardInterrupt)), _pending[0])
        _pending.clear()
        raise e


def call(fn: Callable, *args: Any) -> Any:
    """fn(*args), a llama.cpp function, with Ctrl-C recorded while it runs and raised when it returns."""
    global _depth
    _depth += 1
    try:
        result = fn(*args)
    finally:
        _depth -= 1
    if not _depth:
        raise_pending()
    return result


@L.ggml_abort_callback
def _abort(data: ctypes.c_void_p) -> bool:
    return bool(_pending)


ABORT = _abort
install()
