"""`ggtool eval`: what quantization costs, measured against the base model with llama.cpp's own logits.

Like llama-perplexity (and its --kl-divergence mode): the held-out text is cut into chunks of n_ctx
tokens, each decoded as a fresh sequence (BOS in the first position when the vocabulary asks for it),
and only the second half of each chunk is scored, so every scored token has at least n_ctx/2 tokens of
context. Per scored position: the variant's negative log-likelihood of the true next token (perplexity),
KL(base ‖ variant) over the whole vocabulary, and whether the two argmax tokens agree. The base model's
log-probabilities are computed once and kept in a temporary memory-mapped file, one chunk in memory at
a time, so long texts with large vocabularies do not need all logits in RAM.
"""

from __future__ import annotations

import errno
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from .calibration import model_chunks
from .divergence import kl_rows, log_softmax
from .errors import GgtoolError
from .gguf_in import read_header
from .limits import check
from .llama.ggml_types import FILE_TYPE_NAMES
from .llama.model import ContextOptions, LlamaModel
from .outputs import atomic_output, reserve, temporary_folder
from .runnable import require_runnable

DEFAULT_HELDOUT = Path(__file__).resolve().parent.parent / "imatrix_data" / "heldout.txt"


@dataclass
class VariantQuality:
    """One variant's measurements (the keys of the shared quality-JSON contract)."""

    file: str
    type: str
    size_bytes: int
    bpw: float
    ppl: float
    kl_mean: float
    kl_p99: float
    top1: float
    kl_stderr: float | None = None  # of kl_mean, from per-chunk means (tokens within a chunk are not independent)
    # per-chunk mean KL, for paired comparisons of two variants on the same chunks; not part of the JSON
    kl_chunks: list[float] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "kl_chunks"}


@dataclass
class EvalReport:
    """The base model, the text, and one row per variant."""

    base: str
    text: str
    n_tokens: int  # scored positions
    variants: list[VariantQuality] = field(default_factory=list)
    base_ppl: float = float("nan")
    base_type: str = ""
    base_size_bytes: int = 0
    base_bpw: float = float("nan")

    def to_json(self) -> dict:
        """The quality JSON: {"base", "text", "n_tokens", "variants": [...]} plus the base's own figures."""
        return {"base": self.base, "text": self.text, "n_tokens": self.n_tokens,
                "variants": [v.to_json() for v in self.variants], "base_ppl": self.base_ppl,
                "base_type": self.base_type, "base_size_bytes": self.base_size_bytes, "base_bpw": self.base_bpw}

    def write_json(self, dest: Path | str) -> Path:
        dest = Path(dest)
        with atomic_output(dest) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return dest


@dataclass
class FileFacts:
    type: str
    size_bytes: int
    bpw: float


def file_facts(path: Path) -> FileFacts:
    """File type name, size and bits per weight (8 × tensor bytes / parameters, both counted from the GGUF)."""
    header = read_header(path)
    ftype = int(header.get(gguf.Keys.General.FILE_TYPE, -1))
    n_bytes = sum(t.n_bytes for t in header.tensors)
    n_params = sum(t.n_elements for t in header.tensors)
    label = header.get("ggtool.mix.label")  # ggtool's own mix (mix.py): its label, not the nominal file type
    return FileFacts(str(label) if label else FILE_TYPE_NAMES.get(ftype, f"ftype {ftype}"), path.stat().st_size,
                     8 * n_bytes / n_params if n_params else float("nan"))


def _stderr(values: np.ndarray) -> float | None:
    """Standard error of the mean of independent values (None for fewer than two)."""
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def _chunks(model, text: str, n_ctx: int, max_chunks: int | None) -> list[list[int]]:
    ids = model.tokenize(text, add_special=True)  # as llama-perplexity
    return model_chunks(model, ids, n_ctx, max_chunks, "held-out text", "--ctx")


