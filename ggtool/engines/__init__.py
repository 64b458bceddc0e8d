"""The chat-template engines users' applications run, built or installed once per machine and cached.

- llama.cpp's `common/jinja` (Ollama >= 0.30, llama-server and LM Studio's llama.cpp runtime): `llama_jinja.cpp`
  here, compiled with g++ against the vendored llama.cpp source of the pinned llama-cpp-python.
- npm `@huggingface/jinja` (LM Studio renders GGUF templates with its bundled copy): `hf_jinja/`, a small npm
  project of its own with a pinned version (package-lock.json), installed with `npm ci` and run with Node.

Both are cached under ~/.cache/ggtool/engines/ (or $XDG_CACHE_HOME), keyed by the harness's and the pinned
versions' hash, so a changed harness or pin builds afresh. `make install` prepares both (`python -m
ggtool.engines`); at run time a missing one is prepared on first use, and a missing tool (no C++ compiler, no
Node, no npm) is reported as the reason the engine could not run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..llama.source import pinned_version, source_dir

HERE = Path(__file__).resolve().parent
LLAMA_HARNESS = HERE / "llama_jinja.cpp"
HF_PROJECT = HERE / "hf_jinja"
HF_FILES = ("package.json", "package-lock.json", "render.mjs")
CXX_FLAGS = ["-std=c++17", "-O1"]


class EngineUnavailable(Exception):
    """An engine cannot run on this machine; the message says why and what to install."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ggtool" / "engines"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def llama_jinja_binary(build: bool = True) -> Path:
    """The compiled llama.cpp template harness (compiled now when missing and `build`)."""
    version = pinned_version()
    key = _digest(LLAMA_HARNESS.read_bytes(), " ".join(CXX_FLAGS).encode(), version.encode())
    binary = cache_root() / f"llama-jinja-{version}-{key}"
    if binary.is_file():
        return binary
    if not build:
        raise EngineUnavailable("the llama.cpp template harness is not built yet (run `make install`)")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EngineUnavailable("no C++ compiler (g++) to build llama.cpp's template engine: install g++")
    try:
        src = source_dir(download=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise EngineUnavailable(f"the llama.cpp {version} source could not be fetched ({e})") from None
    if src is None or not (src / "common" / "jinja" / "runtime.cpp").is_file():
        raise EngineUnavailable(f"the llama.cpp {version} source has no common/jinja engine")
    sources = [LLAMA_HARNESS, *sorted((src / "common" / "jinja").glob("*.cpp")), src / "common" / "json.cpp",
               src / "common" / "unicode.cpp"]
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-jinja-", dir=binary.parent) as tmp:
        staged = Path(tmp) / binary.name
        cmd = [cxx, *CXX_FLAGS, f"-I{src / 'common'}", f"-I{src / 'vendor'}", f"-I{src / 'ggml' / 'include'}",
               *map(str, sources), "-o", str(staged)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise EngineUnavailable(f"building llama.cpp's template engine failed: {tail}")
        os.replace(staged, binary)
    return binary


def hf_jinja_dir(install: bool = True) -> Path:
    """The folder with the pinned @huggingface/jinja installed and the render script (npm ci now when missing)."""
    key = _digest(*((HF_PROJECT / f).read_bytes() for f in HF_FILES))
    folder = cache_root() / f"hf-jinja-{key}"
    if (folder / "node_modules" / "@huggingface" / "jinja" / "package.json").is_file():
        return folder
    if not install:
        raise EngineUnavailable("@huggingface/jinja is not installed yet (run `make install`)")
    npm = shutil.which("npm")
    if not npm:
        raise EngineUnavailable("npm is not installed, so @huggingface/jinja cannot be: install Node.js (with npm)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hf-jinja-", dir=folder.parent) as tmp:
        staged = Path(tmp) / "project"
        staged.mkdir()
        for f in HF_FILES:
            shutil.copy2(HF_PROJECT / f, staged / f)
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=staged, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise EngineUnavailable(f"npm ci of @huggingface/jinja failed: {tail}")
        try:
            os.replace(staged, folder)
        except OSError:  # another process installed it meanwhile
            if not (folder / "node_modules" / "@huggingface" / "jinja" / "package.json").is_file():
                raise EngineUnavailable(f"{folder} exists but holds no @huggingface/jinja: remove it") from None
    return folder


def node() -> str:
    """The node executable."""
    found = shutil.which("node")
    if not found:
        raise EngineUnavailable("Node.js (node) is not installed: install Node.js to check templates in "
                                "@huggingface/jinja")
    return found

