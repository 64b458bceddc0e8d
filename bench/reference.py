"""Builds llama.cpp's own tools from the exact source the pinned llama-cpp-python vendors, cached outside the repo.

Usage: python bench/reference.py [--jobs N]   (prints the cache folder; a second call is instant)

The sdist of the pinned llama-cpp-python (`pip download --no-binary :all:`) carries vendor/llama.cpp, so the
reference programs and the library ggtool calls through ctypes are the same llama.cpp commit. The build is a
CPU-only Release with the same switches the wheel was built with (native CPU flags, RPC on), so a ratio
measures ggtool's own overhead, not a different compile.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ggtool" / "llama"))
import source  # noqa: E402  (ggtool/llama/source.py, importable without llama_cpp)

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("llama-quantize", "llama-imatrix", "llama-bench", "llama-completion", "llama-cli", "llama-fit-params",
           "ggml-rpc-server", "rpc-server", "llama-perplexity")


@dataclass
class Reference:
    """Where the reference build lives: llama.cpp source (with convert_hf_to_gguf.py and gguf-py) and binaries."""

    version: str
    root: Path
    src: Path
    bin: Path

    def tool(self, name: str) -> Path | None:
        """Path of a built program, or None if this llama.cpp has no such target."""
        p = self.bin / name
        return p if p.exists() else None

    @property
    def converter(self) -> Path:
        return self.src / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.src / "gguf-py"


def cache_root(version: str) -> Path:
    base = Path(os.environ.get("GGTOOL_BENCH_CACHE", Path.home() / ".cache" / "ggtool-bench"))
    return base / f"llama.cpp-{version}"


def cmake() -> str:
    """cmake from PATH, else the venv's (pip-installed on first use, as llama-cpp-python's own build does)."""
    found = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if found:
        return found
    print("no cmake on PATH: installing it into the venv with pip ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "cmake"], check=True)
    return str(Path(sys.executable).parent / "cmake")


def build(ref: Reference, jobs: int) -> None:
    """cmake configure + build of the tool targets; the binaries are copied into ref.bin when all succeeded."""
    build_dir = ref.root / "build"
    cm = cmake()
    subprocess.run([cm, "-S", str(ref.src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_RPC=ON", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
                    "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CUDA=OFF", "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF",
                    "-DGGML_BLAS=OFF"], check=True, stdout=subprocess.DEVNULL)
    # cmake knows which targets exist (llama-cli needs the server option here); build those it lists
    help_out = subprocess.run([cm, "--build", str(build_dir), "--target", "help"],
                              capture_output=True, text=True).stdout
    known = [t for t in TARGETS if re.search(rf"^\.\.\. {re.escape(t)}$", help_out, flags=re.M)]
    subprocess.run([cm, "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", *known],
                   check=True)
    staging = ref.bin.with_name("bin.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for t in known:
        exe = build_dir / "bin" / t
        if exe.exists():
            shutil.copy2(exe, staging / t)
    staging.rename(ref.bin)


def ensure(jobs: int = 2) -> Reference:
    """The cached reference build, fetching and building it first if missing."""
    version = source.pinned_version()
    root = cache_root(version)
    root.mkdir(parents=True, exist_ok=True)
    src = source.source_dir(download=False)
    if src is None:
        print(f"fetching llama-cpp-python {version} sdist ...", file=sys.stderr)
        src = source.source_dir(download=True)
    ref = Reference(version, root, src, root / "bin")
    if not ref.bin.exists():
        print(f"building llama.cpp tools in {root / 'build'} (-j{jobs}; takes a while once) ...", file=sys.stderr)
        build(ref, jobs)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    ref = ensure(args.jobs)
    print(ref.root)
    for t in sorted(p.name for p in ref.bin.iterdir()):
        print(" ", t)


if __name__ == "__main__":
    main()
