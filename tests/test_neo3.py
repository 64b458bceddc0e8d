"""neo-3 / Mixtral family: logits against transformers, SentencePiece parity, refusals and bad input."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from ggtool import fixtures
from ggtool.checkpoint import Checkpoint
from ggtool.convert import convert, prepare
from ggtool.errors import GgtoolError
from ggtool.llama.model import LlamaModel
from ggtool.plan.memory import from_config, read_gguf
from ggtool.templates import render_chat
from ggtool.verify import verify
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory) -> Path:
    """A SentencePiece BPE (vocab 4096, byte fallback) trained on the standard library's sources."""
    return fixtures.train_spm_tokenizer(tmp_path_factory.mktemp("spm"), vocab_size=4096)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory, spm_tokenizer) -> Path:
    """A random MixtralForCausalLM: hidden 256, 8 query / 2 KV heads, 8 experts, top-2, per-expert layout."""
    return fixtures.make_mixtral(tmp_path_factory.mktemp("mixtral") / "neo3-tiny", spm_tokenizer, seed=1)


@pytest.fixture(scope="module")
def mixtral_gguf(mixtral, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "neo3-tiny-f32.gguf"
    convert(mixtral, out, "f32")
    return out


def _assert_exact(src: Path, gguf_path: Path) -> None:
    r = verify(src, gguf_path, n_tokens=96)
    print(f"{src.name}: max|Δ|/max|logit| = {r.rel_diff:.3g}, top-1 {r.top1_agreement:.2%}, KL {r.mean_kl:.3g}")
    assert r.n_tokens >= 64
    assert r.rel_diff <= 1e-4
    assert r.top1_agreement == 1.0
    assert r.tolerance.kv_type == "f32"


def test_logits_match_transformers(mixtral, mixtral_gguf):
    _assert_exact(mixtral, mixtral_gguf)


def test_fused_expert_layout(tmp_path, spm_tokenizer):
    src = fixtures.make_mixtral(tmp_path / "fused", spm_tokenizer, seed=2, fused=True)
    assert "model.layers.0.mlp.experts.gate_up_proj" in Checkpoint(src).names
    convert(src, tmp_path / "fused.gguf", "f32")
    _assert_exact(src, tmp_path / "fused.gguf")


def test_head_dim_rope_theta_linear_scaling_tied(tmp_path, spm_tokenizer):
    """head_dim != hidden/heads, another theta, linear RoPE scaling, another eps and tied embeddings map exactly."""
    src = fixtures.make_mixtral(tmp_path / "variant", spm_tokenizer, seed=3, head_dim=48, rms_norm_eps=1e-6,
                                tie_word_embeddings=True,
                                rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0})
    convert(src, tmp_path / "variant.gguf", "f32")
    with LlamaModel(tmp_path / "variant.gguf", vocab_only=True) as m:
        assert m.meta("llama.rope.scaling.type") == "linear"
        assert m.meta("llama.attention.key_length") == "48"
    _assert_exact(src, tmp_path / "variant.gguf")


def test_what_if_shapes_are_the_converted_files(mixtral, mixtral_gguf):
    """The planner's config.json path asks the family: the tensors, shapes and types convert writes."""
    want = {t.name: (t.type, t.shape, t.n_bytes) for t in read_gguf(mixtral_gguf).tensors}
    assert {t.name: (t.type, t.shape, t.n_bytes) for t in from_config(mixtral, "F32").tensors} == want


def test_metadata_and_chat_template(mixtral_gguf):
    with LlamaModel(mixtral_gguf, vocab_only=True) as m:
        meta = {k: m.meta(k) for k in ("general.architecture", "llama.expert_count", "llama.expert_used_count",
                                       "llama.attention.head_count", "llama.attention.head_count_kv",
                                       "llama.rope.dimension_count", "tokenizer.ggml.model",
                                       "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.bos_token_id",
                                       "tokenizer.ggml.eos_token_id")}
        assert meta == {"general.architecture": "llama", "llama.expert_count": "8", "llama.expert_used_count": "2",
                        "llama.attention.head_count": "8", "llama.attention.head_count_kv": "2",
                        "llama.rope.dimension_count": "32", "tokenizer.ggml.model": "llama",
                        "tokenizer.ggml.add_space_prefix": "true", "tokenizer.ggml.bos_token_id": "1",
                        "tokenizer.ggml.eos_token_id": "2"}
        assert m.n_vocab == 4160  # 4096 tokens padded to the embedding's rows
        template = m.meta("tokenizer.chat_template")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}]
    assert render_chat(template, chat) == "<user>\nHi\n</user>\n<assistant>\nHello!\n</assistant>\n" \
                                          "<user>\nBye\n</user>\n<assistant>\n"


def test_sentencepiece_token_parity(mixtral_gguf, spm_tokenizer):
    import sentencepiece as spm

    text = fixtures.heldout_text()
    assert len(text) >= 50_000
    sp = spm.SentencePieceProcessor(model_file=str(spm_tokenizer / "tokenizer.model"))
    want = sp.encode(text)
    with LlamaModel(mixtral_gguf, vocab_only=True) as m:
        got = m.tokenize(text)
        with_bos = m.tokenize(text, add_special=True)
    print(f"SentencePiece parity: {len(text)} chars, {len(want)} ids, "
          f"{sum(3 <= t < 259 for t in want)} byte-fallback ids, {sum(a != b for a, b in zip(want, got))} differ")
    assert sum(3 <= t < 259 for t in want) > 0  # byte fallback was exercised
    assert got == want
    assert with_bos == [sp.bos_id()] + want


