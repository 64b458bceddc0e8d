"""`ggtool quantize`: llama.cpp's quantization recipes (llama_model_quantize), calibrated with an importance matrix.

Everything numerical is llama.cpp's; ggtool checks the inputs first (so bad input fails before any
work, with one message), passes the importance matrix and the overrides exactly as llama-quantize does
(so the files are byte-identical to llama-quantize's), names outputs by llama.cpp's convention and
writes each through a temporary file.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gguf

from .errors import GgtoolError
from .gguf_in import read_header
from .imatrix_file import Imatrix, check_matches, model_tensors, read_imatrix
from .limits import check_regex
from .llama.ggml_types import (FILE_TYPES, FILE_TYPES_NEEDING_IMATRIX, GGML_TYPES, TENSOR_TYPES,
                          TENSOR_TYPES_NEEDING_IMATRIX, file_type)
from .llama.quantize import quantize_file
from .mix import CANDIDATES, choose_and_write
from .outputs import atomic_output, check_destination, output_folder, refuse_inputs
from .runnable import require_runnable

DEFAULT_TYPES = ["IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M"]


@dataclass
class TensorType:
    """One --tensor-type REGEX=TYPE: the regex lower-cased (as llama-quantize does) and a ggml type."""

    pattern: str
    type_name: str
    ggml_type: int


def parse_tensor_type(spec: str) -> TensorType:
    """REGEX=TYPE as llama-quantize's --tensor-type parses it."""
    pattern, sep, type_name = spec.partition("=")
    if not sep or not pattern or not type_name:
        raise GgtoolError(f"--tensor-type {spec!r}: expected REGEX=TYPE", "e.g. --tensor-type 'ffn_down_exps=Q6_K'")
    pattern = pattern.lower()
    check_regex(pattern, "--tensor-type")
    try:
        re.compile(pattern)
    except re.error as e:
        raise GgtoolError(f"--tensor-type {spec!r}: bad regular expression ({e})") from None
    name = type_name.strip().upper()
    if name not in TENSOR_TYPES:
        what = "is not a tensor type llama.cpp quantizes to" if name in GGML_TYPES else "is an unknown tensor type"
        raise GgtoolError(f"--tensor-type {spec!r}: {type_name!r} {what}", f"choose from {', '.join(TENSOR_TYPES)}")
    return TensorType(pattern, name, GGML_TYPES[name])


def output_name(model: Path | str, type_name: str) -> str:
    """llama.cpp's file name for a quantized model: <Basename>-<SizeLabel>-<TYPE>.gguf (gguf-py's convention)."""
    header = read_header(model)

    def value(key: str) -> str | None:
        v = header.get(key)
        return None if v is None else str(v)

    name = gguf.naming_convention(value(gguf.Keys.General.NAME), value(gguf.Keys.General.BASENAME),
                                  value(gguf.Keys.General.FINETUNE), value(gguf.Keys.General.VERSION),
                                  value(gguf.Keys.General.SIZE_LABEL), type_name)
    return f"{name}.gguf"


@dataclass
class QuantizedVariant:
    """One written variant."""

    type: str
    path: Path
    size_bytes: int
    seconds: float
    imatrix: str | None  # the importance matrix's label (file name), if one was used
    # tensors whose recipe type did not fit their row length: (tensor, wanted, used), as llama.cpp chose
    fallbacks: list[tuple[str, str, str]] = field(default_factory=list)


def imatrix_kv_overrides(im: Imatrix, label: str, n_entries: int) -> list[tuple[str, str | int]]:
    """The metadata llama-quantize adds for an importance matrix (quantize.imatrix.*)."""
    kvs: list[tuple[str, str | int]] = [("quantize.imatrix.file", label)]
    if im.datasets:
        kvs.append(("quantize.imatrix.dataset", im.datasets[0]))
    kvs.append(("quantize.imatrix.entries_count", n_entries))
    if im.chunk_count > 0:
        kvs.append(("quantize.imatrix.chunks_count", im.chunk_count))
    return kvs


def _check_model(model: Path) -> dict[str, tuple[int, ...]]:
    if not model.is_file():
        raise GgtoolError(f"{model}: no such file")
    shapes = model_tensors(model)
    require_runnable(model, "quantize")
    return shapes


def _load_imatrix(imatrix: Path | str | Imatrix | None, shapes: dict, model: Path) -> tuple[Imatrix | None, str | None]:
    if imatrix is None:
        return None, None
    im, label = (imatrix, "imatrix") if isinstance(imatrix, Imatrix) else (read_imatrix(imatrix), str(imatrix))
    check_matches(im, shapes, label, str(model))
    return im, label


def _refuse_without_imatrix(type_name: str, tensor_types: list[TensorType], model: Path) -> None:
    needing = [type_name] if type_name in FILE_TYPES_NEEDING_IMATRIX else []
    needing += [t.type_name for t in tensor_types if t.type_name in TENSOR_TYPES_NEEDING_IMATRIX]
    if needing:
        raise GgtoolError(f"{needing[0]} needs an importance matrix",
                          f"make one with `ggtool imatrix {model} -o imatrix.gguf` and pass --imatrix imatrix.gguf")


