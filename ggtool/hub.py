"""`ggtool publish DIR --repo org/name`: one commit to the Hugging Face Hub with the GGUF ladder, its
Modelfile / quality.json, and a generated model card (downloads for `convert` are in hub_download.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import gguf
import yaml
from huggingface_hub import CommitOperationAdd, HfApi

from .errors import GgtoolError
from .gguf_in import read_gguf_chat, read_header
from .hub_download import parse_repo_spec
from .outputs import atomic_output
from .plan.search import recommend
from .template_check import ENGINES, check_template, enforce
from .templates import render_chat
from .units import size_text

PUBLISH_PATTERNS = ("*.gguf", "Modelfile", "quality.json", "model.yaml", "imatrix*.gguf", "plan*.json")


# -- publish ---------------------------------------------------------------------------------------

def _quant_tag(file: str, quality: dict | None) -> str:
    """The tag `ollama run hf.co/REPO:TAG` selects a file by (its quantization type)."""
    for v in (quality or {}).get("variants", []):
        if v["file"] == file:
            return v["type"]
    m = re.search(r"(?i)(I?Q\d[\w]*?|BF16|F16|F32)(?=\.gguf$)", file)
    return m.group(1).upper() if m else "latest"


@dataclass
class CardFacts:
    """What the GGUFs of a ladder say about themselves, for the card's front matter and sections."""

    arch: str | None = None
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    source_repo: str | None = None  # the Hub repo id the files were converted from, when recorded
    quantized_by: str | None = None
    chat_template: str | None = None
    bos: str = ""
    eos: str = ""
    imatrix: dict = field(default_factory=dict)  # dataset, chunks, file (llama-quantize's quantize.imatrix.*)


def _hub_repo_id(url: str | None) -> str | None:
    m = re.fullmatch(r"(?:https?://huggingface\.co/)?([A-Za-z0-9][\w.-]*/[\w.-]+)/?", url or "")
    return m.group(1) if m else None


def card_facts(ggufs: list[Path]) -> CardFacts:
    """The card's facts from the GGUF headers (files that are not readable GGUFs contribute nothing)."""
    facts = CardFacts()
    G = gguf.Keys.General
    for path in ggufs:
        try:
            h = read_header(path)
        except GgtoolError:
            continue
        facts.arch = facts.arch or h.get(G.ARCHITECTURE)
        facts.license = facts.license or h.get(G.LICENSE)
        facts.license_name = facts.license_name or h.get(G.LICENSE_NAME)
        facts.license_link = facts.license_link or h.get(G.LICENSE_LINK)
        facts.source_repo = facts.source_repo or _hub_repo_id(h.get(G.SOURCE_REPO_URL)) or \
            _hub_repo_id(h.get("general.source.huggingface.repository"))
        facts.quantized_by = facts.quantized_by or h.get(G.QUANTIZED_BY)
        if h.get("quantize.imatrix.file") and not facts.imatrix:
            facts.imatrix = {"dataset": h.get("quantize.imatrix.dataset"),
                             "chunks": h.get("quantize.imatrix.chunks_count"), "file": h.get("quantize.imatrix.file")}
        if facts.chat_template is None and h.get("tokenizer.chat_template"):
            chat = read_gguf_chat(path)
            facts.chat_template, facts.bos, facts.eos = chat.template, chat.bos, chat.eos
    return facts


def prompt_format(template: str, bos: str, eos: str) -> str | None:
    """The chat template rendered on a placeholder conversation (system, user, generation prompt)."""
    for msgs in ([{"role": "system", "content": "{system_prompt}"}, {"role": "user", "content": "{prompt}"}],
                 [{"role": "user", "content": "{prompt}"}]):
        try:
            return render_chat(template, msgs, bos_token=bos, eos_token=eos, add_generation_prompt=True)
        except GgtoolError:
            continue
    return None


def llama_cpp_version() -> str:
    """The llama.cpp ggtool runs: the one vendored by the pinned llama-cpp-python."""
    try:
        return f"llama.cpp as vendored by llama-cpp-python {version('llama_cpp_python')}"
    except PackageNotFoundError:
        return "llama.cpp (llama-cpp-python not installed)"


