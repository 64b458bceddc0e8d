"""`ggtool export lmstudio`: GGUF variants laid out where LM Studio finds them, with a model.yaml.

LM Studio lists only files inside `<models root>/<publisher>/<model>/`. Before anything is placed, every file
is checked for what LM Studio reads from it: a chat template that renders system, user and assistant turns
(LM Studio renders tokenizer.chat_template itself), general.name, the context length, BOS and EOS. The
folder is built beside the destination and renamed into place, so LM Studio never sees half of it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import yaml

from .errors import GgtoolError
from .ollama import read_gguf_chat
from .template_check import ENGINES, check_template, enforce
from .templates import render_chat

DEFAULT_ROOT = Path("~/.lmstudio/models")
PROBE = [{"role": "system", "content": "SYS-PROBE"}, {"role": "user", "content": "USER-PROBE"},
         {"role": "assistant", "content": "ASSISTANT-PROBE"}, {"role": "user", "content": "USER2-PROBE"}]
CONFIG_KEYS = {"temperature": "llm.prediction.temperature", "top_p": "llm.prediction.topPSampling",
               "top_k": "llm.prediction.topKSampling", "repeat_penalty": "llm.prediction.repeatPenalty"}


@dataclass
class Variant:
    path: Path
    name: str
    arch: str
    file_type: str
    size_label: str | None
    context_length: int
    sampling: dict


@dataclass
class ExportResult:
    folder: Path
    files: list[Path]
    model_yaml: Path
    warnings: list[str] = field(default_factory=list)


def _safe_component(value: str, what: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value or value.startswith("."):
        raise GgtoolError(f"--{what} {value!r}: must be one folder name (no slashes, not starting with '.')")
    return value


def check_variant(path: Path, force: bool = False, warnings: list[str] | None = None) -> Variant:
    """Refuse a GGUF that lacks what LM Studio reads, or whose template an engine LM Studio uses renders unlike
    jinja2 (unless `force`; then, and for engines that could not run, lines are added to `warnings`); else what
    model.yaml says about it."""
    warnings = [] if warnings is None else warnings
    path = Path(path)
    chat = read_gguf_chat(path)
    missing = [what for what, ok in (("general.name", chat.name), ("a context length", chat.context_length),
                                     ("tokenizer.chat_template", chat.template), ("a BOS token", chat.bos),
                                     ("an EOS token", chat.eos)) if not ok]
    if missing:
        raise GgtoolError(f"{path}: lacks {', '.join(missing)}, which LM Studio reads",
                          "re-convert it with `ggtool convert` from a folder with tokenizer files")
    try:
        text = render_chat(chat.template, PROBE, bos_token=chat.bos, eos_token=chat.eos)
    except GgtoolError as e:
        raise GgtoolError(f"{path}: its chat template does not render a system/user/assistant chat: {e}") from None
    lost = [m["role"] for m in PROBE if m["content"] not in text]
    if lost:
        raise GgtoolError(f"{path}: its chat template drops the {', '.join(lost)} turn(s)",
                          "LM Studio would send the model a prompt without them")
    # LM Studio renders with @huggingface/jinja; its llama.cpp runtime (llama-server) with llama.cpp's engine
    warnings += enforce(check_template(chat.template, chat.bos, chat.eos), str(path), ENGINES, force)
    r = gguf.GGUFReader(path)
    arch = r.get_field("general.architecture").contents()
    ft = r.get_field("general.file_type")
    file_type = gguf.LlamaFileType(int(ft.contents())).name.removeprefix("MOSTLY_") if ft is not None else "unknown"
    mix = r.get_field("ggtool.mix.label")  # ggtool's own mix: named apart from the stock file of that type
    if mix is not None:
        file_type = f"{mix.contents()} (ggtool mix)"
    size = r.get_field("general.size_label")
    return Variant(path, chat.name, arch, file_type, size.contents() if size is not None else None,
                   chat.context_length, chat.sampling)


def model_yaml(publisher: str, model: str, variants: list[Variant]) -> str:
    """model.yaml (modelyaml.org, draft 1.0) describing the variants placed in the folder. The spec's sources
    are Hub repos; the files here are local, so each source is `type: local` with the file name (ggtool's
    extension), and the variants' types and sizes are listed in a comment."""
    first = variants[0]
    doc: dict = {
        "model": f"{publisher}/{model}",
        "base": [{"key": f"{publisher}/{model}/{v.path.name}", "sources": [{"type": "local", "path": v.path.name}]}
                 for v in variants],
        "metadataOverrides": {"domain": "llm", "architectures": [first.arch], "compatibilityTypes": ["gguf"],
                              **({"paramsStrings": [first.size_label]} if first.size_label else {}),
                              "minMemoryUsageBytes": min(v.path.stat().st_size for v in variants),
                              "contextLengths": [first.context_length]},
    }
    fields = [{"key": CONFIG_KEYS[k], "value": v} for k, v in first.sampling.items() if k in CONFIG_KEYS]
    if fields:
        doc["config"] = {"operation": {"fields": fields}}
    listing = "".join(f"#   {v.path.name}: {v.file_type}, {v.path.stat().st_size} bytes\n" for v in variants)
    return ("# written by ggtool export lmstudio; variants:\n" + listing
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system: copy instead
    shutil.copy2(src, dst)


def export(models: list[Path], publisher: str, model: str, root: Path | None = None, link: bool = True,
           force: bool = False) -> ExportResult:
    """Place `models` (variants of one model) in <root>/<publisher>/<model>/ with a model.yaml, atomically."""
    publisher, model = _safe_component(publisher, "publisher"), _safe_component(model, "model")
    if not models:
        raise GgtoolError("no GGUF files given")
    names = [Path(m).name for m in models]
    if len(set(names)) != len(names):
        raise GgtoolError("two variants have the same file name", "rename one; LM Studio lists them by file name")
    warnings: list[str] = []
    variants = [check_variant(Path(m), force, warnings) for m in models]
    archs = {v.arch for v in variants}
    if len(archs) > 1:
        raise GgtoolError(f"the files are not variants of one model (architectures {', '.join(sorted(archs))})")
    root = Path(root or DEFAULT_ROOT).expanduser()
    parent = root / publisher
    parent.mkdir(parents=True, exist_ok=True)
    dest = parent / model
    tmp = parent / f".{model}.{os.getpid()}.partial"
    old = parent / f".{model}.{os.getpid()}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for v in variants:
            _place(v.path, tmp / v.path.name, link)
        (tmp / "model.yaml").write_text(model_yaml(publisher, model, variants), encoding="utf-8")
        if dest.exists():
            os.replace(dest, old)  # replaced as a whole: the old layout stays intact until the new one is complete
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return ExportResult(dest, [dest / n for n in names], dest / "model.yaml", warnings)
