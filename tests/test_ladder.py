"""ggtool ladder: convert → imatrix → variants → quality, and skipping what is up to date."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ggtool import fixtures
from ggtool.ladder import ladder

from .conftest import run_cli

TYPES = ["IQ2_M", "Q4_K_M"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("texts")
    (folder / "calibration.txt").write_text(fixtures.stdlib_text(60, 12_000))
    (folder / "heldout.txt").write_text(fixtures.heldout_text(6_000))
    return folder / "calibration.txt", folder / "heldout.txt"


def run(src: Path, out: Path, texts: tuple[Path, Path]):
    return ladder(src, out, TYPES, calibration=[texts[0]], heldout=texts[1], conversations=None,
                  chunk_size=64, eval_ctx=64)


@pytest.fixture(scope="module")
def made(olmoe_checkpoint, texts, tmp_path_factory):
    """One ladder, made from scratch."""
    out = tmp_path_factory.mktemp("made") / "ladder"
    return out, run(olmoe_checkpoint, out, texts)


def test_ladder_makes_every_output_then_skips_them_all(olmoe_checkpoint, texts, made):
    out, first = made
    assert [s.name for s in first.steps] == ["convert", "imatrix", "quantize IQ2_M", "quantize Q4_K_M", "eval"]
    assert all(s.made for s in first.steps)
    names = sorted(p.name for p in out.glob("*.gguf"))
    # llama.cpp's naming: <Basename>-<SizeLabel>-<TYPE>.gguf, the basename from the folder name
    assert names == sorted(["Olmoe-Tiny-8x3.2M-F16.gguf", "Olmoe-Tiny-8x3.2M-IQ2_M.gguf",
                            "Olmoe-Tiny-8x3.2M-Q4_K_M.gguf", "imatrix.gguf"]), names
    quality = json.loads((out / "quality.json").read_text())
    assert [v["type"] for v in quality["variants"]] == TYPES
    iq2, q4 = quality["variants"]
    assert iq2["bpw"] < q4["bpw"] and iq2["kl_mean"] > q4["kl_mean"] > 0

    second = run(olmoe_checkpoint, out, texts)
    assert not any(s.made for s in second.steps)
    assert [v.kl_mean for v in second.report.variants] == [v["kl_mean"] for v in quality["variants"]]


def test_ladder_redoes_what_depends_on_a_changed_input(olmoe_checkpoint, texts, made, tmp_path):
    out = tmp_path / "ladder"
    shutil.copytree(made[0], out)  # copy2 keeps modification times, so the copy is up to date
    imatrix = out / "imatrix.gguf"
    st = imatrix.stat()
    os.utime(imatrix, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a re-made importance matrix
    again = run(olmoe_checkpoint, out, texts)
    made = {s.name: s.made for s in again.steps}
    assert made == {"convert": False, "imatrix": True, "quantize IQ2_M": True, "quantize Q4_K_M": True, "eval": True}


def test_ladder_refuses_unknown_type_before_doing_anything(olmoe_checkpoint, tmp_path):
    r = run_cli("ladder", olmoe_checkpoint, "-o", tmp_path / "ladder", "--types", "IQ2_M,Q9_Z")
    assert r.returncode == 1
    assert "Q9_Z" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ladder").exists()
