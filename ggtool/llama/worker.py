"""llama.cpp work in a separate process that the caller can stop: `python -m ggtool.llama.worker`.

Two jobs: `quantize` (llama_model_quantize has no abort callback and runs for minutes on a large model) and
`probe` (loading a malformed GGUF's vocabulary can abort the whole process in a GGML_ASSERT). Jobs come
pickled on stdin, one after another; each answer is one line, RESULT_MARK or FAIL_MARK and JSON (the job's
result, or llama.cpp's reason). A worker that dies mid-job leaves its output: the reason is taken from it.
A fresh interpreter rather than fork(): ggml's OpenMP thread pool does not survive a fork, and a forked
child of a process that has computed before deadlocks in its first parallel region.

The caller keeps stdin open: when the caller dies, stdin ends and the worker exits at once. `run` does one
job in a worker of its own; `Session` keeps one worker for many (the mix's sensitivity passes quantize a hundred
probes, and llama.cpp builds its IQ2/IQ3 search grids once per process, seconds each).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading

import llama_cpp.llama_cpp as L

from ..errors import GgtoolError
from . import quantize
from .backend import backend, last_error

RESULT_MARK = "\x1eggtool-worker-result:"
FAIL_MARK = "\x1eggtool-worker-failed:"


def run(job: dict, what: str) -> tuple[bool, object]:
    """Run one `job` in a worker of its own: (True, the job's result) on success, else (False, llama.cpp's
    reason). A worker that dies of a signal is a GgtoolError naming `what`; Ctrl-C (or any exception) here
    kills the worker before it propagates."""
    with Session() as session:
        return session.run(job, what)


def _reason(said: str) -> str:
    """llama.cpp's reason in a failed job's output: its GGML_ASSERT, else its last error line."""
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if "GGML_ASSERT" in ln), None) or \
        next((ln for ln in reversed(lines) if "error" in ln.lower() or "failed" in ln.lower()),
             lines[-1] if lines else "no reason given")
    return reason[reason.index("GGML_ASSERT"):] if "GGML_ASSERT" in reason else reason


class Session:
    """One worker process for a series of jobs: `with Session() as s: s.run(job, what)` answers as `run` does.
    The worker starts with the first job; leaving the block (Ctrl-C or any exception included) ends it; a
    worker that dies mid-job is a GgtoolError naming `what`, and the next job starts a new one."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.open = False

    def __enter__(self) -> "Session":
        self.open = True
        return self

    def __exit__(self, *exc) -> None:
        self.open = False
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()  # stdin's end: an idle worker exits at once
            except OSError:
                pass
        if exc[0] is not None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def run(self, job: dict, what: str) -> tuple[bool, object]:
        if not self.open:
            raise RuntimeError("Session.run outside its with block")
        if self.proc is None:
            env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
            self.proc = subprocess.Popen([sys.executable, "-m", "ggtool.llama.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        proc = self.proc
        data = pickle.dumps(job)
        said = []
        try:
            proc.stdin.write(len(data).to_bytes(8, "little") + data)
            proc.stdin.flush()
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                for mark, ok in ((RESULT_MARK, True), (FAIL_MARK, False)):
                    if mark in line:
                        return ok, json.loads(line.partition(mark)[2])
                said.append(line)
        except BrokenPipeError:
            pass
        proc.wait()
        self.proc = None  # the next job starts a new worker
        reason = _reason("".join(said))
        if proc.returncode < 0:
            raise GgtoolError(f"{what}: llama.cpp died (signal {-proc.returncode}): {reason}",
                              "the file is corrupted or malformed")
        return False, reason


def _job(job: dict) -> tuple[bool, object]:
    backend()
    if job["job"] == "probe":
        params = L.llama_model_default_params()
        params.n_gpu_layers = 0
        params.vocab_only = True
        m = L.llama_model_load_from_file(str(job["path"]).encode(), params)
        return bool(m), None if m else last_error()
    return quantize._call_quantize(**job["args"])


def _session() -> None:
    """Jobs one after another until stdin ends (a reader thread takes them, so a dead caller still stops us)."""
    stdin = sys.stdin.buffer
    jobs: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            head = stdin.read(8)
            if len(head) < 8:
                os._exit(0)
            jobs.put(pickle.loads(stdin.read(int.from_bytes(head, "little"))))
    threading.Thread(target=read, daemon=True).start()
    while True:
        ok, answer = _job(jobs.get())
        sys.stdout.write((RESULT_MARK if ok else FAIL_MARK) + json.dumps(answer if ok else answer or "no log output")
                         + "\n")
        sys.stdout.flush()


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it kills us
    _session()


if __name__ == "__main__":
    _main()
