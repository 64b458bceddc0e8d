"""`ggtool verify`: the same token ids through the family's reference model and through llama.cpp."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Tokenizer

from .checkpoint import Checkpoint
from .divergence import log_softmax
from .errors import GgtoolError
from .families import detect
from .gguf_in import read_header
from .limits import check, check_gguf_model
from .llama.model import ContextOptions, LlamaModel
from .runnable import require_runnable
from .vocab import NORMALIZER_KEY

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969, 384,400 km away, the first words were spoken "
    "on the Moon.\ndef fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nMixture-of-Experts models route every token to a few experts; Größe, naïve, café.\n"
)


@dataclass(frozen=True)
class Tolerance:
    """What a file of one type must meet against the reference."""

    max_rel_diff: float | None  # max |Δlogit| / max |logit|
    min_top1: float
    max_mean_kl: float
    kv_type: str  # the KV cache type used for the comparison


# By general.file_type. f32 is compared with an f32 KV cache (llama.cpp's default f16 cache alone adds ~1e-3).
TOLERANCES = {
    gguf.LlamaFileType.ALL_F32: Tolerance(1e-4, 1.0, 1e-6, "f32"),
    gguf.LlamaFileType.MOSTLY_F16: Tolerance(None, 0.99, 1e-3, "f16"),
    # llama.cpp's bf16 matmuls round activations to bf16 too: measured KL 4e-4 on a random tiny OLMoE
    gguf.LlamaFileType.MOSTLY_BF16: Tolerance(None, 0.95, 2e-3, "f16"),
    # q8_0 is lossy: random-weight fixtures (no structure to lean on) measured KL 0.003-0.017
    gguf.LlamaFileType.MOSTLY_Q8_0: Tolerance(None, 0.85, 5e-2, "f16"),
    # exact packed weights (SSMoELM --lossless), but llama.cpp rounds activations to 8 bits for these blocks
    gguf.LlamaFileType.MOSTLY_TQ1_0: Tolerance(None, 0.85, 5e-2, "f16"),
    gguf.LlamaFileType.MOSTLY_Q4_0: Tolerance(None, 0.85, 5e-2, "f16"),
}


# text whose accents are decomposed (e + U+0301): not NFC, so a tokenizer that normalizes sees other text
DECOMPOSED_PROBE = "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m"


@dataclass
class TokenizerCheck:
    """The GGUF's token ids (llama.cpp) against the checkpoint's tokenizer.json (HF tokenizers) on the probe."""

    n_tokens: int
    mismatches: int  # probe lines whose ids differ
    n_lines: int
    normal_form: str | None = None  # the GGUF records a normalizer llama.cpp does not apply: the probe was normalized
    known_difference: str | None = None  # where ids differ by design (text not in the normal form)

    @property
    def passed(self) -> bool:
        return self.mismatches == 0


@dataclass
class VerifyResult:
    """How llama.cpp's logits on the GGUF compare with the reference implementation's."""

    n_tokens: int
    max_abs_diff: float
    max_abs_logit: float
    top1_agreement: float
    mean_kl: float
    file_type: str
    tolerance: Tolerance
    compared: str = "llama.cpp on the GGUF vs the reference implementation on the checkpoint"
    tokenizer: TokenizerCheck | None = None  # None: no tokenizer.json to compare with

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-30)

    @property
    def passed(self) -> bool:
        t = self.tolerance
        return ((t.max_rel_diff is None or self.rel_diff <= t.max_rel_diff)
                and self.top1_agreement >= t.min_top1 and self.mean_kl <= t.max_mean_kl
                and (self.tokenizer is None or self.tokenizer.passed))


def mean_kl(ref_logits: np.ndarray, test_logits: np.ndarray) -> float:
    """Mean over positions of KL(reference || test)."""
    lp, lq = log_softmax(ref_logits.astype(np.float64)), log_softmax(test_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def file_type_of(path: Path) -> gguf.LlamaFileType:
    file_type = read_header(path).get(gguf.Keys.General.FILE_TYPE)
    if file_type is None:
        raise GgtoolError(f"{path}: has no general.file_type", "was it written by a GGUF converter?")
    return gguf.LlamaFileType(int(file_type))


def sample_ids(model: LlamaModel, n_tokens: int, normal_form: str | None = None) -> list[int]:
    """`n_tokens` ids of a fixed mixed text, tokenized by the GGUF's own tokenizer (after the recorded normal form)."""
    text = unicodedata.normalize(normal_form, SAMPLE_TEXT) if normal_form else SAMPLE_TEXT
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += model.tokenize(text)
    return ids[:n_tokens]


