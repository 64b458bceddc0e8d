"""Builds llama.cpp's own tools from the exact source the pinned llama-cpp-python vendors, cached outside the repo.

Usage: python bench/reference.py [--jobs N] [--targets T ...]   (prints the cache folder; a second call is instant)

`make install` builds the two programs the test suite compares ggtool with (llama-quantize, llama-imatrix);
`make bench` the rest, in the same build folder (cmake builds only what is missing).

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


def build(ref: Reference, jobs: int, targets: tuple[str, ...] = TARGETS) -> None:
    """cmake configure + build of the tool targets; each binary is copied into ref.bin when the build succeeded
    (beside its final name, then renamed: a tool in ref.bin is always complete)."""
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
    known = [t for t in targets if re.search(rf"^\.\.\. {re.escape(t)}$", help_out, flags=re.M)]
    if known:
        log = ref.root / "build.log"  # the compiler's output (warnings included) goes here, not to the terminal
        with open(log, "w") as out:
            done = subprocess.run([cm, "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target",
                                   *known], stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.stderr.write("".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:]))
            raise SystemExit(f"building {', '.join(known)} failed (exit {done.returncode}); the whole log: {log}")
    ref.bin.mkdir(parents=True, exist_ok=True)
    for t in known:
        exe = build_dir / "bin" / t
        if exe.exists():
            partial = ref.bin / f".{t}.partial"
            shutil.copy2(exe, partial)
            partial.rename(ref.bin / t)
    # the targets this llama.cpp does not have, so that a later call does not configure again for them
    gone = absent(ref) | {t for t in targets if t not in known}
    (ref.root / "absent.txt").write_text("".join(f"{t}\n" for t in sorted(gone)))


def absent(ref: Reference) -> set[str]:
    """Targets an earlier build found missing from this llama.cpp (llama-cli needs the server option here)."""
    p = ref.root / "absent.txt"
    return set(p.read_text().split()) if p.exists() else set()


def ensure(jobs: int = 2, targets: tuple[str, ...] = TARGETS) -> Reference:
    """The cached reference build of `targets`, fetching and building what is missing first."""
    version = source.pinned_version()
    root = cache_root(version)
    root.mkdir(parents=True, exist_ok=True)
    src = source.source_dir(download=False)
    if src is None:
        print(f"fetching llama-cpp-python {version} sdist ...", file=sys.stderr)
        src = source.source_dir(download=True)
    ref = Reference(version, root, src, root / "bin")
    missing = tuple(t for t in targets if ref.tool(t) is None and t not in absent(ref))
    if missing:
        print(f"building {', '.join(missing)} in {root / 'build'} (-j{jobs}; takes a while once) ...", file=sys.stderr)
        build(ref, jobs, missing)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, metavar="TARGET",
                    help="programs to build (default: all of them)")
    args = ap.parse_args()
    ref = ensure(args.jobs, tuple(args.targets))
    print(ref.root)
    for t in sorted(p.name for p in ref.bin.iterdir()):
        print(" ", t)


if __name__ == "__main__":
    main()
