"""Metis-1.5: a faithful `metis` GGUF, run by ggtool's patched llama.cpp (patches/llama.cpp/metis.patch) and checked
against the numpy reference."""

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
from .test_plan import rpc_endpoint, rpc_endpoint_2  # noqa: F401 (fixtures: loopback RPC devices)


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
        "metis.expert_count": 8, "metis.expert_used_count": 2,
        "metis.expert_shared_count": 1, "metis.expert_feed_forward_length": 96,
        "metis.expert_shared_feed_forward_length": 128, "metis.moe_latent_size": 64,
        "metis.expert_gating_func": 2, "metis.expert_weights_norm": True,
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


def test_keys_and_tensor_names_are_llama_cpps_own(metis_f32):
    """Every metis.* key and tensor name is one llama.cpp already defines (src/llama-arch.cpp of the pinned source)."""
    import re

    from ggtool.llama.source import source_dir

    arch_cpp = (source_dir() / "src" / "llama-arch.cpp").read_text()
    keys = set(re.findall(r'"%s\.([\w.]+)"', arch_cpp))
    tensors = set(re.findall(r'"(blk\.%d\.\w+|\w+)" ?}', arch_cpp))
    r = gguf.GGUFReader(metis_f32)
    ours = [k.removeprefix("metis.") for k in r.fields if k.startswith("metis.")]
    assert len(ours) > 15 and set(ours) <= keys, sorted(set(ours) - keys)
    names = {re.sub(r"^blk\.\d+\.", "blk.%d.", t.name).rsplit(".", 1)[0] for t in r.tensors}
    assert names <= tensors, sorted(names - tensors)


def test_verify_and_inspect_commands(metis_checkpoint, metis_f32):
    r = run_cli("verify", metis_checkpoint, metis_f32, "--tokens", "48")
    assert r.returncode == 0, r.stderr
    assert "llama.cpp" in r.stdout and "100.00%" in r.stdout and "verify passed" in r.stdout
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


# --- llama.cpp's `metis` graph (patches/llama.cpp/metis.patch, built by `make install`) -------------------------

def _with_lm_head(t):
    """An untied checkpoint: its own output projection [embd, vocab]."""
    rng = np.random.default_rng(7)
    t["lm_head"] = (rng.standard_normal((t["embed"].shape[1], t["embed"].shape[0])) / 14).astype(np.float32)


@pytest.fixture(scope="module")
def metis_untied(tmp_path_factory, metis_tokenizer):
    return fixtures.make_metis(tmp_path_factory.mktemp("metis-untied") / "Metis-untied", metis_tokenizer, seed=1,
                               edit=_with_lm_head)


def _llama_logits(path, ids, kv="f32"):
    from ggtool.llama.model import ContextOptions, LlamaModel

    with LlamaModel(path) as model:
        return model.logits(ids, ContextOptions(n_ctx=256, type_k=kv, type_v=kv, flash_attn=False))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_this_llama_cpp_has_the_metis_graph():
    from ggtool.llama import arch

    assert arch.available("metis") and arch.available("olmoe") and not arch.available("no-such-arch")