def check_tokenizer(src: Path, model: LlamaModel, normal_form: str | None) -> TokenizerCheck | None:
    """llama.cpp's ids for the probe lines against the checkpoint's tokenizer.json; with a recorded normal form the
    probe given to llama.cpp is normalized first (as the source tokenizer does), and a decomposed-accent probe
    shows the known difference on text that is not in that form."""
    path = Path(src) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        hf = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the tokenizers library's own parse errors
        raise GgtoolError(f"{path}: the tokenizers library cannot read it ({e})") from None
    lines = [line for line in SAMPLE_TEXT.splitlines(keepends=True) if line.strip()]
    mismatches = n_tokens = 0
    for line in lines:
        expected = hf.encode(line, add_special_tokens=False).ids
        got = model.tokenize(unicodedata.normalize(normal_form, line) if normal_form else line)
        mismatches += got != expected
        n_tokens += len(expected)
    known = None
    if normal_form:
        raw, hf_ids = model.tokenize(DECOMPOSED_PROBE), hf.encode(DECOMPOSED_PROBE, add_special_tokens=False).ids
        if raw != hf_ids:
            known = (f"text not in {normal_form} (decomposed accents: {len(raw)} llama.cpp ids vs {len(hf_ids)} from "
                     f"the source tokenizer): llama.cpp does not normalize; {normal_form}-normalize prompts first")
    return TokenizerCheck(n_tokens, mismatches, len(lines), normal_form, known)


def verify_readback(family, src: Path, gguf_path: Path, n_tokens: int, ftype: gguf.LlamaFileType,
                    tol: Tolerance) -> VerifyResult:
    """For an arch llama.cpp cannot run: the family's reference on the GGUF read back (gguf-py) vs on the checkpoint."""
    reps = 1
    while len(ids := family.gguf_token_ids(gguf_path, SAMPLE_TEXT * reps)) < n_tokens:
        reps *= 2
    ids = ids[:n_tokens]
    got = family.gguf_reference_logits(gguf_path, ids)
    ref = family.reference_logits(src, ids)
    how = f"llama.cpp has no {family.arch} graph: reference on the GGUF read back by gguf-py vs on the checkpoint"
    return VerifyResult(n_tokens=len(ids), max_abs_diff=float(np.abs(got - ref).max()),
                        max_abs_logit=float(np.abs(ref).max()),
                        top1_agreement=float((got.argmax(-1) == ref.argmax(-1)).mean()),
                        mean_kl=mean_kl(ref, got), file_type=ftype.name,
                        tolerance=replace(tol, kv_type="none"), compared=how)


def verify(src: Path, gguf_path: Path, n_tokens: int = 64) -> VerifyResult:
    """Compare llama.cpp on `gguf_path` with the source family's reference model on the same ids."""
    check("--tokens", n_tokens)
    ckpt = Checkpoint(Path(src))
    family = detect(ckpt)
    ftype = file_type_of(Path(gguf_path))
    check_gguf_model(read_header(Path(gguf_path)))
    if ftype not in TOLERANCES:
        raise GgtoolError(f"{gguf_path}: file type {ftype.name} is not a conversion output",
                          "verify compares f32/f16/bf16/q8_0 conversions; use `ggtool eval` for quantized files")
    tol = TOLERANCES[ftype]
    if not family.runnable:
        return verify_readback(family, Path(src), Path(gguf_path), n_tokens, ftype, tol)

    require_runnable(Path(gguf_path), "verify")
    form = read_header(Path(gguf_path)).get(NORMALIZER_KEY)
    with LlamaModel(gguf_path) as model:
        tokenizer = check_tokenizer(Path(src), model, form)
        ids = sample_ids(model, n_tokens, form)
        got = model.logits(ids, ContextOptions(n_ctx=max(256, n_tokens), type_k=tol.kv_type, type_v=tol.kv_type))
    ref = family.reference_logits(Path(src), ids)
    if ref.shape != got.shape:
        raise GgtoolError(f"reference logits have shape {ref.shape} but llama.cpp's have {got.shape}",
                          "the GGUF's vocabulary size differs from the checkpoint's")
    return VerifyResult(n_tokens=len(ids), max_abs_diff=float(np.abs(got - ref).max()),
                        max_abs_logit=float(np.abs(ref).max()),
                        top1_agreement=float((got.argmax(-1) == ref.argmax(-1)).mean()),
                        mean_kl=mean_kl(ref, got), file_type=ftype.name, tolerance=tol, tokenizer=tokenizer)
