"""The Hugging Face Hub in and out: `convert org/name[@revision]` and `publish DIR --repo org/name`.

In: only the files conversion reads are fetched (allow_patterns), through huggingface_hub's cache, so a
second conversion downloads nothing and HF_HUB_OFFLINE=1 works from the cache alone. Nothing from the repo
is ever executed: a config.json whose model needs its own code (auto_map) and that no ggtool family
converts is refused by name. Out: one commit with the GGUF ladder, its Modelfile / quality.json, and a
generated model card.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import GgtoolError

ALLOW_PATTERNS = ["config.json", "README.md", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.json", "chat_template.jinja", "*.tiktoken",
                  "vocab.json", "merges.txt"]
REPO_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
PUBLISH_PATTERNS = ("*.gguf", "Modelfile", "quality.json", "model.yaml", "imatrix*.gguf", "plan*.json")


def parse_repo_spec(spec: str) -> tuple[str, str | None] | None:
    """("org/name", revision or None) when `spec` is a Hub repo id, else None."""
    m = REPO_SPEC.match(spec)
    return (m["repo"], m["rev"]) if m else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(spec: str) -> Path:
    """The snapshot folder of a Hub repo with the files conversion needs (downloaded unless cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    parsed = parse_repo_spec(spec)
    if parsed is None:
        raise GgtoolError(f"{spec}: neither a folder nor a Hub repo id (org/name[@revision])")
    repo, rev = parsed
    try:
        folder = Path(snapshot_download(repo, revision=rev, allow_patterns=ALLOW_PATTERNS,
                                        cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                        local_files_only=_offline()))
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise GgtoolError(f"{spec}: no such folder, and not in the local Hugging Face cache with the Hub unreachable "
                          "(offline)", "download it once online, or unset HF_HUB_OFFLINE") from None
    except GatedRepoError:
        raise GgtoolError(f"{spec}: gated repo", "accept its terms on the Hub and log in (`hf auth login`)") from None
    except RevisionNotFoundError:
        raise GgtoolError(f"{spec}: no revision {rev!r}") from None
    except RepositoryNotFoundError:
        raise GgtoolError(f"{spec}: no such folder, and no such Hub repo (or it is private)") from None
    check_snapshot(folder, spec)
    return folder


def check_snapshot(folder: Path, spec: str) -> None:
    """Refuse a snapshot that lacks a file conversion needs, or whose model only its own remote code defines."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GgtoolError(f"{spec}: has no config.json", "ggtool converts transformers-style checkpoints")
    config = json.loads(config_path.read_text())
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    missing = [s for s in shards if not (folder / s).is_file()]
    if not shards and not list(folder.glob("*.safetensors")):
        missing = ["*.safetensors"]
    if missing:
        raise GgtoolError(f"{spec}: missing {', '.join(missing)}",
                          "the repo has no safetensors weights (pickle .bin files are refused), or the download "
                          "was interrupted: run again online")
    if "auto_map" in config:
        from .checkpoint import Checkpoint
        from .families import detect

        try:
            detect(Checkpoint(folder))
        except GgtoolError:
            kind = config.get("model_type") or config.get("architectures") or "?"
            raise GgtoolError(f"{spec}: model type {kind} is defined by the repo's own Python code "
                              f"(auto_map: {', '.join(config['auto_map'])}); ggtool never runs remote code "
                              "and has no converter for it", "supported: OLMoE, neo-3/Mixtral, SSMoELM, Metis"
                              ) from None


@contextlib.contextmanager
def hub_source(spec: str) -> Iterator[Path]:
    """A folder named after the repo whose files link to the cached snapshot (so the GGUF's general.name is the
    repo's name, not a revision hash); removed afterwards. The cache itself is never modified."""
    snapshot = download(spec)
    name = parse_repo_spec(spec)[0].split("/")[1]
    tmp = Path(tempfile.mkdtemp(prefix="ggtool-hub-"))
    try:
        folder = tmp / name
        folder.mkdir()
        for f in snapshot.iterdir():
            (folder / f.name).symlink_to(f.resolve())
        yield folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- publish ---------------------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _quant_tag(file: str, quality: dict | None) -> str:
    """The tag `ollama run hf.co/REPO:TAG` selects a file by (its quantization type)."""
    for v in (quality or {}).get("variants", []):
        if v["file"] == file:
            return v["type"]
    m = re.search(r"(?i)(I?Q\d[\w]*?|BF16|F16|F32)(?=\.gguf$)", file)
    return m.group(1).upper() if m else "latest"


def model_card(folder: Path, repo: str, recommendations: list[tuple[str, str]] | None = None) -> str:
    """The README.md model card: quant table (from quality.json when present), recommended variant per memory
    budget (`recommendations`: (budget label, variant file) pairs, e.g. from the planner), usage."""
    folder = Path(folder)
    ggufs = sorted(p for p in folder.glob("*.gguf") if not p.name.startswith("imatrix"))
    quality_path = folder / "quality.json"
    quality = json.loads(quality_path.read_text()) if quality_path.is_file() else None
    name = repo.split("/")[1]
    lines = ["---", "library_name: gguf", "tags:", "- gguf", "- llama.cpp", "- ollama", "- lmstudio", "- moe", "---",
             "", f"# {name}", "", "GGUF files for llama.cpp, Ollama and LM Studio, made with ggtool.", ""]
    lines += ["## Files", ""]
    if quality:
        lines += [f"Quality against `{quality['base']}` on {quality['n_tokens']} tokens of {quality['text']}: "
                  "KL divergence of each variant's next-token distribution from the base's (lower is better).", "",
                  "| file | type | size | bits/weight | KL mean | KL p99 | top-1 agreement | perplexity |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in quality["variants"]:
            lines.append(f"| `{v['file']}` | {v['type']} | {_size(v['size_bytes'])} | {v['bpw']:.2f} | "
                         f"{v['kl_mean']:.4f} | {v['kl_p99']:.4f} | {100 * v['top1']:.1f}% | {v['ppl']:.3f} |")
    else:
        lines += ["| file | size |", "|---|---|"] + [f"| `{p.name}` | {_size(p.stat().st_size)} |" for p in ggufs]
    if recommendations:
        lines += ["", "## Which file for your memory", "", "| memory budget | recommended file |", "|---|---|"]
        lines += [f"| {budget} | `{file}` |" for budget, file in recommendations]
    example = (recommendations[0][1] if recommendations else
               (quality["variants"][0]["file"] if quality and quality["variants"] else
                (ggufs[0].name if ggufs else "MODEL.gguf")))
    lines += ["", "## Usage", "", "llama.cpp:", "", "```sh",
              f"llama-cli -hf {repo} --hf-file {example} -cnv", "```", "", "Ollama:", "", "```sh",
              f"ollama run hf.co/{repo}:{_quant_tag(example, quality)}", "```"]
    if (folder / "Modelfile").is_file():
        lines += ["", "or, with the Modelfile in this repo (its TEMPLATE reproduces the chat template exactly):", "",
                  "```sh", f"huggingface-cli download {repo} {example} Modelfile --local-dir .",
                  f"ollama create {name.lower()} -f Modelfile", "```"]
    lines += ["", "LM Studio: `lms get` this repo, or `ggtool export lmstudio FILE.gguf --publisher P --model M`.", ""]
    return "\n".join(lines)


@dataclass
class PublishResult:
    repo: str
    files: list[str]
    card: str
    warnings: list[str] = field(default_factory=list)


def check_templates(ggufs: list[Path], force: bool) -> list[str]:
    """Every distinct chat template among `ggufs` through the engines users run (refused unless `force`)."""
    from .ollama import read_gguf_chat
    from .template_check import ENGINES, check_template, enforce

    seen: dict[tuple, list[str]] = {}
    out: list[str] = []
    for path in ggufs:
        if path.name.startswith("imatrix"):
            continue
        try:
            chat = read_gguf_chat(path)
        except GgtoolError:  # not a GGUF ggtool can read: no template to check (the upload is not about it)
            continue
        if not chat.template:
            continue
        key = (chat.template, chat.bos, chat.eos)
        if key not in seen:
            seen[key] = enforce(check_template(chat.template, chat.bos, chat.eos), str(path), ENGINES, force)
            out += seen[key]
    return out


def publish(folder: Path, repo: str, *, api=None, private: bool = False, dry_run: bool = False,  # noqa: ANN001
            recommendations: list[tuple[str, str]] | None = None, force: bool = False) -> PublishResult:
    """Upload the ladder in `folder` (*.gguf, Modelfile, quality.json...) and a generated README.md to `repo`,
    in one commit. `api`: a huggingface_hub.HfApi (or a stand-in with create_repo / create_commit)."""
    folder = Path(folder)
    if parse_repo_spec(repo) is None or "@" in repo:
        raise GgtoolError(f"--repo {repo}: not a Hub repo id (org/name)")
    if not folder.is_dir():
        raise GgtoolError(f"{folder}: no such folder")
    files = sorted({p for pat in PUBLISH_PATTERNS for p in folder.glob(pat) if p.is_file()})
    if not any(p.suffix == ".gguf" for p in files):
        raise GgtoolError(f"{folder}: no .gguf files to publish", "run `ggtool ladder` or `ggtool quantize` first")
    if recommendations is None:  # the planner's answer for the card's standard budgets
        from .plan.search import recommend

        recommendations = recommend([p for p in files if p.suffix == ".gguf" and not p.name.startswith("imatrix")])
    unknown = [f for _, f in recommendations or [] if not (folder / f).is_file()]
    if unknown:
        raise GgtoolError(f"recommended file(s) not in {folder}: {', '.join(unknown)}")
    warnings = check_templates([p for p in files if p.suffix == ".gguf"], force)
    card = model_card(folder, repo, recommendations)
    if dry_run:
        from .outputs import atomic_output

        readme = folder / "README.md"
        if readme.is_file() and "ggtool" not in readme.read_text(encoding="utf-8", errors="replace"):
            raise GgtoolError(f"{readme}: exists and is not a model card ggtool wrote",
                              "move it away; publish --dry-run writes the card there")
        with atomic_output(readme) as tmp:
            tmp.write_text(card, encoding="utf-8")
        return PublishResult(repo, [p.name for p in files], str(folder / "README.md"), warnings)
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    api.create_commit(repo, operations=ops, commit_message=f"ggtool publish: {len(files)} files",
                      repo_type="model")
    return PublishResult(repo, [p.name for p in files] + ["README.md"], "README.md", warnings)
