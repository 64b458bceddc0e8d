"""Metis-1.5: a faithful `metis` GGUF, checked by the numpy reference on the GGUF read back (llama.cpp cannot)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from ggtool import fixtures
from ggtool.checkpoint import Checkpoint
from ggtool.convert import convert
from ggtool.errors import GgtoolError
from ggtool.families.metis import Metis, byte_symbols, infer_dims, tokenizer_json_from_gguf
from ggtool.verify import mean_kl

from .conftest import run_cli


@pytest.fixture(scope="module")
def metis_tokenizer(tmp_path_factory):
    return fixtures.train_metis_tokenizer(tmp_path_factory.mktemp("metis-tok"))


@pytest.fixture(scope="module")
def metis_checkpoint(tmp_path_factory, metis_tokenizer):
    """d_model 192, 2 layers, 6/2 GQA heads of 32, 8 experts top-2, latent 64, expert ff 96, shared ff 128, bf16."""
    return fixtures.make_metis(tmp_path_factory.mktemp("metis") / "Metis-tiny", metis_tokenizer)


@pytest.fixture(scope="module")
def metis_f32(tmp_path_factory, metis_checkpoint):
    out = tmp_path_factory.mktemp("metis-gguf") / "metis-f32.gguf"
    convert(metis_checkpoint, out, "f32")
    return out


def _ids(n: int, seed: int = 0, vocab: int = 2000) -> list[int]:
    return [1] + [int(x) for x in np.random.default_rng(seed).integers(4, vocab, size=n - 1)]


def test_reference_on_gguf_read_back_is_bit_exact(metis_checkpoint, metis_f32):
    ids = _ids(64)
    ref = Metis().reference_logits(metis_checkpoint, ids)
    got = Metis().gguf_reference_logits(metis_f32, ids)
    assert ref.shape == (64, 2000) and ref.std() > 0.1 and len(set(ref.argmax(-1))) > 5
    assert np.array_equal(ref, got)


def test_bf16_is_exact_and_q8_0_close(metis_checkpoint, tmp_path):
    ids = _ids(48, seed=1)
    ref = Metis().reference_logits(metis_checkpoint, ids)
    for outtype in ("bf16", "q8_0"):
        out = tmp_path / f"m-{outtype}.gguf"
        convert(metis_checkpoint, out, outtype)
        got = Metis().gguf_reference_logits(out, ids)
        if outtype == "bf16":  # the released weights are bf16: storing them as bf16 loses nothing
            assert np.array_equal(ref, got)
        else:
            assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9 and mean_kl(ref, got) < 1e-2


def _naive_logits(folder, ids):
    """models.md §4.4 written out token by token, head by head, in float64: independent of metis_reference."""
    ck = Checkpoint(folder)
    c = ck.config
    H, KV, hd, top_k = c["n_heads"], c["n_kv_heads"], c["head_dim"], c["moe_top_k"]

    def W(name):
        return ck.read(name).astype(np.float64)

    def norm(x, scale):
        return x / np.sqrt(np.mean(x * x) + 1e-6) * scale

    def rope(v, pos):
        ang = pos * 10000.0 ** (-2 * np.arange(hd // 2) / hd)
        a, b = v[:hd // 2], v[hd // 2:]
        return np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)])

    xs = [W("embed")[t] for t in ids]
    for b in range(c["n_layer"]):
        p = f"layers.{b}."
        ys = [norm(x, W(p + "attn_norm.scale")) for x in xs]
        q = [[rope((y @ W(p + "q"))[h * hd:(h + 1) * hd], i) for h in range(H)] for i, y in enumerate(ys)]
        k = [[rope((y @ W(p + "k"))[g * hd:(g + 1) * hd], i) for g in range(KV)] for i, y in enumerate(ys)]
        v = [[(y @ W(p + "v"))[g * hd:(g + 1) * hd] for g in range(KV)] for y in ys]
        for i in range(len(xs)):
            heads = []
            for h in range(H):
                g = h // (H // KV)
                s = np.array([q[i][h] @ k[j][g] / np.sqrt(hd) for j in range(i + 1)])
                pr = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                heads.append(sum(pr[j] * v[j][g] for j in range(i + 1)))
            xs[i] = xs[i] + np.concatenate(heads) @ W(p + "o")
        for i, x in enumerate(xs):
            y = norm(x, W(p + "moe_norm.scale"))
            z = y @ W(p + "latent_down")
            s = 1 / (1 + np.exp(-(y @ W(p + "router"))))
            chosen = sorted(range(len(s)), key=lambda e: -(s[e] + W(p + "router_bias")[e]))[:top_k]
            total = max(sum(s[e] for e in chosen), 1e-6)
            routed = sum(s[e] / total * (np.maximum(z @ W(p + "expert_w1")[e], 0) ** 2 @ W(p + "expert_w2")[e])
                         for e in chosen)
            shared = np.maximum(y @ W(p + "shared_w1"), 0) ** 2 @ W(p + "shared_w2")
            xs[i] = x + routed @ W(p + "latent_up") + shared
    return np.stack([norm(x, W("final_norm.scale")) @ W("embed").T for x in xs])


def test_reference_follows_the_documented_forward(metis_checkpoint):
    ids = _ids(12, seed=3)
    ref = Metis().reference_logits(metis_checkpoint, ids)
    naive = _naive_logits(metis_checkpoint, ids)
    assert np.abs(ref - naive).max() <= 1e-4 * np.abs(naive).max()
    # the fixture's router bias is large enough that selection-only bias is actually exercised
    ck = Checkpoint(metis_checkpoint)
    scores = np.random.default_rng(0).standard_normal((64, 8))
    bias = ck.read("layers.0.router_bias")
    assert (np.argsort(-scores, -1)[:, :2] != np.argsort(-(scores + bias), -1)[:, :2]).any()


def test_gguf_keys_tensors_and_layout(metis_checkpoint, metis_f32):
    r = gguf.GGUFReader(metis_f32)

    def f(key):
        return r.get_field(key).contents()

    expected = {
        "general.architecture": "metis", "metis.context_length": 1024, "metis.embedding_length": 192,
        "metis.block_count": 2, "metis.vocab_size": 2000, "metis.attention.head_count": 6,
        "metis.attention.head_count_kv": 2, "metis.attention.key_length": 32, "metis.rope.dimension_count": 32,
        "metis.rope.type": "neox", "metis.expert_count": 8, "metis.expert_used_count": 2,
        "metis.expert_shared_count": 1, "metis.expert_feed_forward_length": 96,
        "metis.expert_shared_feed_forward_length": 128, "metis.moe_latent_size": 64,
        "metis.expert_gating_func": 2, "metis.expert_weights_norm": True, "metis.expert_activation": "relu_sqr",
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": fixtures.METIS_CHAT_TEMPLATE, "tokenizer.ggml.normalizer": "NFKC",
        "tokenizer.ggml.unknown_bytes": fixtures.METIS_ABSENT_BYTES,
    }
    assert {k: f(k) for k in expected} == expected
    approx = {"metis.attention.layer_norm_rms_epsilon": 1e-6, "metis.rope.freq_base": 10000.0,
              "metis.expert_weights_scale": 1.0, "general.sampling.temp": 0.7, "general.sampling.top_p": 0.95}
    assert {k: f(k) for k in approx} == pytest.approx(approx)
    # the stale intermediate_size (4096) is written nowhere
    assert all(v != 4096 for k, fld in r.fields.items() if k.startswith("metis.") for v in [fld.contents()])

    t = {x.name: x for x in r.tensors}
    assert len(t) == 2 + 14 * 2 and "output.weight" not in t  # tied: llama.cpp falls back to token_embd
    shapes = {  # ggml order, ne0 = the input dimension
        "token_embd.weight": [192, 2000], "blk.0.attn_q.weight": [192, 192], "blk.0.attn_k.weight": [192, 64],
        "blk.0.attn_output.weight": [192, 192], "blk.0.ffn_latent_down.weight": [192, 64],
        "blk.0.ffn_latent_up.weight": [64, 192], "blk.0.ffn_gate_inp.weight": [192, 8],
        "blk.0.exp_probs_b.bias": [8], "blk.1.ffn_up_exps.weight": [64, 96, 8],
        "blk.1.ffn_down_exps.weight": [96, 64, 8], "blk.1.ffn_up_shexp.weight": [192, 128],
        "blk.1.ffn_down_shexp.weight": [128, 192], "output_norm.weight": [192],
    }
    assert {n: [int(x) for x in t[n].shape] for n in shapes} == shapes
    f32 = gguf.GGMLQuantizationType.F32
    assert t["blk.0.exp_probs_b.bias"].tensor_type == t["blk.0.ffn_gate_inp.weight"].tensor_type == f32
    ck = Checkpoint(metis_checkpoint)
    assert np.array_equal(t["blk.1.attn_k.weight"].data, ck.read("layers.1.k").T)
    assert np.array_equal(t["blk.1.ffn_up_exps.weight"].data, np.swapaxes(ck.read("layers.1.expert_w1"), 1, 2))


def test_tokenizer_round_trip_through_gguf(metis_checkpoint, metis_f32):
    from tokenizers import Tokenizer, pre_tokenizers

    assert set(byte_symbols()) == set(pre_tokenizers.ByteLevel.alphabet())
    orig = Tokenizer.from_file(str(metis_checkpoint / "tokenizer.json"))
    rebuilt = Tokenizer.from_str(json.dumps(tokenizer_json_from_gguf(metis_f32)))
    assert rebuilt.get_vocab() == orig.get_vocab()
    merges = [json.loads(tok.to_str())["model"]["merges"] for tok in (orig, rebuilt)]
    assert merges[0] == merges[1] and len(merges[0]) > 1000
    # NFKC-sensitive characters and bytes without a token (which become <unk>) included
    text = fixtures.heldout_text(20_000) + "ﬁnance ① ＡＢＣ ½ x² \x01\x7f \r\n done"
    ids = orig.encode(text, add_special_tokens=False).ids
    assert rebuilt.encode(text, add_special_tokens=False).ids == ids and 3 in ids
    # the GGUF prepends <bos> and, unlike the shipped post-processor, never appends <eos>
    assert orig.encode("Hello").ids[-1] == 2
    assert rebuilt.encode("Hello").ids == [1] + orig.encode("Hello", add_special_tokens=False).ids


def test_run_refuses_with_the_reason(metis_f32):
    r = run_cli("run", metis_f32, "-p", "Hello")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "architecture metis" in r.stderr and "llama.cpp" in r.stderr and "squared-ReLU" in r.stderr


def test_verify_and_inspect_commands(metis_checkpoint, metis_f32):
    r = run_cli("verify", metis_checkpoint, metis_f32, "--tokens", "48")
    assert r.returncode == 0, r.stderr
    assert "gguf-py" in r.stdout and "100.00%" in r.stdout and "verify passed" in r.stdout
    r = run_cli("inspect", metis_f32, "--no-tensors")
    assert r.returncode == 0 and "metis.moe_latent_size" in r.stdout and "tokenizer.ggml.normalizer" in r.stdout


def test_top_k_comes_from_config_or_the_release_shape(metis_tokenizer, tmp_path):
    release = fixtures.make_metis(tmp_path / "release", metis_tokenizer, experts=32, top_k=4, layers=1)
    assert "moe_top_k" not in json.loads((release / "config.json").read_text())
    assert infer_dims(Checkpoint(release)).top_k == 4
    small = fixtures.make_metis(tmp_path / "small", metis_tokenizer, layers=1)
    config = json.loads((small / "config.json").read_text())
    del config["moe_top_k"]
    (small / "config.json").write_text(json.dumps(config))
    with pytest.raises(GgtoolError, match="moe_top_k"):
        infer_dims(Checkpoint(small))


def _drop_layer(t):
    for name in [n for n in t if n.startswith("layers.1.")]:
        del t[name]


def _fewer_experts(t):
    t["layers.1.expert_w1"] = t["layers.1.expert_w1"][:7]
    t["layers.1.expert_w2"] = t["layers.1.expert_w2"][:7]


def _unknown_tensor(t):
    t["mor_router.w1"] = np.zeros((192, 16), np.float32)


@pytest.mark.parametrize("edit, named", [(_drop_layer, "layers.1.attn_norm.scale"),
                                         (_fewer_experts, "layers.1.expert_w1"),
                                         (_unknown_tensor, "mor_router.w1")])
def test_bad_checkpoints_are_refused(metis_tokenizer, tmp_path, edit, named):
    src = fixtures.make_metis(tmp_path / "bad", metis_tokenizer, edit=edit)
    out = tmp_path / "bad.gguf"
    r = run_cli("convert", src, "-o", out)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert named in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
