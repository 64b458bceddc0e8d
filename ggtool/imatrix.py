"""`ggtool imatrix`: collect an importance matrix with llama.cpp, as llama-imatrix does (the file formats,
merging and coverage are in imatrix_file.py; the calibration text and its chunks in calibration.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .calibration import calibration_tokens, model_chunks
from .errors import GgtoolError
from .imatrix_file import (DEFAULT_CHUNK_SIZE, CoverageRow, Imatrix, ImatrixEntry, check_matches, coverage, merge,
                           model_tensors, read_imatrix, write_imatrix, write_legacy)
from .llama.imatrix import ImatrixCollector, evaluate_chunks
from .llama.model import LlamaModel
from .outputs import check_destination
from .runnable import require_runnable


@dataclass
class ImatrixResult:
    """What `ggtool imatrix` did."""

    dest: Path
    n_tokens: int
    n_chunks: int
    chunk_size: int
    n_entries: int
    coverage: list[CoverageRow]
    seconds: float


def collect(model_path: Path | str, files: list[Path], dest: Path | str, chunk_size: int = DEFAULT_CHUNK_SIZE,
            chat: bool = False, max_chunks: int | None = None, in_files: list[Path] = (), legacy: bool = False,
            n_threads: int = 0, progress: Callable[[int, int], None] | None = None) -> ImatrixResult:
    """Run the calibration files through llama.cpp and write the importance matrix to `dest` (GGUF, or the
    legacy .dat format), added to the importance matrices of `in_files` if given, as llama-imatrix --in-file."""
    t0 = time.perf_counter()
    model_path, dest = Path(model_path), Path(dest)
    # the model and the calibration text are never the output (an --in-file may be: it is read first)
    check_destination(dest, [("the model", model_path), *[("calibration text", f) for f in files]],
                      example="imatrix.gguf")
    if not files and not in_files:
        raise GgtoolError("no calibration text", "pass one or more -f FILE")
    if chunk_size < 16:
        raise GgtoolError(f"--chunk-size {chunk_size} is too small", "use at least 16 tokens (512 is usual)")
    if not model_path.is_file():
        raise GgtoolError(f"{model_path}: no such file")
    shapes = model_tensors(model_path)  # a clear message for a file that is not a GGUF at all
    earlier = [read_imatrix(f) for f in in_files]
    for f, m in zip(in_files, earlier):
        check_matches(m, shapes, str(f), str(model_path))
    require_runnable(model_path, "calibrate")
    chunks: list[list[int]] = []
    parts = list(earlier)
    if files:
        with LlamaModel(model_path) as model:
            ids = calibration_tokens(model, [Path(f) for f in files], chat)
            chunks = model_chunks(model, ids, chunk_size, max_chunks, "calibration text", "--chunk-size")
            collector = ImatrixCollector()
            evaluate_chunks(model, chunks, collector, n_threads=n_threads, progress=progress)
        entries = {name: ImatrixEntry(a.sums, a.counts) for name, a in sorted(collector.stats.items())}
        parts.append(Imatrix(entries, [str(f) for f in files], len(chunks), chunk_size))
    im = parts[0] if len(parts) == 1 and not parts[0].legacy else merge(parts, chunk_size)
    (write_legacy if legacy else write_imatrix)(im, dest)
    return ImatrixResult(dest, sum(len(c) for c in chunks), len(chunks), chunk_size, len(im.entries), coverage(im),
                         time.perf_counter() - t0)
