"""The llama-cpp-python ggtool runs on: the pinned sdist with our llama.cpp patches applied, built once into a wheel.

`python3 ggtool/llama/build.py` prints the path of the wheel, building it first when the cache lacks it. The
wheel is kept in ~/.cache/ggtool/wheels/ under a key made of the version, the patches' hash and the build
switches (CMAKE_ARGS), so a fresh clone on the same machine reuses it; pip does not cache wheels built from
a local folder. The build starts from the sdist source.py keeps, applies patches/llama.cpp/*.patch to its
vendor/llama.cpp and marks the version with a local label (0.3.36+ggtool.<hash>), which still satisfies
pyproject's `llama-cpp-python==0.3.36` pin. Runnable without ggtool installed; imports nothing from llama_cpp.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from . import source
except ImportError:  # run as a script: python3 ggtool/llama/build.py
    import source  # type: ignore[no-redef]

PATCHES = Path(__file__).resolve().parents[2] / "patches" / "llama.cpp"
DEFAULT_CMAKE_ARGS = "-DGGML_RPC=on"  # the Makefile's: RPC gives the planner's tests a loopback device
BUILD_COMMAND = "make install"  # what a person runs to get a capable build


def patches() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def build_key(version: str, cmake_args: str) -> str:
    """Version + a hash of the patches and the build switches."""
    h = hashlib.sha256()
    for p in patches():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(cmake_args.encode())
    return f"{version}+ggtool.{h.hexdigest()[:12]}"


def wheel_dir(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ggtool" / "wheels"
    return base / f"llama_cpp_python-{key}"


def cached_wheel(key: str) -> Path | None:
    found = sorted(wheel_dir(key).glob("llama_cpp_python-*.whl"))
    return found[0] if found else None


def apply_patches(root: Path) -> None:
    """Apply every patch to the sdist's vendor/llama.cpp (paths a/src/..., as upstream's tree)."""
    tree = root / "vendor" / "llama.cpp"
    for p in patches():
        if shutil.which("patch"):
            cmd = ["patch", "-p1", "--forward", "--batch", "--quiet", "-i", str(p)]
        else:
            cmd = ["git", "apply", "-p1", str(p)]
        r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"build.py: {p.name} does not apply to {tree}: {(r.stdout + r.stderr).strip()[:400]}")


def label_version(root: Path, key: str) -> None:
    """llama_cpp/__init__.py's __version__ (the wheel's version) gets the local label."""
    init = root / "llama_cpp" / "__init__.py"
    text, n = re.subn(r'__version__ = "[^"]+"', f'__version__ = "{key}"', init.read_text())
    if n != 1:
        sys.exit(f"build.py: no __version__ line in {init}")
    init.write_text(text)


def build(key: str, cmake_args: str, jobs: int) -> Path:
    archive = source.sdist_path()
    out = wheel_dir(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ggtool-build-", dir=out.parent) as tmp:
        root = source.extract(archive, Path(tmp) / "src")
        apply_patches(root)
        label_version(root, key)
        env = dict(os.environ, CMAKE_ARGS=cmake_args, CMAKE_BUILD_PARALLEL_LEVEL=str(jobs))
        staging = Path(tmp) / "wheel"
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(staging), str(root)]
        if shutil.which("nice"):
            cmd = ["nice", "-n", "10", *cmd]
        print(f"building llama-cpp-python {key} (CMAKE_ARGS={cmake_args}, {jobs} jobs; ~10 min on 2 idle cores)",
              file=sys.stderr, flush=True)
        start = time.monotonic()
        subprocess.run(cmd, env=env, check=True)
        wheel = next(staging.glob("llama_cpp_python-*.whl"))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)  # complete or absent
        print(f"built {wheel.name} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return out / wheel.name


def wheel(cmake_args: str | None = None, jobs: int | None = None) -> Path:
    """The patched wheel for the pinned version, built when the cache lacks it."""
    cmake_args = os.environ.get("CMAKE_ARGS", DEFAULT_CMAKE_ARGS) if cmake_args is None else cmake_args
    key = build_key(source.pinned_version(), cmake_args)
    return cached_wheel(key) or build(key, cmake_args, jobs or int(os.environ.get("GGTOOL_BUILD_JOBS", "2")))


if __name__ == "__main__":
    print(wheel())