def test_byte_fallback_tokenizer_json_parity(mixtral, tmp_path):
    """The same tokenizer as a Llama-2-style tokenizer.json (no tokenizer.model) tokenizes like `tokenizers`."""
    from tokenizers import Tokenizer

    src = tmp_path / "hf"
    shutil.copytree(mixtral, src)
    (src / "tokenizer.model").unlink()
    fixtures.spm_to_hf_tokenizer(mixtral, src)
    convert(src, tmp_path / "hf.gguf", "f32")
    text = fixtures.heldout_text()
    want = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    with LlamaModel(tmp_path / "hf.gguf", vocab_only=True) as m:
        got = m.tokenize(text)
    print(f"tokenizer.json parity: {len(want)} ids, {sum(a != b for a, b in zip(want, got))} differ")
    assert got == want


def _edit(src: Path, dst: Path, tensors=None, config=None) -> Path:
    """A copy of checkpoint `src` with its tensors and/or config.json changed."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    if tensors:
        weights = load_file(str(dst / "model.safetensors"))
        tensors(weights)
        save_file(weights, str(dst / "model.safetensors"))
    if config:
        c = json.loads((dst / "config.json").read_text())
        config(c)
        (dst / "config.json").write_text(json.dumps(c))
    return dst


def _drop_tensor(w: dict) -> None:
    del w["model.layers.1.self_attn.k_proj.weight"]


def _add_unknown(w: dict) -> None:
    w["model.layers.0.block_sparse_moe.shared_expert.weight"] = w["model.norm.weight"].copy()


def _drop_expert(w: dict) -> None:
    for n in ("w1", "w2", "w3"):
        del w[f"model.layers.1.block_sparse_moe.experts.7.{n}.weight"]


def _add_expert(w: dict) -> None:
    for n in ("w1", "w2", "w3"):
        w[f"model.layers.0.block_sparse_moe.experts.8.{n}.weight"] = w[f"model.layers.0.block_sparse_moe.experts.0.{n}.weight"].copy()


@pytest.mark.parametrize("case, edit, named", [
    ("missing", _drop_tensor, "model.layers.1.self_attn.k_proj.weight"),
    ("fewer-experts", _drop_expert, "model.layers.1.block_sparse_moe.experts.7.w1.weight"),
    ("more-experts", _add_expert, "model.layers.0.block_sparse_moe.experts.8.w1.weight"),
    ("unknown", _add_unknown, "model.layers.0.block_sparse_moe.shared_expert.weight"),
])
def test_bad_checkpoint_cli(mixtral, tmp_path, case, edit, named):
    src = _edit(mixtral, tmp_path / case, tensors=edit)
    out = tmp_path / "out.gguf"
    r = run_cli("convert", src, "-o", out)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert named in r.stderr.replace("\n", "")
    assert not out.exists()


@pytest.mark.parametrize("key, value, why", [
    ("sliding_window", 1024, "sliding_window=1024"),
    ("attention_bias", True, "attention_bias=True"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}, "rope type 'yarn'"),
])
def test_refuses_settings_llama_ignores(mixtral, tmp_path, key, value, why):
    src = _edit(mixtral, tmp_path / key, config=lambda c: c.update({key: value}))
    with pytest.raises(GgtoolError, match=why.replace("(", r"\(").replace("[", r"\[")):
        prepare(src)


def test_sliding_window_beyond_context_is_accepted(mixtral, tmp_path):
    src = _edit(mixtral, tmp_path / "window", config=lambda c: c.update(sliding_window=4096))
    prepare(src)


def test_other_class_with_mixtral_tensors_warns(mixtral, tmp_path):
    """A config naming another class converts (with a visible warning) when the tensors are Mixtral's."""
    def rename(c: dict) -> None:
        c.update(architectures=["NeoForCausalLM"], model_type="neo")

    src = _edit(mixtral, tmp_path / "neo", config=rename)
    out = tmp_path / "neo.gguf"
    r = run_cli("convert", src, "-o", out, "--outtype", "f32")
    assert r.returncode == 0, r.stderr
    assert "NeoForCausalLM" in r.stderr and "Mixtral-shaped" in r.stderr
    assert out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="Mixtral-shaped"):
            prepare(src)
    _assert_exact(src, out)  # the reference loads it as MixtralForCausalLM too, experts included


@pytest.mark.parametrize("options, why", [
    ({"model_type": "unigram"}, "model_type=unigram"),
    ({"remove_extra_whitespaces": True}, "remove_extra_whitespaces=true"),
    ({"normalization_rule_name": "nmt_nfkc"}, "normalizer 'nmt_nfkc'"),
])
def test_refuses_sentencepiece_llama_cannot_reproduce(tmp_path, options, why):
    from ggtool.vocab import load_llama_vocab

    tok = fixtures.train_spm_tokenizer(tmp_path, vocab_size=1000, n_chars=100_000, **options)
    with pytest.raises(GgtoolError, match=why):
        load_llama_vocab(tok, 1000, {})


def test_sentencepiece_without_dummy_prefix(mixtral, tmp_path):
    """add_dummy_prefix=false becomes tokenizer.ggml.add_space_prefix=false, and ids still match."""
    import sentencepiece as spm

    tok = fixtures.train_spm_tokenizer(tmp_path / "tok", vocab_size=1000, n_chars=100_000, add_dummy_prefix=False)
    src = tmp_path / "ckpt"
    shutil.copytree(mixtral, src)
    fixtures.copy_tokenizer(tok, src)
    convert(src, tmp_path / "nodummy.gguf", "f32")
    text = fixtures.heldout_text()
    want = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model")).encode(text)
    with LlamaModel(tmp_path / "nodummy.gguf", vocab_only=True) as m:
        assert m.meta("tokenizer.ggml.add_space_prefix") == "false"
        assert m.tokenize(text) == want
