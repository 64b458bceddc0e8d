"""ggtool imatrix: values against a reference forward pass, file formats, merging, coverage, chat rendering."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from ggtool import fixtures
from ggtool import calibration as cal_mod, imatrix_file

from ggtool import imatrix as im_mod
from ggtool.convert import convert
from ggtool.errors import GgtoolError
from ggtool.imatrix_file import Imatrix, ImatrixEntry, read_imatrix, write_imatrix, write_legacy
from ggtool.llama.imatrix import bos_token
from ggtool.llama.model import LlamaModel
from ggtool.quantize import quantize_one

from .conftest import run_cli

CHUNK = 128


@pytest.fixture(scope="module")
def olmoe_f32(tmp_path_factory, olmoe_checkpoint) -> Path:
    """An F32 conversion, so llama.cpp's routing matches the float32 reference token for token."""
    return convert(olmoe_checkpoint, tmp_path_factory.mktemp("f32") / "olmoe-f32.gguf", "f32").dest


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cal") / "calibration.txt"
    path.write_text(fixtures.stdlib_text(40, 20_000))
    return path


def reference_statistics(checkpoint: Path, chunks: list[list[int]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-column sums of squares and counts from transformers' OLMoE: attn_q's input (layer 0) and, per layer,
    the router's input summed per chosen expert (= the input of ffn_up_exps / ffn_gate_exps)."""
    import torch
    from transformers import OlmoeForCausalLM

    model = OlmoeForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    n_exp, n_layer = model.config.num_experts, model.config.num_hidden_layers
    hidden = model.config.hidden_size
    ref = {"blk.0.attn_q.weight": (np.zeros((1, hidden)), np.zeros(1, dtype=np.int64))}
    ref.update({f"blk.{i}.ffn_up_exps.weight": (np.zeros((n_exp, hidden)), np.zeros(n_exp, dtype=np.int64))
                for i in range(n_layer)})

    def on_q(module, args):  # noqa: ANN001
        x = args[0].reshape(-1, hidden).double().numpy()
        ref["blk.0.attn_q.weight"][0][0] += (x * x).sum(0)
        ref["blk.0.attn_q.weight"][1][0] += x.shape[0]

    def on_router(layer):
        def hook(module, args, output):  # noqa: ANN001
            x = args[0].reshape(-1, hidden).double().numpy()
            chosen = output[2].numpy()  # [tokens, top_k]
            sums, counts = ref[f"blk.{layer}.ffn_up_exps.weight"]
            for slot in range(chosen.shape[1]):
                np.add.at(sums, chosen[:, slot], x * x)
                np.add.at(counts, chosen[:, slot], 1)
        return hook

    model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(on_q)
    for i, layer in enumerate(model.model.layers):
        layer.mlp.gate.register_forward_hook(on_router(i))
    with torch.no_grad():
        for c in chunks:
            model(torch.tensor([c]))
    return ref


def test_collected_sums_and_counts_match_reference_forward_pass(olmoe_f32, olmoe_checkpoint, calibration, tmp_path):
    out = tmp_path / "imatrix.gguf"
    r = im_mod.collect(olmoe_f32, [calibration], out, chunk_size=CHUNK, max_chunks=3, n_threads=1)
    assert r.n_chunks == 3 and r.n_tokens == 3 * CHUNK
    with LlamaModel(olmoe_f32) as model:
        ids = model.tokenize(calibration.read_text(), add_special=True)
    # as llama-imatrix: consecutive chunks; this vocabulary does not add BOS, so no token is replaced
    chunks = cal_mod.make_chunks(ids, CHUNK, None)[:3]
    assert chunks[1] == ids[CHUNK:2 * CHUNK]
    got = read_imatrix(out)
    ref = reference_statistics(olmoe_checkpoint, chunks)
    n_tokens = 3 * CHUNK

    # dense: attn_q/k/v of layer 0 all see the attention norm's output of every token
    sums, counts = ref["blk.0.attn_q.weight"]
    for name in ("attn_q", "attn_k", "attn_v"):
        e = got.entries[f"blk.0.{name}.weight"]
        assert e.counts.tolist() == [n_tokens]
        np.testing.assert_allclose(e.sums, sums, rtol=2e-4)
    # experts: per-expert counts sum to n_tokens × top-k and follow the reference router's choices
    for layer in range(3):
        sums, counts = ref[f"blk.{layer}.ffn_up_exps.weight"]
        up = got.entries[f"blk.{layer}.ffn_up_exps.weight"]
        assert up.counts.sum() == n_tokens * 2
        assert np.abs(up.counts - counts).sum() <= 2 * 2, (layer, up.counts, counts)  # at most a near-tie or two
        # past layer 0 the residual stream has been through llama.cpp's F16 KV cache: agreement to ~1e-3
        np.testing.assert_allclose(up.sums, sums, rtol=2e-2 if (up.counts != counts).any() else 5e-3)
        for other in ("ffn_gate_exps", "ffn_down_exps"):
            assert got.entries[f"blk.{layer}.{other}.weight"].counts.tolist() == up.counts.tolist()
        np.testing.assert_array_equal(got.entries[f"blk.{layer}.ffn_gate_exps.weight"].sums, up.sums)
        assert got.entries[f"blk.{layer}.ffn_down_exps.weight"].sums.shape == (8, 128)
    assert "output.weight" not in got.entries  # as llama-imatrix without --process-output


def test_gguf_file_round_trips_exactly_and_is_llama_imatrix_shaped(tmp_path):
    rng = np.random.default_rng(0)
    sums = (rng.random((4, 32)) * 100).astype(np.float32).astype(np.float64)  # values a float32 file holds exactly
    counts = np.array([5, 0, 7, 12])
    im = Imatrix({"blk.1.ffn_up_exps.weight": ImatrixEntry(sums, counts),
                  "blk.0.attn_q.weight": ImatrixEntry(np.arange(32.0)[None, :], np.array([40]))},
                 ["a.txt", "b.jsonl"], 3, 16)
    path = write_imatrix(im, tmp_path / "m.gguf")
    back = read_imatrix(path)
    assert back.datasets == ["a.txt", "b.jsonl"] and (back.chunk_count, back.chunk_size) == (3, 16)
    for name, e in im.entries.items():
        np.testing.assert_array_equal(back.entries[name].sums, e.sums)
        np.testing.assert_array_equal(back.entries[name].counts, e.counts)
    r = gguf.GGUFReader(path)
    assert r.get_field("general.type").contents() == "imatrix"
    assert r.get_field("general.architecture") is None
    assert [t.name for t in r.tensors] == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts",
                                           "blk.1.ffn_up_exps.weight.in_sum2", "blk.1.ffn_up_exps.weight.counts"]
    assert [list(t.shape) for t in r.tensors][2:] == [[32, 4], [1, 4]]
    # the means llama-quantize derives: sum / count per expert, 1.0 for the expert never routed to
    mean = im.means()["blk.1.ffn_up_exps.weight"].reshape(4, 32)
    np.testing.assert_allclose(mean[0], sums[0] / 5, rtol=1e-6)
    assert (mean[1] == 1.0).all()
    # legacy .dat: (sum/count)*ncall per value, read back to the same means
    legacy = read_imatrix(write_legacy(im, tmp_path / "m.dat"))
    assert legacy.legacy and legacy.datasets == ["b.jsonl"] and legacy.chunk_count == 3
    for name, m in im.means().items():
        np.testing.assert_allclose(legacy.means()[name], m, rtol=1e-6)


def test_merge_adds_raw_sums_and_counts(olmoe_imatrix, tmp_path):
    a = read_imatrix(olmoe_imatrix)
    r = run_cli("imatrix-merge", olmoe_imatrix, olmoe_imatrix, "-o", tmp_path / "merged.gguf")
    assert r.returncode == 0, r.stderr
    merged = read_imatrix(tmp_path / "merged.gguf")
    for name, e in a.entries.items():
        np.testing.assert_allclose(merged.entries[name].sums, 2 * e.sums, rtol=1e-6)
        np.testing.assert_array_equal(merged.entries[name].counts, 2 * e.counts)
    assert merged.chunk_count == 2 * a.chunk_count and merged.datasets == a.datasets * 2
    # a legacy file turns back into raw form (× chunk size) before adding
    write_legacy(a, tmp_path / "a.dat")
    mixed = imatrix_file.merge([a, read_imatrix(tmp_path / "a.dat")])
    name = "blk.0.attn_q.weight"
    np.testing.assert_allclose(mixed.entries[name].sums, a.entries[name].sums * 2, rtol=1e-5)


@pytest.fixture(scope="module")
def unrouted_gguf(tmp_path_factory, bpe_tokenizer) -> Path:
    """A 1-layer OLMoE whose router can never pick expert 3. Every token embedding has +1 in dimension 7, which
    attention does not write to, and the FFN norm scales that dimension by 1000, so the router's input is
    large and positive there; only expert 3's router row weighs dimension 7, negatively. Embeddings are
    scaled up so that the tokens, not the attention output, decide the routing among the other experts."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("unrouted")
    src = fixtures.make_olmoe(folder / "src", bpe_tokenizer, layers=1, seed=1)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.embed_tokens.weight"] *= 30
    tensors["model.embed_tokens.weight"][:, 7] = 1.0
    tensors["model.layers.0.self_attn.o_proj.weight"][7, :] = 0.0
    tensors["model.layers.0.post_attention_layernorm.weight"][7] = 1000.0
    tensors["model.layers.0.mlp.gate.weight"][:, 7] = 0.0
    tensors["model.layers.0.mlp.gate.weight"][3, 7] = -1.0
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    return convert(src, folder / "unrouted-f16.gguf", "f16").dest


def test_coverage_names_unrouted_expert_and_iq2_m_still_quantizes(unrouted_gguf, calibration, tmp_path):
    out = tmp_path / "imatrix.gguf"
    r = run_cli("imatrix", unrouted_gguf, "-f", calibration, "--chunk-size", CHUNK, "--chunks", 2, "--threads", 1,
                "-o", out)
    assert r.returncode == 0, r.stderr
    for name in ("ffn_up_exps", "ffn_gate_exps", "ffn_down_exps"):
        assert f"blk.0.{name}.weight" in r.stdout
    assert "never routed" in r.stdout and "1.0" in r.stdout
    rows = imatrix_file.coverage(read_imatrix(out))
    assert [(row.tensor, row.unrouted) for row in rows] == [
        (f"blk.0.{n}.weight", [3]) for n in ("ffn_down_exps", "ffn_gate_exps", "ffn_up_exps")]
    assert read_imatrix(out).entries["blk.0.ffn_up_exps.weight"].counts.sum() == 2 * CHUNK * 2
    # in-process: llama.cpp's IQ2 grids are set up once per process, and the quantize tests share them
    made = quantize_one(unrouted_gguf, tmp_path / "iq2_m.gguf", "IQ2_M", imatrix=out).path
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(made).tensors}
    assert types["blk.0.ffn_up_exps.weight"] == "IQ2_S"  # IQ2_M's default type needs the imatrix: 1.0s for expert 3
    cov = run_cli("imatrix-coverage", out)
    assert cov.returncode == 0 and "blk.0.ffn_up_exps.weight" in cov.stdout


def test_chat_renders_conversations_through_the_gguf_template(olmoe_gguf, tmp_path):
    convs = tmp_path / "conversations.jsonl"
    turns = [{"messages": [{"role": "user", "content": f"Question {i}: what does os.path.join do?"},
                           {"role": "assistant", "content": "It joins path components. " * 12}]} for i in range(6)]
    convs.write_text("\n".join(json.dumps(t) for t in turns) + "\n")
    with LlamaModel(olmoe_gguf) as model:
        ids = cal_mod.calibration_tokens(model, [convs], chat=True)
        bos = bos_token(model)
        plain = model.tokenize(convs.read_text())
    # the template writes bos_token (then EOS after each assistant turn: the same <|endoftext|> here) as one
    # special token each, and <|user|> markers as text
    assert ids.count(bos) == 2 * len(turns)
    with LlamaModel(olmoe_gguf) as model:
        assert "<|user|>\nQuestion 0" in model.detokenize(ids)
    assert bos not in plain
    out = tmp_path / "chat.gguf"
    r = run_cli("imatrix", olmoe_gguf, "--chat", "-f", convs, "--chunk-size", 64, "--threads", 1, "-o", out)
    assert r.returncode == 0, r.stderr
    assert read_imatrix(out).datasets == [str(convs)]


def test_bad_inputs_fail_in_one_line_without_output(olmoe_gguf, calibration, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    out = tmp_path / "im.gguf"
    for args in (["imatrix", not_gguf, "-f", calibration, "-o", out],
                 ["imatrix-coverage", calibration]):
        r = run_cli(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:"), r.stderr
    for files, chat, message in (([tmp_path / "missing.txt"], False, "no such file"),
                                 ([calibration], True, "expected a JSON object"),
                                 ([not_gguf], False, "fewer than one chunk")):
        with pytest.raises(GgtoolError, match=message):
            im_mod.collect(olmoe_gguf, files, out, chunk_size=128, chat=chat)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_non_finite_activations_stop_collection_without_output(bpe_tokenizer, calibration, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = fixtures.make_olmoe(tmp_path / "src", bpe_tokenizer, layers=1)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.0.post_attention_layernorm.weight"][0] = 1e30  # squares overflow float32
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    model = convert(src, tmp_path / "nonfinite.gguf", "f32").dest
    with pytest.raises(GgtoolError, match="non-finite activations reached blk.0.ffn_gate_inp.weight"):
        im_mod.collect(model, [calibration], tmp_path / "im.gguf", chunk_size=64, max_chunks=2, n_threads=1)
    assert not (tmp_path / "im.gguf").exists()


def test_chunks_are_consecutive_with_bos_replacing_the_first_token_when_the_vocabulary_adds_one():
    ids = list(range(1, 11))
    assert cal_mod.make_chunks(ids, 4, 99) == [[99, 2, 3, 4], [99, 6, 7, 8]]  # as llama-imatrix / llama-perplexity
    assert cal_mod.make_chunks(ids, 4, None) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert ids == list(range(1, 11))
