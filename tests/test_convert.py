"""Conversion mechanics: bad input gives one clear line and no output; inputs are never touched; shards stream."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import gguf
import numpy as np
import pytest

from ggtool.convert import convert

from .conftest import run_cli


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _convert_fails(src, out, *needles, extra=()):
    r = run_cli("convert", src, "-o", out, *extra)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr  # one clear line
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    return r.stderr


def test_missing_config(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    (src / "config.json").unlink()
    _convert_fails(src, tmp_path / "o.gguf", "config.json not found")


def test_unknown_architecture_lists_supported_families(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="gpt_bigcode", architectures=["GPTBigCodeForCausalLM"])
    (src / "config.json").write_text(json.dumps(cfg))
    _convert_fails(src, tmp_path / "o.gguf", "GPTBigCodeForCausalLM", "supported families", "OLMoE")


def _rewrite(src, drop=(), change=None):
    from safetensors.numpy import load_file, save_file

    path = src / "model.safetensors"
    tensors = load_file(str(path))
    for name in drop:
        del tensors[name]
    if change:
        tensors.update(change(tensors))
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    _rewrite(src, drop=["model.layers.1.mlp.experts.3.up_proj.weight"])
    _convert_fails(src, tmp_path / "o.gguf", "model.layers.1.mlp.experts.3.up_proj.weight", "missing")


def test_truncated_safetensors(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    path = src / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1000)
    _convert_fails(src, tmp_path / "o.gguf", "model.safetensors", "truncated")


def test_shape_contradicting_config(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    _convert_fails(src, tmp_path / "o.gguf", "gate_proj.weight", "[128, 256]", "[96, 256]")


def test_unknown_tensor_names_are_listed(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    _rewrite(src, change=lambda t: {"model.layers.0.self_attn.q_proj.bias": np.zeros(256, np.float32)})
    _convert_fails(src, tmp_path / "o.gguf", "model.layers.0.self_attn.q_proj.bias")


def test_output_folder_missing(olmoe_checkpoint, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "o.gguf"
    r = run_cli("convert", olmoe_checkpoint, "-o", out)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "output folder does not exist" in r.stderr
    assert not out.parent.exists()


def test_output_path_equal_to_an_input_is_refused(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    target = src / "model.safetensors"
    before = target.read_bytes()
    r = run_cli("convert", src, "-o", target)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "is one of the conversion's inputs" in r.stderr
    assert target.read_bytes() == before


def test_pickle_checkpoints_are_refused(olmoe_checkpoint, tmp_path):
    src = _copy(olmoe_checkpoint, tmp_path / "ckpt")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    _convert_fails(src, tmp_path / "o.gguf", "pickle", "pytorch_model.bin")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_inputs_are_never_modified(olmoe_checkpoint, tmp_path):
    before = _digest(olmoe_checkpoint)
    convert(olmoe_checkpoint, tmp_path / "o.gguf", "q8_0")
    assert _digest(olmoe_checkpoint) == before


def test_sharded_checkpoint_converts_like_single_file(olmoe_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = _copy(olmoe_checkpoint, tmp_path / "sharded")
    tensors = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(src / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert(olmoe_checkpoint, a, "f16")
    convert(src, b, "f16")
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    for ta, tb in zip(ra.tensors, rb.tensors):
        assert np.array_equal(np.array(ta.data), np.array(tb.data)), ta.name


def test_interrupted_conversion_leaves_no_output(tmp_path, bpe_tokenizer):
    """SIGINT in the middle of writing: no file at OUT, no partial file left behind."""
    from ggtool import fixtures

    src = fixtures.make_olmoe(tmp_path / "big", bpe_tokenizer, layers=8, hidden_size=512, intermediate_size=512,
                              experts=16)
    out = tmp_path / "o.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "ggtool.cli", "convert", str(src), "-o", str(out),
                             "--outtype", "q8_0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("conversion finished before the interrupt arrived")
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_inspect_reports_groups(olmoe_checkpoint, tmp_path):
    out = tmp_path / "o.gguf"
    convert(olmoe_checkpoint, out, "f16")
    r = run_cli("inspect", out)
    assert r.returncode == 0, r.stderr
    for needle in ("olmoe.expert_count", "blk.2.ffn_down_exps.weight", "experts", "attention", "router",
                   "embeddings", "output", "bytes per group"):
        assert needle in r.stdout, needle


def test_run_generates_tokens(olmoe_checkpoint, tmp_path):
    out = tmp_path / "o.gguf"
    convert(olmoe_checkpoint, out, "f16")
    r = run_cli("run", out, "-p", "import os", "-n", "5", "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\d+ prompt tokens, [1-5] generated", r.stdout), r.stdout


def test_cli_errors_on_non_gguf(tmp_path):
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf at all")
    for cmd in (("inspect", bogus), ("run", bogus)):
        r = run_cli(*cmd)
        assert r.returncode != 0 and "Traceback" not in r.stderr and str(bogus) in r.stderr, cmd
