"""`ggtool export lmstudio`: layout, model.yaml, refusals; the placed files load in llama.cpp with their template."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import pytest
import yaml

from ggtool.errors import GgtoolError
from ggtool.lmstudio import OWNED, export
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def variants(olmoe_checkpoint, tmp_path_factory) -> list[Path]:
    """Two variants (f16, q8_0) of the tiny OLMoE, converted once."""
    from ggtool.convert import convert

    folder = tmp_path_factory.mktemp("lms-src")
    out = []
    for t in ("f16", "q8_0"):
        convert(olmoe_checkpoint, folder / f"olmoe-tiny-{t}.gguf", t)
        out.append(folder / f"olmoe-tiny-{t}.gguf")
    return out


def test_layout_and_model_yaml(variants, tmp_path):
    r = run_cli("export", "lmstudio", *variants, "--publisher", "ggtool", "--model", "OLMoE-tiny-GGUF",
                "--root", tmp_path)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "ggtool" / "OLMoE-tiny-GGUF"
    assert sorted(p.name for p in folder.iterdir() if p.name != OWNED) == ["model.yaml", "olmoe-tiny-f16.gguf",
                                                                        "olmoe-tiny-q8_0.gguf"]
    assert not [p for p in (tmp_path / "ggtool").iterdir() if p.name.startswith(".")]  # no leftovers
    for v in variants:  # hard links by default: same file, no second copy of the bytes
        assert os.path.samefile(folder / v.name, v)
    doc = yaml.safe_load((folder / "model.yaml").read_text())
    assert doc["model"] == "ggtool/OLMoE-tiny-GGUF"
    assert [b["sources"][0]["path"] for b in doc["base"]] == ["olmoe-tiny-f16.gguf", "olmoe-tiny-q8_0.gguf"]
    text = (folder / "model.yaml").read_text()
    assert "#   olmoe-tiny-f16.gguf: F16," in text and "#   olmoe-tiny-q8_0.gguf: Q8_0," in text
    meta = doc["metadataOverrides"]
    assert meta["architectures"] == ["olmoe"] and meta["compatibilityTypes"] == ["gguf"]
    ctx = gguf.GGUFReader(variants[0]).get_field("olmoe.context_length").contents()
    assert meta["contextLengths"] == [ctx]
    assert meta["minMemoryUsageBytes"] == min(v.stat().st_size for v in variants)


def test_copy_mode_and_replacing_an_export(variants, tmp_path):
    export(variants[:1], "p", "m", tmp_path, link=False)
    placed = tmp_path / "p" / "m" / variants[0].name
    assert not os.path.samefile(placed, variants[0]) and placed.read_bytes() == variants[0].read_bytes()
    export(variants[1:], "p", "m", tmp_path, link=True)  # a second export replaces the first one's files
    placed = sorted(p.name for p in (tmp_path / "p" / "m").iterdir() if p.name != OWNED)
    assert placed == ["model.yaml", variants[1].name]


def test_exported_files_load_and_chat_in_llama_cpp(variants, tmp_path):
    from ggtool.llama.model import LlamaModel
    from ggtool.run import complete
    from ggtool.templates import render_chat

    res = export(variants, "ggtool", "tiny", tmp_path)
    for f in res.files:
        with LlamaModel(f) as m:
            template = m.meta("tokenizer.chat_template")
            assert template and "<|assistant|>" in template
        c = complete(f, "Hello there", max_tokens=4, chat=True)
        assert c.prompt == render_chat(template, [{"role": "user", "content": "Hello there"}],
                                       bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        assert c.prompt.endswith("<|assistant|>\n") and c.n_tokens >= 1


def _without_key(src: Path, dst: Path, drop: str) -> Path:
    """A copy of a GGUF without one metadata key (gguf-py writer, tensors copied as they are)."""
    r = gguf.GGUFReader(src)
    arch = r.get_field("general.architecture").contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in (drop, "general.architecture"):
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), vtype)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize("key, message", [("tokenizer.chat_template", "tokenizer.chat_template"),
                                          ("general.name", "general.name")])
def test_missing_metadata_is_refused_and_nothing_is_placed(variants, tmp_path, key, message):
    bad = _without_key(variants[0], tmp_path / "bad.gguf", key)
    with pytest.raises(GgtoolError, match=message):
        export([variants[1], bad], "p", "m", tmp_path / "root")
    assert not (tmp_path / "root" / "p" / "m").exists()


def test_cli_refusals_are_one_line(variants, tmp_path):
    r = run_cli("export", "lmstudio", variants[0], "--publisher", "../evil", "--model", "m", "--root", tmp_path)
    assert r.returncode == 1 and "one folder name" in r.stderr and "Traceback" not in r.stderr
    assert json.dumps(sorted(os.listdir(tmp_path))) == "[]"