def test_selection_bias_changes_the_chosen_experts(metis_checkpoint):
    """On the fixture's own hidden states, the bias changes which experts are chosen (so the parity tests see it)."""
    from ggtool.families import metis_reference as R

    d, w = R.checkpoint_weights(Checkpoint(metis_checkpoint))
    x = w("embed")[np.asarray(_ids(96, seed=5))]
    differ = 0
    for b in range(d.n_layer):
        x = x + R.attention(R.rms_norm(x, w(f"layers.{b}.attn_norm.scale"), d.eps), w, d, b)
        y = R.rms_norm(x, w(f"layers.{b}.moe_norm.scale"), d.eps)
        with_bias, _ = R.route(y, w, d, b)
        without, _ = R.route(y, lambda n: np.zeros(8, np.float32) if n.endswith("router_bias") else w(n), d, b)
        differ += int((np.sort(with_bias, -1) != np.sort(without, -1)).any(-1).sum())
        x = x + R.latent_moe(y, w, d, b)
    assert differ >= 20, differ  # of 2 × 96 routed tokens


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_llama_cpp_matches_the_reference_f32(which, metis_checkpoint, metis_untied, tmp_path):
    """f32 GGUF, f32 KV cache, flash attention off: llama.cpp's metis graph = the numpy reference."""
    from ggtool.verify import verify

    src = metis_checkpoint if which == "tied" else metis_untied
    out = convert(src, tmp_path / "m.gguf", "f32").dest
    assert ("output.weight" in {t.name for t in gguf.GGUFReader(out).tensors}) == (which == "untied")
    r = verify(src, out, n_tokens=96)
    assert r.n_tokens == 96 and r.tolerance.kv_type == "f32" and "llama.cpp" in r.compared
    assert r.rel_diff <= 1e-4 and r.top1_agreement == 1.0, (r.rel_diff, r.top1_agreement)


def test_negative_controls_fail_the_tolerance(metis_checkpoint, metis_f32, monkeypatch):
    """llama.cpp's logits are told apart from a reference with the bias dropped, the bias in the weights too, or
    SiLU experts: each differs far beyond the f32 tolerance the real semantics meet."""
    from ggtool.families import metis_reference as R

    ids = _ids(80, seed=2)
    got = _llama_logits(metis_f32, ids)
    assert _rel(got, Metis().reference_logits(metis_checkpoint, ids)) <= 1e-4
    route = R.route

    def no_bias(y, w, d, b):
        return route(y, lambda n: np.zeros(8, np.float32) if n.endswith("router_bias") else w(n), d, b)

    def biased_weights(y, w, d, b):
        choice, _ = route(y, w, d, b)
        s = 1 / (1 + np.exp(-(y @ w(f"layers.{b}.router")))) + w(f"layers.{b}.router_bias")
        top = np.take_along_axis(s, choice, -1)
        return choice, (top / top.sum(-1, keepdims=True)).astype(np.float32)

    def silu(x):
        return x / (1 + np.exp(-x))

    for name, value in (("route", no_bias), ("route", biased_weights), ("squared_relu", silu)):
        with monkeypatch.context() as m:
            m.setattr(R, name, value)
            wrong = Metis().reference_logits(metis_checkpoint, ids)
        assert _rel(got, wrong) > 1e-2, (name, value.__name__, _rel(got, wrong))


@pytest.mark.parametrize("outtype", ["bf16", "f16"])
def test_half_precision_files_stay_close(outtype, metis_checkpoint, tmp_path):
    from ggtool.verify import verify

    out = convert(metis_checkpoint, tmp_path / f"m-{outtype}.gguf", outtype).dest
    r = verify(metis_checkpoint, out, n_tokens=96)
    assert r.mean_kl <= 1e-3 and r.top1_agreement >= 0.95, (r.mean_kl, r.top1_agreement)


