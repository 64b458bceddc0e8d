"""Tokenizer conversion: identical ids through llama.cpp, pre-tokenizer chosen from the definition."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from ggtool import fixtures
from ggtool.convert import convert
from ggtool.errors import GgtoolError
from ggtool.llama.model import LlamaModel
from ggtool.pre_tokenizers import LLAMA_PRE_TOKENIZERS, definition
from ggtool.pre_tokenizers import LLAMA3_SPLIT
from ggtool.vocab import choose_pre_tokenizer, normal_form


def test_bpe_ids_match_hf_tokenizers_on_heldout_text(olmoe_checkpoint, tmp_path):
    out = tmp_path / "tok.gguf"
    convert(olmoe_checkpoint, out, "f16")
    hf = Tokenizer.from_file(str(olmoe_checkpoint / "tokenizer.json"))
    assert hf.get_vocab_size() >= 4000
    text = fixtures.heldout_text(60_000)
    assert len(text) >= 50_000
    for needle in ("def ", "München", "日本語", "🚀", "        ", "\n\n\n", "\t"):
        assert needle in text
    assert sum(ch.isdigit() for ch in text) > 1000
    expected = hf.encode(text, add_special_tokens=False).ids
    with LlamaModel(out, vocab_only=True) as m:
        got = m.tokenize(text)
        assert m.detokenize(got) == text
    assert len(got) == len(expected) > 10_000
    assert got == expected


def _pre(**pre_tokenizer) -> dict:
    return {"model": {"type": "BPE", "ignore_merges": pre_tokenizer.pop("ignore_merges", False)},
            "normalizer": pre_tokenizer.pop("normalizer", None), "pre_tokenizer": pre_tokenizer or None}


def test_pre_tokenizer_chosen_from_definition():
    assert choose_pre_tokenizer(_pre(type="ByteLevel", use_regex=True), "t").name == "gpt-2"
    seq = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                 {"type": "ByteLevel", "use_regex": True}]}
    assert choose_pre_tokenizer(_pre(**seq), "t").name == "starcoder"
    seq = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": False}]}
    assert choose_pre_tokenizer(_pre(ignore_merges=True, **seq), "t").name == "llama-bpe"


@pytest.mark.parametrize("definition,needle", [
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,2}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": True}]}, r"\p{N}{1,2}"),
    ({"type": "Whitespace"}, "Whitespace"),
    ({"type": "ByteLevel", "use_regex": True, "add_prefix_space": True}, "add_prefix_space"),
    # normalizers that change ordinary text stay refused, with what they do
    ({"type": "ByteLevel", "use_regex": True, "normalizer": {"type": "Lowercase"}}, "Lowercase lowercases"),
    ({"type": "ByteLevel", "use_regex": True, "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "NFC"}, {"type": "StripAccents"}]}}, "StripAccents removes accents"),
    ({"type": "ByteLevel", "use_regex": True, "normalizer": {"type": "NFD"}}, "NFD decomposes"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Punctuation", "behavior": "Removed"},
                                            {"type": "ByteLevel", "use_regex": True}]}, "behavior=Removed"),
])
def test_unreproducible_pre_tokenizer_is_refused_naming_the_rule(definition, needle):
    with pytest.raises(GgtoolError) as e:
        choose_pre_tokenizer(_pre(**definition), "tokenizer.json")
    assert needle in str(e.value)


def test_unknown_pre_tokenizer_refused_at_convert(olmoe_checkpoint, tmp_path):
    import shutil

    from .conftest import run_cli

    src = tmp_path / "ckpt"
    shutil.copytree(olmoe_checkpoint, src)
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,5}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    out = tmp_path / "x.gguf"
    r = run_cli("convert", src, "-o", out)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r"\p{N}{1,5}" in r.stderr and not out.exists()


def test_every_table_entry_is_chosen_from_its_own_definition():
    names = set()
    for pre in LLAMA_PRE_TOKENIZERS:
        tj = {"model": {"type": "BPE", "ignore_merges": pre.ignore_merges}, "pre_tokenizer": definition(pre),
              "normalizer": {"type": pre.normal_form} if pre.normal_form else None}
        assert choose_pre_tokenizer(tj, "t") == pre
        names.add(pre.name)
    assert len(names) == len(LLAMA_PRE_TOKENIZERS) >= 27
    # equal rules: the converter's name for the reference model's normalizer, else the first
    gpt2 = {"type": "ByteLevel", "use_regex": True}
    assert choose_pre_tokenizer(_pre(normalizer={"type": "NFC"}, **gpt2), "t").name == "olmo"
    assert choose_pre_tokenizer(_pre(normalizer={"type": "NFKC"}, **gpt2), "t").name == "gpt-2"
    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "use_regex": False}]}
    assert choose_pre_tokenizer(_pre(ignore_merges=False, **llama3), "t").name == "dbrx"


def test_unicode_normal_forms_are_accepted_also_in_a_sequence():
    assert normal_form(None, "t") is None
    assert normal_form({"type": "NFC"}, "t") == "NFC"
    assert normal_form({"type": "Sequence", "normalizers": [{"type": "NFKC"}]}, "t") == "NFKC"
    assert normal_form({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "NFKC"}]}, "t") == "NFKC"
    assert normal_form({"type": "Sequence", "normalizers": []}, "t") is None


def test_template_sources_as_transformers_reads_them(olmoe_checkpoint, tmp_path):
    import shutil

    import gguf

    from ggtool.convert import convert

    src = tmp_path / "ckpt"
    shutil.copytree(olmoe_checkpoint, src)
    tc = json.loads((src / "tokenizer_config.json").read_text())
    assert tc["chat_template"]  # the tokenizer_config source is there too
    (src / "chat_template.jinja").write_text("{{ 'FROM-JINJA-FILE' }}")
    (src / "additional_chat_templates").mkdir()
    (src / "additional_chat_templates" / "tool_use.jinja").write_text("{{ 'TOOL-USE' }}")
    (src / "additional_chat_templates" / "rag.jinja").write_text("{{ 'RAG' }}")
    out = tmp_path / "t.gguf"
    convert(src, out, "f16")
    r = gguf.GGUFReader(out)
    assert r.get_field("tokenizer.chat_template").contents() == "{{ 'FROM-JINJA-FILE' }}"
    assert r.get_field("tokenizer.chat_template.tool_use").contents() == "{{ 'TOOL-USE' }}"
    assert r.get_field("tokenizer.chat_template.rag").contents() == "{{ 'RAG' }}"
    assert sorted(r.get_field("tokenizer.chat_templates").contents()) == ["rag", "tool_use"]
