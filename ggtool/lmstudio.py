"""`ggtool export lmstudio`: GGUF variants laid out where LM Studio finds them (and a model.yaml for a Hub repo).

LM Studio lists only files inside `<models root>/<publisher>/<model>/`: the layout alone makes local GGUFs
visible. Before anything is placed, every file is checked for what LM Studio reads from it: a chat template
that renders system, user and assistant turns (LM Studio renders tokenizer.chat_template itself),
general.name, the context length, BOS and EOS; the recommended sampling travels in the GGUF too
(general.sampling.*, written by convert from generation_config.json). The folder is built beside the
destination and renamed into place, so LM Studio never sees half of it.

model.yaml (a "virtual model", lmstudio-js packages/lms-shared-types/src/VirtualModelDefinition.ts) can only
point at Hugging Face repos: its `sources` union has the single member {type: huggingface, user, repo}
(ModelDownloadSource.ts). So it is written only with --hub-repo (the repo `ggtool publish` uploaded the files
to), carrying the metadata and the sampling defaults as LM Studio's config fields.
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
    model_yaml: Path | None  # only with a Hub repo (see the module docstring)
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
    size = r.get_field("general.size_label")
    return Variant(path, chat.name, arch, file_type, size.contents() if size is not None else None,
                   chat.context_length, chat.sampling)


def model_yaml(publisher: str, model: str, variants: list[Variant], hub_repo: str) -> str:
    """model.yaml for the variants as published in `hub_repo` (org/name): the one concrete model is that Hub repo,
    the form LM Studio's virtual-model schema accepts."""
    from .hub import parse_repo_spec

    parsed = parse_repo_spec(hub_repo)
    if parsed is None or parsed[1] is not None:
        raise GgtoolError(f"--hub-repo {hub_repo!r}: not a Hub repo id (org/name)")
    user, repo = parsed[0].split("/")
    first = variants[0]
    doc: dict = {
        "model": f"{publisher}/{model}",
        "base": [{"key": f"{user}/{repo}".lower(), "sources": [{"type": "huggingface", "user": user, "repo": repo}]}],
        "metadataOverrides": {"domain": "llm", "architectures": [first.arch], "compatibilityTypes": ["gguf"],
                              **({"paramsStrings": [first.size_label]} if first.size_label else {}),
                              "minMemoryUsageBytes": min(v.path.stat().st_size for v in variants),
                              "contextLengths": [first.context_length]},
    }
    fields = [{"key": CONFIG_KEYS[k], "value": v} for k, v in first.sampling.items() if k in CONFIG_KEYS]
    if fields:
        doc["config"] = {"operation": {"fields": fields}}
    listing = "".join(f"#   {v.path.name}: {v.file_type}, {v.path.stat().st_size} bytes\n" for v in variants)
    return (f"# written by ggtool export lmstudio for the Hub repo {user}/{repo}; variants:\n" + listing
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
           force: bool = False, hub_repo: str | None = None) -> ExportResult:
    """Place `models` (variants of one model) in <root>/<publisher>/<model>/, atomically; with `hub_repo` (where
    they are published) also a model.yaml pointing at it."""
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
    manifest = model_yaml(publisher, model, variants, hub_repo) if hub_repo else None
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
        if manifest is not None:
            (tmp / "model.yaml").write_text(manifest, encoding="utf-8")
        if dest.exists():
            os.replace(dest, old)  # replaced as a whole: the old layout stays intact until the new one is complete
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return ExportResult(dest, [dest / n for n in names], dest / "model.yaml" if manifest is not None else None,
                        warnings)