def test_run_chat_with_its_template(metis_f32):
    r = run_cli("run", metis_f32, "--chat", "-p", "Hello there", "-n", "12", "--greedy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_a_stock_llama_cpp_says_what_to_build(metis_f32, monkeypatch):
    """Without the architecture (a stock llama-cpp-python), one line naming it and the command that builds one."""
    from ggtool.llama import arch
    from ggtool.runnable import require_runnable

    monkeypatch.setattr(arch, "available", lambda name: name != "metis")  # as a stock build answers
    with pytest.raises(GgtoolError) as e:
        require_runnable(metis_f32, "run")
    text = str(e.value)
    assert "\n" not in text and "lacks architecture metis" in text and "`make install`" in text


def test_clients_are_told_they_need_the_architecture(metis_f32, tmp_path):
    r = run_cli("modelfile", metis_f32, "-o", tmp_path / "Modelfile")
    assert r.returncode == 0, r.stderr
    assert "architecture metis" in r.stderr and "Ollama" in r.stderr
    assert "metis.patch" in (tmp_path / "Modelfile").read_text()
    r = run_cli("export", "lmstudio", metis_f32, "--publisher", "me", "--model", "metis", "--root", tmp_path / "lms",
                "--hub-repo", "me/metis-GGUF")  # model.yaml (written for a Hub repo only) carries the note too
    assert r.returncode == 0, r.stderr
    assert "LM Studio" in r.stderr and "metis.patch" in (tmp_path / "lms/me/metis/model.yaml").read_text()


def test_imatrix_counts_follow_the_reference_routing(metis_checkpoint, metis_f32, tmp_path):
    from ggtool import calibration as cal_mod, imatrix_file

    from ggtool import imatrix as im_mod
    from ggtool.families import metis_reference as R
    from ggtool.llama.model import LlamaModel

    cal = tmp_path / "cal.txt"
    cal.write_text(fixtures.stdlib_text(40, 8_000))
    r = im_mod.collect(metis_f32, [cal], tmp_path / "imatrix.gguf", chunk_size=64, max_chunks=2, n_threads=1)
    got = imatrix_file.read_imatrix(r.dest)
    with LlamaModel(metis_f32) as model:
        ids = model.tokenize(cal.read_text(), add_special=True)
    chunks = cal_mod.make_chunks(ids, 64, 1)[:2]  # Metis adds <bos>: each chunk starts with it
    d, w = R.checkpoint_weights(Checkpoint(metis_checkpoint))
    counts = np.zeros((d.n_layer, 8), dtype=np.int64)
    for c in chunks:
        x = w("embed")[np.asarray(c)]
        for b in range(d.n_layer):
            x = x + R.attention(R.rms_norm(x, w(f"layers.{b}.attn_norm.scale"), d.eps), w, d, b)
            y = R.rms_norm(x, w(f"layers.{b}.moe_norm.scale"), d.eps)
            np.add.at(counts[b], R.route(y, w, d, b)[0].ravel(), 1)
            x = x + R.latent_moe(y, w, d, b)
    for b in range(d.n_layer):
        up = got.entries[f"blk.{b}.ffn_up_exps.weight"]
        assert up.counts.tolist() == counts[b].tolist(), (b, up.counts, counts[b])
        assert up.sums.shape == (8, 64)  # the experts' input is the 64-wide latent
        assert got.entries[f"blk.{b}.ffn_down_exps.weight"].counts.tolist() == counts[b].tolist()
        for dense in ("ffn_latent_down", "ffn_latent_up", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp"):
            assert got.entries[f"blk.{b}.{dense}.weight"].counts.tolist() == [128]


@pytest.fixture(scope="module")
def metis_wide(tmp_path_factory, metis_tokenizer):
    """Rows that fill whole 256-blocks (embd 512, latent 256), so the recipes' types apply without fallback."""
    return fixtures.make_metis(tmp_path_factory.mktemp("metis-wide") / "Metis-wide", metis_tokenizer, seed=3,
                               d_model=512, heads=8, kv_heads=2, head_dim=64, latent=256, expert_ff=256,
                               shared_ff=512)


LADDER = ["IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M"]


def test_ladder_kl_rises_as_bits_fall(metis_wide, tmp_path):
    from ggtool.ladder import ladder

    cal, held = tmp_path / "cal.txt", tmp_path / "held.txt"
    cal.write_text(fixtures.stdlib_text(60, 12_000))
    held.write_text(fixtures.heldout_text(6_000))
    r = ladder(metis_wide, tmp_path / "ladder", LADDER, calibration=[cal], heldout=held, conversations=None,
               chunk_size=64, eval_ctx=64)
    v = {x.type: x for x in r.report.variants}
    assert sorted(v) == sorted(LADDER)
    by_bpw = sorted(v.values(), key=lambda x: x.bpw)
    assert [x.type for x in by_bpw] == LADDER, [(x.type, x.bpw) for x in by_bpw]
    kls = [x.kl_mean for x in by_bpw]
    assert all(a > b for a, b in zip(kls, kls[1:])) and kls[-1] > 0, kls


def test_quantize_reports_type_fallbacks(metis_f32, tmp_path):
    """The 192-wide fixture's rows do not fill 256-blocks: llama.cpp falls back, and ggtool says so."""
    r = run_cli("quantize", metis_f32, "--types", "Q4_K_M", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fell back" in r.stdout and "Q4_K→Q5_0" in r.stdout


@pytest.fixture(scope="module")
def metis_plan_files(metis_wide, tmp_path_factory) -> dict:
    from ggtool.quantize import quantize_one

    folder = tmp_path_factory.mktemp("metis-plan")
    f16 = convert(metis_wide, folder / "f16.gguf", "f16").dest
    return {"F16": f16, **{t: quantize_one(f16, folder / f"{t}.gguf", t, nthread=1).path for t in ("Q4_K_M", "Q8_0")}}


def _placements():
    from ggtool.plan.memory import Placement

    # the other families' planner cases (tests/test_plan.py) on this 2-layer graph: full offload; experts on the
    # host; layer 0 on the host with flash attention and a quantized (Hadamard-rotated) cache; layer 0 and layer
    # 1's experts on the host with flash attention; full offload with flash attention and q4_0 / q8_0 caches;
    # layer 0 and layer 1's experts on the host without flash attention; only the output offloaded, without and
    # with flash attention (every layer on the host)
    return [("Q4_K_M", Placement(99, 512, "f16", "f16", False, ())),
            ("Q4_K_M", Placement(99, 2048, "q8_0", "f16", False, (0, 1))),
            ("Q8_0", Placement(2, 4096, "q4_0", "q4_0", True, (), 512, 256)),
            ("F16", Placement(2, 1024, "f16", "f16", True, (1,))),
            ("Q4_K_M", Placement(99, 4096, "q4_0", "q4_0", True, ())),
            ("Q4_K_M", Placement(99, 4096, "q8_0", "q8_0", True, (1,))),
            ("F16", Placement(2, 2048, "f16", "f16", False, (1,))),
            ("F16", Placement(1, 1024, "f16", "f16", False, ())),
            ("F16", Placement(1, 1024, "f16", "f16", True, ()))]


@pytest.mark.parametrize("case", range(9), ids=["full", "experts-cpu", "partial-fa-q4_0", "partial+experts-fa",
                                                "full-fa-q4_0", "experts-cpu-fa-q8_0", "partial+experts",
                                                "output-only", "output-only-fa"])
def test_planner_matches_llama_cpp(case, metis_plan_files, rpc_endpoint):
    """Every buffer llama.cpp logs for the metis graph (latent intermediates, shared expert), on a loopback RPC
    device and on the host, within 5% of the memory model's prediction."""
    from .test_plan import check_predictions

    qtype, placement = _placements()[case]
    check_predictions(metis_plan_files[qtype], placement, rpc_endpoint)


@pytest.mark.parametrize("qtype, fa, kv, split",
                         [("Q8_0", False, "f16", (1.0, 3.0)), ("Q4_K_M", True, "q8_0", (1.0, 1.0))],
                         ids=["1:3", "1:1-fa-q8_0"])
def test_planner_matches_llama_cpp_on_two_devices(qtype, fa, kv, split, metis_plan_files, rpc_endpoint,
                                                  rpc_endpoint_2):
    """Layers split over two RPC devices: pipeline parallelism keeps four copies of every graph input and of
    every tensor a device receives; each device's buffers and the host's within 5%."""
    from ggtool.plan.memory import Placement

    from .test_plan import check_two_devices

    check_two_devices(metis_plan_files[qtype], Placement(99, 2048, kv, kv, fa, (), tensor_split=split),
                      rpc_endpoint, rpc_endpoint_2)
