"""Shared fixtures: tokenizers trained at test time, tiny checkpoints, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ggtool import fixtures

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """Run `ggtool ARGS` in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "ggtool.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory) -> Path:
    """A byte-level BPE (vocab 4096) trained on the standard library's sources."""
    return fixtures.train_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="session")
def olmoe_checkpoint(tmp_path_factory, bpe_tokenizer) -> Path:
    """A random OLMoE (hidden 256, 8 experts, top-2, norm_topk_prob=false) with its tokenizer."""
    return fixtures.make_olmoe(tmp_path_factory.mktemp("olmoe") / "olmoe-tiny", bpe_tokenizer, layers=3)


@pytest.fixture(scope="session")
def olmoe_gguf(tmp_path_factory, olmoe_checkpoint) -> Path:
    """olmoe_checkpoint converted to an F16 GGUF (for imatrix, quantize and eval tests)."""
    from ggtool.convert import convert

    return convert(olmoe_checkpoint, tmp_path_factory.mktemp("olmoe-gguf") / "olmoe-f16.gguf", "f16").dest


@pytest.fixture(scope="session")
def olmoe_imatrix(tmp_path_factory, olmoe_gguf) -> Path:
    """An importance matrix of olmoe_gguf from 4 chunks of 128 tokens of standard-library source."""
    from ggtool.imatrix import collect

    folder = tmp_path_factory.mktemp("olmoe-imatrix")
    text = folder / "calibration.txt"
    text.write_text(fixtures.stdlib_text(20, 40_000))
    collect(olmoe_gguf, [text], folder / "imatrix.gguf", chunk_size=128, max_chunks=4, n_threads=1)
    return folder / "imatrix.gguf"
