"""`ggtool export lmstudio`: layout, model.yaml, refusals; the placed files load in llama.cpp with their template."""

from __future__ import annotations

import json
import os
import subprocess
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


NODE_PROJECT = Path(__file__).parent / "node" / "lmstudio"


def lmstudio_schema(*paths: Path) -> list[dict]:
    """LM Studio's own verdict on model.yaml files: @lmstudio/lms-shared-types' virtualModelDefinitionSchema under
    Node (tests/node/lmstudio, installed by `make install`)."""
    assert (NODE_PROJECT / "node_modules" / "@lmstudio" / "lms-shared-types").is_dir(), "run `make install`"
    proc = subprocess.run(["node", str(NODE_PROJECT / "validate.mjs"), *map(str, paths)], capture_output=True,
                          text=True)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(paths), proc.stderr
    assert proc.returncode == (0 if all(r["ok"] for r in results) else 1)
    return results


def test_layout_and_model_yaml(variants, tmp_path):
    r = run_cli("export", "lmstudio", *variants, "--publisher", "ggtool", "--model", "OLMoE-tiny-GGUF",
                "--root", tmp_path)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "ggtool" / "OLMoE-tiny-GGUF"
    # local files: the layout alone (model.yaml cannot point at local files), sampling and context in the GGUF
    assert sorted(p.name for p in folder.iterdir() if p.name != OWNED) == ["olmoe-tiny-f16.gguf", "olmoe-tiny-q8_0.gguf"]
    assert "no model.yaml" in r.stdout
    assert not [p for p in (tmp_path / "ggtool").iterdir() if p.name.startswith(".")]  # no leftovers
    for v in variants:  # hard links by default: same file, no second copy of the bytes
        assert os.path.samefile(folder / v.name, v)
    r = run_cli("export", "lmstudio", *variants, "--publisher", "ggtool", "--model", "OLMoE-tiny-GGUF",
                "--root", tmp_path, "--hub-repo", "me/OLMoE-tiny-GGUF")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in folder.iterdir() if p.name != OWNED) == ["model.yaml", "olmoe-tiny-f16.gguf",
                                                                        "olmoe-tiny-q8_0.gguf"]
    [verdict] = lmstudio_schema(folder / "model.yaml")
    assert verdict["ok"], verdict["issues"]
    doc = yaml.safe_load((folder / "model.yaml").read_text())
    assert doc["model"] == "ggtool/OLMoE-tiny-GGUF"
    assert doc["base"] == [{"key": "me/olmoe-tiny-gguf",
                            "sources": [{"type": "huggingface", "user": "me", "repo": "OLMoE-tiny-GGUF"}]}]
    text = (folder / "model.yaml").read_text()
    assert "#   olmoe-tiny-f16.gguf: F16," in text and "#   olmoe-tiny-q8_0.gguf: Q8_0," in text
    meta = doc["metadataOverrides"]
    assert meta["architectures"] == ["olmoe"] and meta["compatibilityTypes"] == ["gguf"]
    ctx = gguf.GGUFReader(variants[0]).get_field("olmoe.context_length").contents()
    assert meta["contextLengths"] == [ctx]
    assert meta["minMemoryUsageBytes"] == min(v.stat().st_size for v in variants)


def test_lmstudio_schema_rejects_what_it_should(tmp_path):
    """The check can fail: the local-source form ggtool used to write, a model id that is not user/repo, a wrong
    metadata type."""
    good = {"model": "me/m", "base": [{"key": "me/m-gguf", "sources": [{"type": "huggingface", "user": "me",
                                                                         "repo": "m-GGUF"}]}]}
    bad = {"local-source": {**good, "base": [{"key": "me/m/x.gguf", "sources": [{"type": "local", "path": "x.gguf"}]}]},
           "model-id": {**good, "model": "m"},
           "context": {**good, "metadataOverrides": {"contextLengths": ["4096"]}}}
    paths = []
    for name, doc in {"good": good, **bad}.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        paths.append(tmp_path / f"{name}.yaml")
    verdicts = lmstudio_schema(*paths)
    assert [v["ok"] for v in verdicts] == [True, False, False, False]
    assert any("base" in i for i in verdicts[1]["issues"]) and any("model" in i for i in verdicts[2]["issues"])


def test_hub_repo_must_be_a_repo_id(variants, tmp_path):
    with pytest.raises(GgtoolError, match="not a Hub repo id"):
        export(variants[:1], "p", "m", tmp_path, hub_repo="not a repo")
    assert not (tmp_path / "p" / "m").exists()


def test_copy_mode_and_replacing_an_export(variants, tmp_path):
    export(variants[:1], "p", "m", tmp_path, link=False)
    placed = tmp_path / "p" / "m" / variants[0].name
    assert not os.path.samefile(placed, variants[0]) and placed.read_bytes() == variants[0].read_bytes()
    export(variants[1:], "p", "m", tmp_path, link=True, hub_repo="p/m-GGUF")  # a second export replaces the first one's files
    assert sorted(p.name for p in (tmp_path / "p" / "m").iterdir() if p.name != OWNED) == ["model.yaml", variants[1].name]
    assert lmstudio_schema(tmp_path / "p" / "m" / "model.yaml")[0]["ok"]


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
