"""Tokenizers behind a Unicode normal form (OLMoE's tokenizer.json has NFC): converted with one warning, recorded,
identical ids on text in that form, and the difference on other text reported by verify as known."""

from __future__ import annotations

import json
import shutil
import unicodedata

import pytest
from tokenizers import Tokenizer

from ggtool import fixtures
from ggtool.gguf_in import read_header
from ggtool.llama.model import LlamaModel

from .conftest import run_cli


@pytest.fixture(scope="module")
def nfc_olmoe(tmp_path_factory, bpe_tokenizer):
    """An OLMoE whose tokenizer.json carries OLMoE's `"normalizer": {"type": "NFC"}`."""
    tok = tmp_path_factory.mktemp("nfc-tok")
    shutil.copytree(bpe_tokenizer, tok, dirs_exist_ok=True)
    tj = json.loads((tok / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "NFC"}
    (tok / "tokenizer.json").write_text(json.dumps(tj))
    return fixtures.make_olmoe(tmp_path_factory.mktemp("nfc-olmoe") / "olmoe-nfc", tok, hidden_size=64, layers=1)


@pytest.fixture(scope="module")
def nfc_gguf(tmp_path_factory, nfc_olmoe):
    out = tmp_path_factory.mktemp("nfc-gguf") / "nfc.gguf"
    r = run_cli("convert", nfc_olmoe, "-o", out, "--outtype", "f32")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, r.stderr
    assert "normalizer NFC" in warnings[0] and "decomposed" in warnings[0]
    return out


def test_nfc_is_recorded_and_reported_by_inspect(nfc_gguf):
    assert read_header(nfc_gguf).get("tokenizer.ggml.normalizer") == "NFC"
    assert read_header(nfc_gguf).get("tokenizer.ggml.pre") == "olmo"  # what llama.cpp's converter writes for OLMoE
    r = run_cli("inspect", nfc_gguf, "--no-tensors")
    assert r.returncode == 0 and "tokenizer.ggml.normalizer" in r.stdout
    assert "applies NFC" in r.stdout and "llama.cpp does not" in r.stdout


def test_llama_cpp_ids_equal_hf_ids_on_nfc_text(nfc_olmoe, nfc_gguf):
    text = unicodedata.normalize("NFC", fixtures.heldout_text(60_000))
    assert len(text) >= 50_000 and any(ord(ch) > 0x7F for ch in text)
    hf = Tokenizer.from_file(str(nfc_olmoe / "tokenizer.json"))
    expected = hf.encode(text, add_special_tokens=False).ids
    with LlamaModel(nfc_gguf, vocab_only=True) as m:
        got = m.tokenize(text)
    assert len(got) == len(expected) > 10_000
    assert got == expected


def test_verify_normalizes_its_probe_and_reports_the_known_difference(nfc_olmoe, nfc_gguf):
    r = run_cli("verify", nfc_olmoe, nfc_gguf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify passed" in r.stdout
    assert "NFC-normalized as the tokenizer does" in r.stdout
    assert "known difference:" in r.stdout and "decomposed accents" in r.stdout
