"""SSMoELM: packed 1-bit/4-bit safetensors -> deepseek GGUF, checked against the numpy reference."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from ggtool import families, fixtures
from ggtool.checkpoint import Checkpoint
from ggtool.convert import convert
from ggtool.families import ssmoelm
from ggtool.llama.model import ContextOptions, LlamaModel
from ggtool.templates import render_chat
from ggtool.verify import SAMPLE_TEXT
from tests.conftest import run_cli

from .test_plan import rpc_endpoint  # noqa: F401 (a fixture: the loopback RPC device)

N_TOKENS = 80
TINY = dict(layers=3, d_model=128, heads=4, kv_heads=2, head_dim=32, experts=4, d_ff=64, d_ff_shared=64)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """Byte-fallback BPE, vocab 8192, the card's special tokens at ids 0-6."""
    return fixtures.train_byte_fallback_bpe(tmp_path_factory.mktemp("ssmoelm-tok"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    """The real model's shapes (d_model 768, 12/3 heads, 8 experts, vocab 8192) with 3 of its 6 layers."""
    return fixtures.make_ssmoelm(tmp_path_factory.mktemp("ssmoelm") / "SSMoELM-it", tokenizer, layers=3)


@pytest.fixture(scope="module")
def f32_gguf(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ssmoelm-out") / "ssmoelm-f32.gguf"
    r = run_cli("convert", checkpoint, "-o", out, "--outtype", "f32")
    assert r.returncode == 0, r.stderr
    return out


def token_ids(model: LlamaModel, n: int = N_TOKENS) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += model.tokenize(SAMPLE_TEXT)
    return ids[:n]


def compare(folder: Path, path: Path, kv: str = "f32") -> tuple[float, float]:
    """(max |Δlogit| / max |logit|, top-1 agreement) of llama.cpp on `path` vs the numpy reference."""
    with LlamaModel(path) as model:
        ids = token_ids(model)
        got = model.logits(ids, ContextOptions(n_ctx=256, type_k=kv, type_v=kv))
    ref = families.detect(Checkpoint(folder)).reference_logits(folder, ids)
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"{path.name}: max rel diff {rel:.3g}, top-1 {100 * top1:.1f}% on {len(ids)} tokens")
    return rel, top1


def test_f32_logits_match_numpy_reference(checkpoint, f32_gguf):
    rel, top1 = compare(checkpoint, f32_gguf)
    assert rel <= 1e-4 and top1 == 1.0


def test_card_metadata_is_written(f32_gguf):
    r = gguf.GGUFReader(f32_gguf)

    def value(key):
        return r.get_field(key).contents()

    assert value("general.architecture") == "deepseek"
    assert (value("deepseek.expert_shared_count"), value("deepseek.expert_count"),
            value("deepseek.expert_used_count"), value("deepseek.attention.head_count_kv")) == (1, 8, 2, 3)
    assert value("tokenizer.ggml.model") == "llama"
    assert [value(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "eot")] == [0, 1, 2, 6]
    assert value("tokenizer.ggml.token_type")[:7] == [gguf.TokenType.CONTROL] * 7
    assert value("general.sampling.temp") == 0.0 and value("general.sampling.top_k") == 1
    assert value("general.sampling.top_p") == pytest.approx(0.9)
    assert value("general.sampling.penalty_repeat") == pytest.approx(1.3)
    chat = render_chat(value("tokenizer.chat_template"), [{"role": "user", "content": "Hi"},
                                                          {"role": "assistant", "content": "Hello"}],
                       bos_token="<bos>", eos_token="<eos>", add_generation_prompt=False)
    assert chat == "<bos><|user|>\nHi<|eot|>\n<|assistant|>\nHello<|eot|><eos>"  # the card's format
    with LlamaModel(f32_gguf, vocab_only=True) as model:
        assert model.tokenize("<|user|>\nHi<|eot|>", parse_special=True)[0] == 4
        assert model.is_eog(6) and model.is_eog(1)


def test_unpacking_follows_the_documented_defaults(tmp_path):
    rng = np.random.default_rng(3)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(5, 13))  # 13 columns: rows padded to whole bytes
    nibbles = rng.integers(-8, 8, size=(5, 13), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, size=5).astype(np.float16)
    tensors = {**fixtures.packed_entries("a", signs, scale, 1), **fixtures.packed_entries("b", nibbles, scale, 4)}
    fixtures.save_ssmoelm(tmp_path, tensors, tmp_path)
    ckpt = Checkpoint(tmp_path)
    assert np.packbits([[1, 0, 0, 0, 0, 0, 0, 1]])[0] == 0x81  # MSB first, as numpy.packbits does
    for key, packing, codes in (("a", "bin", signs), ("b", "int4", nibbles)):
        got, got_scale = ssmoelm.codes_and_scales(ckpt, ssmoelm.Stored(key, packing, (5, 13)))
        assert np.array_equal(got, codes) and np.array_equal(got_scale, scale)


def test_lossless_is_bit_exact_small_and_runs(checkpoint, f32_gguf, tmp_path):
    out = tmp_path / "ssmoelm-lossless.gguf"
    r = run_cli("convert", checkpoint, "-o", out, "--lossless")
    assert r.returncode == 0, r.stderr
    dense = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(f32_gguf).tensors}
    types = {}
    for t in gguf.GGUFReader(out).tensors:
        types[t.name] = t.tensor_type.name
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        assert got.shape == dense[t.name].shape and np.array_equal(got.view(np.uint32),
                                                                   dense[t.name].view(np.uint32)), t.name
    assert types["blk.1.ffn_gate_exps.weight"] == types["blk.1.attn_v.weight"] == "TQ1_0"  # 1-bit rows
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == types["blk.0.attn_v.weight"] == "Q4_0"
    ratio = out.stat().st_size / (checkpoint / "model.safetensors").stat().st_size
    print(f"lossless {out.stat().st_size} bytes = {ratio:.3f} x the packed file")
    assert ratio <= 1.3
    _, top1 = compare(checkpoint, out, kv="f16")  # runs; llama.cpp rounds activations to q8 for these types
    assert top1 >= 0.8