def model_card(folder: Path, repo: str, recommendations: list[tuple[str, str]] | None = None, *,
               base_model: str | None = None, quantized_by: str | None = None) -> str:
    """The README.md model card: Hub front matter (base_model with base_model_relation: quantized, license,
    quantized_by, pipeline_tag, tags), prompt format, how the files were made (llama.cpp, importance matrix),
    quant table (from quality.json when present), recommended variant per memory budget (`recommendations`:
    (budget label, variant file) pairs, e.g. from the planner), usage."""
    folder = Path(folder)
    ggufs = sorted(p for p in folder.glob("*.gguf") if not p.name.startswith("imatrix"))
    quality_path = folder / "quality.json"
    quality = json.loads(quality_path.read_text()) if quality_path.is_file() else None
    name = repo.split("/")[1]
    facts = card_facts(ggufs)
    base = base_model or facts.source_repo
    front: dict = {"library_name": "gguf"}
    if base:
        front["base_model"] = base
        front["base_model_relation"] = "quantized"
    if facts.license:
        front["license"] = facts.license
        if facts.license_name:
            front["license_name"] = facts.license_name
        if facts.license_link:
            front["license_link"] = facts.license_link
    front["quantized_by"] = quantized_by or facts.quantized_by or repo.split("/")[0]
    front["pipeline_tag"] = "text-generation"
    tags = ["gguf", "llama.cpp", "ollama", "lmstudio", "moe"]
    if facts.imatrix:
        tags.append("imatrix")
    if facts.arch and facts.arch not in tags:
        tags.append(facts.arch)
    front["tags"] = tags
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", "", f"# {name}", ""]
    made = f"GGUF files of [{base}](https://huggingface.co/{base})" if base else "GGUF files"
    lines += [f"{made} for llama.cpp, Ollama and LM Studio, made with ggtool ({llama_cpp_version()}).", ""]
    fmt = prompt_format(facts.chat_template, facts.bos, facts.eos) if facts.chat_template else None
    if fmt is not None:
        lines += ["## Prompt format", "", "The GGUF's chat template (`tokenizer.chat_template`) makes:", "", "```",
                  fmt.rstrip("\n"), "```", ""]
    lines += ["## How the files were made", "", f"- quantized with {llama_cpp_version()}"]
    if facts.imatrix:
        im = facts.imatrix
        data = Path(str(im["dataset"])).name if im.get("dataset") else "calibration text"  # no local paths
        chunks = f", {im['chunks']} chunks" if im.get("chunks") else ""
        lines.append(f"- importance matrix from `{data}`{chunks} (file `{Path(str(im.get('file'))).name}`)")
    if quality:
        lines.append(f"- quality measured against `{quality['base']}` on {quality['n_tokens']} tokens of "
                     f"`{quality['text']}`")
    lines += ["", "## Files", ""]
    if quality:
        lines += [f"Quality against `{quality['base']}` on {quality['n_tokens']} tokens of {quality['text']}: "
                  "KL divergence of each variant's next-token distribution from the base's (lower is better).", "",
                  "| file | type | size | bits/weight | KL mean | KL p99 | top-1 agreement | perplexity |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in quality["variants"]:
            lines.append(f"| `{v['file']}` | {v['type']} | {size_text(v['size_bytes'])} | {v['bpw']:.2f} | "
                         f"{v['kl_mean']:.4f} | {v['kl_p99']:.4f} | {100 * v['top1']:.1f}% | {v['ppl']:.3f} |")
    else:
        lines += ["| file | size |", "|---|---|"] + [f"| `{p.name}` | {size_text(p.stat().st_size)} |" for p in ggufs]
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
        lines += ["", "or, with the Modelfile in this repo (for Ollama >= 0.30; see its comments for the template "
                  "and placement choices):", "",
                  "```sh", f"huggingface-cli download {repo} {example} Modelfile --local-dir .",
                  f"ollama create {name.lower()} -f Modelfile", "```"]
    lines += ["", "LM Studio: `lms get` this repo, or `ggtool export lmstudio FILE.gguf --publisher P --model M "
              f"--hub-repo {repo}`.", ""]
    return "\n".join(lines)


@dataclass
class PublishResult:
    repo: str
    files: list[str]
    card: str
    warnings: list[str] = field(default_factory=list)


def check_templates(ggufs: list[Path], force: bool) -> list[str]:
    """Every distinct chat template among `ggufs` through the engines users run (refused unless `force`)."""
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
            recommendations: list[tuple[str, str]] | None = None, force: bool = False,
            base_model: str | None = None, quantized_by: str | None = None) -> PublishResult:
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

        recommendations = recommend([p for p in files if p.suffix == ".gguf" and not p.name.startswith("imatrix")])
    unknown = [f for _, f in recommendations or [] if not (folder / f).is_file()]
    if unknown:
        raise GgtoolError(f"recommended file(s) not in {folder}: {', '.join(unknown)}")
    if base_model is not None and (parse_repo_spec(base_model) is None or "@" in base_model):
        raise GgtoolError(f"--base-model {base_model}: not a Hub repo id (org/name)")
    warnings = check_templates([p for p in files if p.suffix == ".gguf"], force)
    card = model_card(folder, repo, recommendations, base_model=base_model, quantized_by=quantized_by)
    if dry_run:
        readme = folder / "README.md"
        if readme.is_file() and "ggtool" not in readme.read_text(encoding="utf-8", errors="replace"):
            raise GgtoolError(f"{readme}: exists and is not a model card ggtool wrote",
                              "move it away; publish --dry-run writes the card there")
        with atomic_output(readme) as tmp:
            tmp.write_text(card, encoding="utf-8")
        return PublishResult(repo, [p.name for p in files], str(folder / "README.md"), warnings)

    api = api or HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    api.create_commit(repo, operations=ops, commit_message=f"ggtool publish: {len(files)} files",
                      repo_type="model")
    return PublishResult(repo, [p.name for p in files] + ["README.md"], "README.md", warnings)