def quantize_one(model: Path | str, dest: Path | str, type_name: str, imatrix: Path | str | Imatrix | None = None,
                 tensor_types: list[str] | list[TensorType] = (), imatrix_label: str | None = None,
                 nthread: int = 0) -> QuantizedVariant:
    """Quantize `model` to `dest` with llama.cpp's recipe for `type_name` (e.g. IQ3_M), atomically."""
    model, dest = Path(model), Path(dest)
    type_name = file_type(type_name)
    tts = [t if isinstance(t, TensorType) else parse_tensor_type(t) for t in tensor_types]
    shapes = _check_model(model)
    im, label = _load_imatrix(imatrix, shapes, model)
    if im is None:
        _refuse_without_imatrix(type_name, tts, model)
    return _quantize(model, dest, type_name, im, imatrix_label or label, tts, nthread)


def _quantize(model: Path, dest: Path, type_name: str, im: Imatrix | None, label: str | None,
              tts: list[TensorType], nthread: int) -> QuantizedVariant:
    check_destination(dest, [("the input model", model),
                             ("the importance matrix", label if label and Path(label).is_file() else None)])
    t0 = time.perf_counter()
    means = im.means() if im is not None else None
    kvs = imatrix_kv_overrides(im, label or "imatrix", len(means)) if im is not None else []
    with atomic_output(dest) as tmp:
        fell = quantize_file(model, tmp, FILE_TYPES[type_name], means, [(t.pattern, t.ggml_type) for t in tts], kvs,
                             nthread)
    return QuantizedVariant(type_name, dest, dest.stat().st_size, time.perf_counter() - t0, label, fell)


def quantize(model: Path | str, out_dir: Path | str, types: list[str] = DEFAULT_TYPES,
             imatrix: Path | str | Imatrix | None = None, tensor_types: list[str] = (), nthread: int = 0,
             progress: Callable[[str, int, int, QuantizedVariant | None], None] | None = None
             ) -> list[QuantizedVariant]:
    """Every type in `types` from `model` into `out_dir`, named <Basename>-<SizeLabel>-<TYPE>.gguf.

    All inputs are checked before the first variant is written; `progress(type, i, n, variant)` is called
    before (variant None) and after each one.
    """
    model, out_dir = Path(model), Path(out_dir)
    names = [file_type(t) for t in types]
    if not names:
        raise GgtoolError("no quantization types given", f"e.g. --types {','.join(DEFAULT_TYPES)}")
    tts = [parse_tensor_type(t) for t in tensor_types]
    shapes = _check_model(model)
    im, label = _load_imatrix(imatrix, shapes, model)
    if im is None:
        for n in names:
            _refuse_without_imatrix(n, tts, model)
    for n in names:
        refuse_inputs(out_dir / output_name(model, n), [("the input model", model), ("the importance matrix",
                                                        imatrix if isinstance(imatrix, (str, Path)) else None)])
    done = []
    with output_folder(out_dir):  # removed again if this run created it and fails
        for i, n in enumerate(names):
            if progress:
                progress(n, i, len(names), None)
            v = _quantize(model, out_dir / output_name(model, n), n, im, label, tts, nthread)
            done.append(v)
            if progress:
                progress(n, i, len(names), v)
    return done


def quantize_to_size(model: Path | str, out_dir: Path | str, *, target_bytes: int | None = None,
                     target_bpw: float | None = None, imatrix: Path | str | Imatrix | None = None,
                     tensor_types: list[str] = (), calibration: list[Path] | None = None, nthread: int = 0,
                     candidates: list[str] | None = None, progress: Callable[[str, int, int], None] | None = None):  # noqa: ANN201 (mix.MixResult)
    """ggtool's own mix at a file size or bits per weight (see mix.py), into `out_dir` as
    <Basename>-<SizeLabel>-MIX-<bpw>BPW.gguf; `tensor_types` still win over the mix."""
    model, out_dir = Path(model), Path(out_dir)
    tts = [parse_tensor_type(t) for t in tensor_types]
    cands = CANDIDATES
    if candidates:
        names = [c.strip().upper() for c in candidates]
        bad = [c for c in names if c not in TENSOR_TYPES]
        if bad:
            raise GgtoolError(f"--mix-types: unknown tensor type {bad[0]!r}", f"e.g. --mix-types {','.join(CANDIDATES)}")
        cands = tuple(names)
    shapes = _check_model(model)
    im, label = _load_imatrix(imatrix, shapes, model)
    if im is None:
        _refuse_without_imatrix("Q8_0", tts, model)
    kvs = imatrix_kv_overrides(im, label, len(im.means())) if im is not None else []
    inputs = [("the input model", model),
              ("the importance matrix", imatrix if isinstance(imatrix, (str, Path)) else None),
              *[("the calibration text", c) for c in calibration or []]]

    def dest(bpw: float) -> Path:
        path = out_dir / output_name(model, f"MIX-{bpw:.2f}BPW")
        refuse_inputs(path, inputs)
        return path
    with output_folder(out_dir):  # removed again if this run created it and fails
        return choose_and_write(model, dest, target_bytes=target_bytes, target_bpw=target_bpw, imatrix=im,
                                tensor_types=tts, kv_overrides=kvs, calibration=calibration, candidates=cands,
                                n_threads=nthread, progress=progress)