def test_five_layer_model_runs_six_blocks(tokenizer, tmp_path):
    src = fixtures.make_ssmoelm(tmp_path / "SSMoELM-it-5L", tokenizer, five_layer=True)
    out = tmp_path / "5l.gguf"
    convert(src, out, "f32")
    r = gguf.GGUFReader(out)
    assert r.get_field("deepseek.block_count").contents() == 6
    data = {t.name: np.asarray(t.data) for t in r.tensors}
    for name in ("attn_q.weight", "attn_v.weight", "ffn_down_exps.weight", "ffn_norm.weight"):
        assert np.array_equal(data[f"blk.3.{name}"], data[f"blk.4.{name}"])  # stored layer 3, twice
        assert not np.array_equal(data[f"blk.4.{name}"], data[f"blk.5.{name}"])
    rel, top1 = compare(src, out)
    assert rel <= 1e-4 and top1 == 1.0


def test_five_layer_names_by_storage_position(tokenizer, tmp_path):
    tensors = fixtures.ssmoelm_tensors(layer_ids=[0, 1, 2, 3, 5], **{**TINY, "layers": 5})
    tensors = {k.replace("layers.5.", "layers.4."): v for k, v in tensors.items()}
    src = fixtures.save_ssmoelm(tmp_path, tensors, tokenizer, {"layer_ids": "0,1,2,3,5", "pass_order": "0,1,2,3,3,5"})
    (src / "config.json").write_text(json.dumps({"head_dim": 32}))
    lay = ssmoelm.layout(Checkpoint(src))
    assert lay.name_index == {0: 0, 1: 1, 2: 2, 3: 3, 5: 4} and lay.pass_order == [0, 1, 2, 3, 3, 5]


def test_other_router_and_rope_choices_switch_to_granitemoe(tokenizer, tmp_path, monkeypatch):
    """Renormalised routing and adjacent-pair RoPE: granitemoe, no Q/K permutation; head_dim from config.json."""
    monkeypatch.setitem(ssmoelm.CHOICES, "router", "softmax_renorm")
    monkeypatch.setitem(ssmoelm.CHOICES, "rope_style", "norm")
    monkeypatch.setattr(families, "FAMILIES", [ssmoelm.Ssmoelm()])
    src = fixtures.make_ssmoelm(tmp_path / "tiny", tokenizer, **TINY)
    (src / "config.json").write_text(json.dumps({"head_dim": 32}))
    out = tmp_path / "tiny.gguf"
    assert convert(src, out, "f32").arch == "granitemoe"
    rel, top1 = compare(src, out)
    assert rel <= 1e-4 and top1 == 1.0


def _drop(tensors: dict, prefix: str) -> dict:
    return {k: v for k, v in tensors.items() if not k.startswith(prefix)}


def _short_bytes(tensors: dict) -> dict:
    key = "layers.1.attn.q_proj.weight__int4"
    return {**tensors, key: tensors[key][:-1]}


BAD_INPUTS = {  # what is wrong -> (change to the tensors, text the message must contain)
    "byte count contradicts shape": (_short_bytes, "layers.1.attn.q_proj.weight__int4"),
    "missing layer": (lambda t: _drop(t, "layers.1."), "layer 1 is missing"),
    "inconsistent expert counts": (lambda t: _drop(t, "layers.2.moe.experts.3.up_proj"),
                                   "layers.2.moe.experts.*.up_proj.weight"),
    "unknown names": (lambda t: {**t, "lm_head.weight": t["norm.weight"], "layers.0.attn.q_norm.weight":
                                 t["norm.weight"]}, "layers.0.attn.q_norm.weight, lm_head.weight"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_one_message(case, tokenizer, tmp_path):
    change, needle = BAD_INPUTS[case]
    src = fixtures.save_ssmoelm(tmp_path / "bad", change(fixtures.ssmoelm_tensors(**TINY)), tokenizer)
    (src / "config.json").write_text(json.dumps({"head_dim": 32}))
    out = tmp_path / "out.gguf"
    r = run_cli("convert", src, "-o", out)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and needle in " ".join(r.stderr.split()), r.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", range(5), ids=["full", "full-fa-q8_0+experts-cpu", "partial-fa-q4_0-ub256",
                                                "output-only-fa-q8_0", "partial+experts-fa"])
def test_planner_matches_llama_cpp(case, f32_gguf, rpc_endpoint):
    """The deepseek graph SSMoELM converts to (softmax routing, SiLU-gated experts and shared expert): every
    buffer llama.cpp logs, on a loopback RPC device and on the host, within 5% of the planner's prediction,
    including flash attention with a quantized (Hadamard-rotated) cache and layers left on the host."""
    from ggtool.plan.memory import Placement

    from .test_plan import check_predictions

    placement = [Placement(99, 512, "f16", "f16", False, ()), Placement(99, 4096, "q8_0", "q8_0", True, (1,)),
                 Placement(2, 4096, "q4_0", "q4_0", True, (), 512, 256), Placement(1, 512, "q8_0", "q8_0", True, ()),
                 Placement(2, 1024, "f16", "f16", True, (1,))][case]
    check_predictions(f32_gguf, placement, rpc_endpoint)
