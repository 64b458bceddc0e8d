"""`ggtool convert`: checkpoint folder -> GGUF, with every check done before the first byte is written."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from .checkpoint import Checkpoint
from .errors import GgtoolError
from .families import detect
from .families.base import Family, HParam, PlannedTensor, validate_plan
from .gguf_out import FILE_TYPES, OUTTYPES, nbytes, tensor_type, write_gguf
from .limits import check_hparams
from .outputs import check_destination
from .template_check import check_template
from .templates import parse_template

_WRITERS = {"u32": "add_uint32", "i32": "add_int32", "f32": "add_float32", "bool": "add_bool", "str": "add_string",
            "arr": "add_array"}


@dataclass
class ConvertResult:
    """What a conversion wrote."""

    dest: Path
    family: str
    arch: str
    outtype: str
    n_tensors: int
    n_bytes: int
    n_params: int
    seconds: float


def parameter_counts(plan: list[PlannedTensor]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) as gguf-py's size_label expects them."""
    total = shared = expert = count = 0
    for t in plan:
        size = int(np.prod(t.shape, dtype=np.int64))
        total += size
        if "_exps." in t.name and len(t.shape) >= 3:
            expert += size // t.shape[0]
            count = t.shape[0]
        else:
            shared += size
    return total, shared, expert, count


def add_hparams(w: gguf.GGUFWriter, arch: str, hparams: list[HParam]) -> None:
    """Write family hyperparameters: gguf-py keys get `arch` filled in, relative keys go under `{arch}.`."""
    for hp in hparams:
        getattr(w, _WRITERS[hp.kind])(hparam_key(arch, hp.key), hp.value)


def hparam_key(arch: str, key: str) -> str:
    """The GGUF key a family's HParam is written under."""
    if "{arch}" in key:
        return key.format(arch=arch)
    return key if key.split(".")[0] in ("general", "tokenizer") else f"{arch}.{key}"


def prepare(src: Path) -> tuple[Checkpoint, Family, list[PlannedTensor]]:
    """Open, detect, check and plan: everything that can fail on bad input, with no output yet."""
    ckpt = Checkpoint(src)  # config.json's shape values checked against limits.CONFIG_KEYS
    family = detect(ckpt)
    family.check(ckpt)
    # the GGUF keys as llama.cpp will read them, within its limits (its asserts abort on e.g. top-k > experts)
    values = {hparam_key(family.arch, hp.key): hp.value for hp in family.hparams(ckpt)}
    check_hparams(values.get, str(ckpt.folder / "config.json"), lambda k: f"{family.arch}.{k}")
    plan = family.tensor_plan(ckpt)
    validate_plan(ckpt, plan, family.ignored_tensors)
    return ckpt, family, plan


def convert(src: Path, dest: Path, outtype: str = "f16",
            progress: Callable[[str, int], None] | None = None, lossless: bool = False) -> ConvertResult:
    """Convert the checkpoint folder `src` to a GGUF file at `dest` (`lossless`: packed weights kept exact)."""
    t0 = time.perf_counter()
    if outtype not in OUTTYPES:
        raise GgtoolError(f"unknown --outtype {outtype}", f"choose one of {', '.join(OUTTYPES)}")
    src, dest = Path(src), Path(dest)
    ckpt, family, plan = prepare(src)
    qtype, file_type = OUTTYPES[outtype], FILE_TYPES[OUTTYPES[outtype]]
    if lossless:  # packed low-bit weights written as the GGUF block types that hold them exactly
        if not hasattr(family, "lossless"):
            raise GgtoolError(f"--lossless: {family.title} checkpoints hold no packed low-bit weights to keep exact",
                              "convert without --lossless")
        plan, file_type = family.lossless(ckpt)
        outtype = "lossless"
    types = [tensor_type(t, qtype) for t in plan]
    vocab = family.vocab(ckpt)
    for name, template in [("", vocab.chat_template), *vocab.named_templates.items()]:
        if template:
            try:
                parse_template(template)
            except GgtoolError as e:  # written into the GGUF, it would fail in every client that renders it
                raise GgtoolError(f"{src}: chat template{' ' + name if name else ''}: {e.message}",
                                  "fix the template in tokenizer_config.json / chat_template.jinja") from None
    check_destination(dest, [("one of the conversion's inputs", p) for p in ckpt.input_paths()])
    if vocab.chat_template:  # a warning here; modelfile, export lmstudio and publish refuse

        bos, eos = (vocab.tokens[vocab.special[k]] if k in vocab.special else "" for k in ("bos", "eos"))
        for outcome in check_template(vocab.chat_template, bos, eos).problems():
            warnings.warn(f"{src}: chat template: {outcome.line()}", stacklevel=2)
    total, shared, expert, count = parameter_counts(plan)

    def add_metadata(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        meta = gguf.Metadata.load(None, src, None, total)
        if meta.name is None:
            meta.name = src.resolve().name
        if meta.size_label is None:
            meta.size_label = gguf.size_label(total, shared, expert, count)
        meta.set_gguf_meta_model(w)
        add_hparams(w, family.arch, family.hparams(ckpt))
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.write(w)

    write_gguf(dest, family.arch, add_metadata, plan, ckpt, types, progress)
    n_bytes = sum(nbytes(t.shape, q) for t, q in zip(plan, types))
    return ConvertResult(dest, family.name, family.arch, outtype, len(plan), n_bytes, total,
                         time.perf_counter() - t0)