def evaluate(base: Path | str, variants: list[Path | str], text_file: Path | str | None = None, n_ctx: int = 512,
             max_chunks: int | None = None, n_threads: int = 0,
             progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Perplexity, KL divergence from `base` (mean and 99th percentile) and top-1 agreement of each variant."""
    base = Path(base)
    paths = [Path(v) for v in variants]
    text_path = Path(text_file) if text_file else DEFAULT_HELDOUT
    if not text_path.is_file():
        raise GgtoolError(f"{text_path}: no such file", "pass the held-out text with -f FILE")
    check("--ctx", n_ctx)
    if max_chunks is not None:
        check("--chunks", max_chunks)
    facts = {}
    for p in [base, *paths]:
        if not p.is_file():
            raise GgtoolError(f"{p}: no such file")
        facts[p] = file_facts(p)
        require_runnable(p, "evaluate")
    text = text_path.read_text(encoding="utf-8", errors="replace")
    opts = ContextOptions(n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, flash_attn=None)  # as llama-perplexity
    first = n_ctx // 2
    scored = n_ctx - 1 - first  # positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1

    # the base's log-probabilities in a named temporary folder ($TMPDIR/ggtool-eval-PID-*), removed on every exit
    # path (and by the next run if this one is killed); the space is reserved up front, so a full disk is an
    # error here rather than a SIGBUS when a mapped page is first written
    with temporary_folder("eval") as tmpdir:
        with LlamaModel(base) as model:
            chunks = _chunks(model, text, n_ctx, max_chunks)
            n_vocab = model.n_vocab
            n = len(chunks) * scored
            base_logp = np.lib.format.open_memmap(tmpdir / "base.npy", mode="w+", dtype=np.float32,
                                                  shape=(n, n_vocab))
            try:  # allocated now: a full disk fails here in one line, not later with SIGBUS on a mapped page
                reserve(tmpdir / "base.npy", (tmpdir / "base.npy").stat().st_size)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                raise GgtoolError(f"{tmpdir}: no space left on device for the base model's log-probabilities "
                                  f"({n * n_vocab * 4 / 2**20:.0f} MiB) in the temporary folder",
                                  "free some space, point TMPDIR at a larger folder, or use --chunks") from None
            base_top = np.empty(n, dtype=np.int64)
            base_nll = np.empty(n)
            for i, c in enumerate(chunks):
                logp = log_softmax(model.logits(c, opts)[first:n_ctx - 1])
                rows = slice(i * scored, (i + 1) * scored)
                base_logp[rows] = logp
                base_top[rows] = logp.argmax(axis=1)
                base_nll[rows] = -logp[np.arange(scored), c[first + 1:]]
                if progress:
                    progress(base.name, i + 1, len(chunks))
        bf = facts[base]
        report = EvalReport(str(base), str(text_path), n, base_ppl=float(np.exp(base_nll.mean())),
                            base_type=bf.type, base_size_bytes=bf.size_bytes, base_bpw=bf.bpw)
        for path in paths:
            kl = np.empty(n)
            nll = np.empty(n)
            agree = np.empty(n, dtype=bool)
            with LlamaModel(path) as model:
                if model.n_vocab != n_vocab:
                    raise GgtoolError(f"{path}: vocabulary of {model.n_vocab} tokens, the base has {n_vocab}",
                                      "compare variants of the same model")
                for i, c in enumerate(chunks):
                    logq = log_softmax(model.logits(c, opts)[first:n_ctx - 1])
                    rows = slice(i * scored, (i + 1) * scored)
                    logp = np.asarray(base_logp[rows])
                    kl[rows] = kl_rows(logp, logq)
                    nll[rows] = -logq[np.arange(scored), c[first + 1:]]
                    agree[rows] = logq.argmax(axis=1) == base_top[rows]
                    if progress:
                        progress(path.name, i + 1, len(chunks))
            f = facts[path]
            per_chunk = kl.reshape(len(chunks), scored).mean(axis=1)
            report.variants.append(VariantQuality(str(path), f.type, f.size_bytes, f.bpw, float(np.exp(nll.mean())),
                                                  float(kl.mean()), float(np.percentile(kl, 99)),
                                                  float(agree.mean()), _stderr(per_chunk), per_chunk.tolist()))
        del base_logp
    return report
