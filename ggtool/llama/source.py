"""The llama.cpp source that the pinned llama-cpp-python vendors: its sdist's vendor/llama.cpp, fetched once.

Used wherever llama.cpp's own material is needed beside the compiled library: its chat-template engine
(common/jinja), its tokenizer test vectors (models/ggml-vocab-*), its templates (models/templates). The
sdist itself is kept beside the extracted folder: the patched build (build.py) starts from it. Runnable
without ggtool installed (`python3 ggtool/llama/source.py` prints the folder), so the Makefile can fetch it
before llama-cpp-python is built. Imports nothing from llama_cpp.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import requires
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pinned_version() -> str:
    """The llama-cpp-python version ggtool pins (pyproject.toml in a checkout, else the installed metadata)."""
    if PYPROJECT.is_file():
        m = re.search(r'"llama-cpp-python==([^"]+)"', PYPROJECT.read_text())
        if m:
            return m.group(1)

    for req in requires("ggtool") or []:
        m = re.fullmatch(r"llama-cpp-python\s*==\s*([\w.]+)", req.split(";")[0].strip())
        if m:
            return m.group(1)
    raise RuntimeError("no llama-cpp-python==<version> pin found in pyproject.toml or ggtool's metadata")


def cache_dir(version: str | None = None) -> Path:
    """Where the extracted source lives: $GGTOOL_LLAMA_SRC, else ~/.cache/ggtool/llama.cpp-<version>/src."""
    if os.environ.get("GGTOOL_LLAMA_SRC"):
        return Path(os.environ["GGTOOL_LLAMA_SRC"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ggtool"
    return base / f"llama.cpp-{version or pinned_version()}" / "src"


def sdist_path(version: str | None = None, download: bool = True) -> Path | None:
    """The pinned llama-cpp-python sdist, kept beside the extracted source (the patched build starts from it);
    downloaded with pip when missing and `download`, else None."""
    version = version or pinned_version()
    dest = cache_dir(version).parent / f"llama_cpp_python-{version}.tar.gz"
    if dest.is_file():
        return dest
    if not download:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ggtool-sdist-", dir=dest.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"llama-cpp-python=={version}"], check=True)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        archive.rename(dest)  # same folder: complete or absent
    return dest


def extract(archive: Path, into: Path) -> Path:
    """Unpack the sdist into `into`; its top folder (llama_cpp_python-<version>)."""
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python without extraction filters (before 3.10.12 / 3.11.4): PyPI's own sdist
            tar.extractall(into)
    return next(Path(into).glob("llama_cpp_python-*/"))


def fetch(version: str, dest: Path) -> None:
    """Move the sdist's vendor/llama.cpp to `dest` (staged beside it, then renamed), downloading the sdist first."""
    archive = sdist_path(version)
    with tempfile.TemporaryDirectory(prefix="ggtool-sdist-", dir=dest.parent) as tmp:
        vendored = extract(archive, Path(tmp)) / "vendor" / "llama.cpp"
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.move(str(vendored), staging)
        staging.rename(dest)


def source_dir(download: bool = True) -> Path | None:
    """The vendored llama.cpp source folder; fetched with pip when missing and `download`, else None."""
    dest = cache_dir()
    if (dest / "CMakeLists.txt").is_file():
        return dest
    if not download or os.environ.get("GGTOOL_LLAMA_SRC"):
        return None
    fetch(pinned_version(), dest)
    return dest


if __name__ == "__main__":
    found = source_dir(download=True)
    print(found)
