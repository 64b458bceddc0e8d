"""`ggtool export lmstudio`: GGUF variants laid out where LM Studio finds them (and a model.yaml for a Hub repo).

LM Studio lists only files inside `<models root>/<publisher>/<model>/`: the layout alone makes local GGUFs
visible. Before anything is placed, every file is checked for what LM Studio reads from it: a chat template
that renders system, user and assistant turns (LM Studio renders tokenizer.chat_template itself),
general.name, the context length, BOS and EOS; the recommended sampling travels in the GGUF too
(general.sampling.*, written by convert from generation_config.json). The files are written beside
their final names and renamed when complete, so LM Studio never sees half a file; only files ggtool placed
there before are ever replaced or removed (listed in the folder's .ggtool-export.json).

model.yaml (a "virtual model", lmstudio-js packages/lms-shared-types/src/VirtualModelDefinition.ts) can only
point at Hugging Face repos: its `sources` union has the single member {type: huggingface, user, repo}
(ModelDownloadSource.ts). So it is written only with --hub-repo (the repo `ggtool publish` uploaded the files
to), carrying the metadata and the sampling defaults as LM Studio's config fields.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import yaml

from .errors import GgtoolError
from .families import client_note
from .gguf_in import read_gguf_chat, read_header
from .hub_download import parse_repo_spec
from .outputs import atomic_output, output_folder, refuse_inputs
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
    notes: list[str] = field(default_factory=list)


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
    header = read_header(path)
    arch = header.typed("general.architecture", str)
    if arch is None:
        raise GgtoolError(f"{path}: lacks general.architecture, which LM Studio reads")
    ft = header.typed("general.file_type", int)
    try:
        file_type = gguf.LlamaFileType(ft).name.removeprefix("MOSTLY_") if ft is not None else "unknown"
    except ValueError:
        file_type = f"file type {ft}"
    mix = header.typed("ggtool.mix.label", str)  # ggtool's own mix: named apart from the stock file of that type
    if mix is not None:
        file_type = f"{mix} (ggtool mix)"
    return Variant(path, chat.name, arch, file_type, header.typed("general.size_label", str),
                   chat.context_length, chat.sampling)


def model_yaml(publisher: str, model: str, variants: list[Variant], hub_repo: str) -> str:
    """model.yaml for the variants as published in `hub_repo` (org/name): the one concrete model is that Hub repo,
    the form LM Studio's virtual-model schema accepts."""
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

    note = client_note(first.arch, "LM Studio")
    return (f"# written by ggtool export lmstudio for the Hub repo {user}/{repo}; variants:\n" + listing
            + (f"# note: {note}\n" if note else "")
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system: copy instead
    shutil.copy2(src, dst)


OWNED = ".ggtool-export.json"  # the names of the files ggtool placed in a model folder (nothing else is touched)


def _owned(folder: Path) -> set[str]:
    try:
        data = json.loads((folder / OWNED).read_text(encoding="utf-8"))
        return {str(n) for n in data.get("files", [])} if isinstance(data, dict) else set()
    except (OSError, ValueError):
        return set()


def export(models: list[Path], publisher: str, model: str, root: Path | None = None, link: bool = True,
           force: bool = False, hub_repo: str | None = None, replace: bool = False) -> ExportResult:
    """Place `models` (variants of one model) in <root>/<publisher>/<model>/; with `hub_repo` (where they are
    published) also a model.yaml pointing at it. Only files ggtool placed there before are replaced or removed; a
    folder holding anything else is refused unless `replace` (then the variants are added beside those files,
    replacing same-named ones)."""
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
    dest = root / publisher / model
    for name in ("model.yaml", OWNED):  # a variant placed over itself is harmless: it is linked or copied first
        refuse_inputs(dest / name, [("a file being exported", m) for m in models])
    owned = _owned(dest) if dest.is_dir() else set()
    if dest.is_dir():
        foreign = sorted(p.name for p in dest.iterdir()
                         if p.name not in owned | {OWNED} and not p.name.endswith(".partial"))
        if foreign and not replace:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise GgtoolError(f"{dest}: holds files ggtool did not place there ({shown})",
                              "choose another --model, or pass --replace to add the variants beside them (nothing "
                              "else is touched; same-named files are replaced)")
    elif dest.exists():
        raise GgtoolError(f"{dest}: exists and is not a folder", "choose another --model")
    with output_folder(dest, parents=True):
        for v in variants:
            with atomic_output(dest / v.path.name) as tmp:
                tmp.unlink()
                _place(v.path, tmp, link)
        if manifest is not None:
            with atomic_output(dest / "model.yaml") as tmp:
                tmp.write_text(manifest, encoding="utf-8")
        placed = [*names, *(["model.yaml"] if manifest is not None else [])]
        for stale in sorted(owned - set(placed)):  # ggtool's own files of an earlier export, no longer listed
            with contextlib.suppress(FileNotFoundError):
                (dest / stale).unlink()
        with atomic_output(dest / OWNED) as tmp:
            tmp.write_text(json.dumps({"files": placed}, indent=1) + "\n", encoding="utf-8")

    note = client_note(variants[0].arch, "LM Studio")
    return ExportResult(dest, [dest / n for n in names], dest / "model.yaml" if manifest is not None else None,
                        warnings, [note] if note else [])
