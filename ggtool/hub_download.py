"""Checkpoints from the Hugging Face Hub: `convert org/name[@revision]`.

Only the files conversion reads are fetched (allow_patterns), through huggingface_hub's cache, so a second
conversion downloads nothing and HF_HUB_OFFLINE=1 works from the cache alone. Nothing from the repo is ever
executed: a config.json whose model needs its own code (auto_map) and that no ggtool family converts is
refused by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)

from .checkpoint import Checkpoint
from .errors import GgtoolError
from .families import detect, supported

ALLOW_PATTERNS = ["config.json", "README.md", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.json", "chat_template.jinja", "*.tiktoken",
                  "vocab.json", "merges.txt"]
REPO_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def parse_repo_spec(spec: str) -> tuple[str, str | None] | None:
    """("org/name", revision or None) when `spec` is a Hub repo id, else None."""
    m = REPO_SPEC.match(spec)
    return (m["repo"], m["rev"]) if m else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(spec: str) -> Path:
    """The snapshot folder of a Hub repo with the files conversion needs (downloaded unless cached)."""
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
        try:
            detect(Checkpoint(folder))
        except GgtoolError:
            kind = config.get("model_type") or config.get("architectures") or "?"
            raise GgtoolError(f"{spec}: model type {kind} is defined by the repo's own Python code "
                              f"(auto_map: {', '.join(config['auto_map'])}); ggtool never runs remote code "
                              "and has no converter for it", f"supported families: {supported()}") from None


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
