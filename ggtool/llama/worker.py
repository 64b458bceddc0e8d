"""llama.cpp work in a separate process that the caller can stop: `python -m ggtool.llama.worker`.

Two jobs: `quantize` (llama_model_quantize has no abort callback and runs for minutes on a large model) and
`probe` (loading a malformed GGUF's vocabulary can abort the whole process in a GGML_ASSERT). The job comes
pickled on stdin; the worker answers with its exit status and, on failure, llama.cpp's reason on stdout,
on success the job's result as JSON on the last line after RESULT_MARK.
A fresh interpreter rather than fork(): ggml's OpenMP thread pool does not survive a fork, and a forked
child of a process that has computed before deadlocks in its first parallel region.

The caller keeps stdin open: when the caller dies, stdin ends and the worker exits at once.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading

from ..errors import GgtoolError

RESULT_MARK = "\x1eggtool-worker-result:"


def run(job: dict, what: str) -> tuple[bool, object]:
    """Run `job` in a worker: (True, the job's result) on success, else (False, llama.cpp's reason). A worker
    that dies of a signal is a GgtoolError naming `what`; Ctrl-C (or any exception) here kills the worker
    before it propagates."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ggtool.llama.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        data = pickle.dumps(job)
        proc.stdin.write(len(data).to_bytes(8, "little") + data)
        proc.stdin.flush()
        out = proc.stdout.read()
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
    said = out.decode("utf-8", "replace")
    if proc.returncode == 0:
        _, mark, result = said.rpartition(RESULT_MARK)
        return True, json.loads(result) if mark else None
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if "GGML_ASSERT" in ln), None) or \
        next((ln for ln in reversed(lines) if "error" in ln.lower() or "failed" in ln.lower()),
             lines[-1] if lines else "no reason given")
    if "GGML_ASSERT" in reason:
        reason = reason[reason.index("GGML_ASSERT"):]
    if proc.returncode < 0:
        raise GgtoolError(f"{what}: llama.cpp died (signal {-proc.returncode}): {reason}",
                          "the file is corrupted or malformed")
    return False, reason


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it kills us
    stdin = sys.stdin.buffer
    n = int.from_bytes(stdin.read(8), "little")
    job = pickle.loads(stdin.read(n))

    def watch() -> None:  # the caller died (or closed stdin): stop
        stdin.read()
        os._exit(75)
    threading.Thread(target=watch, daemon=True).start()

    from . import model as _model

    if job["job"] == "probe":
        import llama_cpp.llama_cpp as L

        params = L.llama_model_default_params()
        params.n_gpu_layers = 0
        params.vocab_only = True
        m = L.llama_model_load_from_file(str(job["path"]).encode(), params)
        ok, answer = bool(m), None if m else _model._last_error()
    else:
        from .quantize import _call_quantize

        ok, answer = _call_quantize(**job["args"])
    if ok:
        sys.stdout.write(RESULT_MARK + json.dumps(answer))
    else:
        sys.stdout.write(answer or "no log output")
    sys.stdout.flush()
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    _main()
