"""Issue 16 on a second, differently shaped model, trained here: ggtool's mix against llama.cpp's stock recipes.

The default model is an OLMoE (hidden 256, 4 layers, 8 experts top-2 of width 256, 4 heads with q/k norms,
byte-level BPE). This one is a neo-3 (Mixtral: `llama` with experts in llama.cpp): 2 layers, 4 experts top-1 of
width 512, 8 query heads sharing 2 KV heads, a SentencePiece vocabulary of 2048, trained for 200 steps
on the calibration text and the conversations. The mix is chosen on a slice of the calibration text and scored on
`imatrix_data/heldout.txt`, which neither training nor choosing reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggtool import fixtures

DATA = Path(__file__).resolve().parent.parent / "imatrix_data"
RUNGS = ("IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M")
SHAPE = dict(layers=2, experts=4, top_k=1, intermediate_size=512, heads=8, kv_heads=2)


def training_text() -> str:
    """The calibration text and the conversations' turns as plain text (never the held-out text)."""
    turns = [m["content"] for line in (DATA / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip() for m in json.loads(line)["messages"]]
    return (DATA / "calibration.txt").read_text(encoding="utf-8") + "\n\n" + "\n\n".join(turns)


def build(folder: Path, steps: int = 200, calibration_chars: int = 40_000, heldout_chars: int = 12_000,
          on_step=None) -> tuple:  # noqa: ANN001
    """Train the neo-3 and run `ladder --mix` on it: (training log, ladder result). Shared with
    bench/mix_second_model.py."""
    from ggtool.ladder import ladder

    heldout = (DATA / "heldout.txt").read_text(encoding="utf-8")[:heldout_chars]
    log = fixtures.train_mixtral(folder / "neo3", training_text(), heldout, steps=steps, **SHAPE)
    calibration, heldout_file = folder / "calibration.txt", folder / "heldout.txt"
    calibration.write_text((DATA / "calibration.txt").read_text(encoding="utf-8")[:calibration_chars])
    heldout_file.write_text(heldout)
    result = ladder(Path(log["src"]), folder / "ladder", list(RUNGS), calibration=[calibration], conversations=None,
                    heldout=heldout_file, chunk_size=256, eval_ctx=256, mix=True, on_step=on_step)
    return log, result


@pytest.fixture(scope="module")
def neo3_ladder(tmp_path_factory):
    return build(tmp_path_factory.mktemp("neo3-mix"))


def test_the_second_model_is_a_trained_neo3_of_another_shape(neo3_ladder):
    log, result = neo3_ladder
    config = json.loads((Path(log["src"]) / "config.json").read_text())
    default = json.loads((Path(fixtures.__file__).parent / "default_model" / "config.json").read_text())
    assert config["model_type"] == "mixtral" != default["model_type"]
    assert (config["num_hidden_layers"], config["num_local_experts"], config["num_experts_per_tok"],
            config["intermediate_size"]) != (default["num_hidden_layers"], default["num_experts"],
                                             default["num_experts_per_tok"], default["intermediate_size"])
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    # learned from its text, so its quantization errors are a trained model's, not noise's
    print(f"\ntrained: {log}")
    assert log["unigram_loss"] - log["heldout_loss"] >= 0.5, log


def test_ggtool_mix_beats_the_stock_recipe_on_a_second_model(neo3_ladder):
    """As on the default model: at the stock file's size ±1%, mean KL on the held-out text at least 10% lower
    than llama.cpp's recipe for IQ2_M and Q3_K_M and no higher for IQ3_M and Q4_K_M; the mix is in the file."""
    from ggtool.gguf_in import read_header
    from ggtool.mix import group_of, read_mix

    _, result = neo3_ladder
    rows = {v.type: v for v in result.report.variants}
    assert set(rows) == {*RUNGS, *(f"{t}-mix" for t in RUNGS)}
    table = [f"{'type':<7} {'size stock → mix':>24} {'KL stock':>16} {'KL mix':>16} {'Δ':>7} {'top-1':>15} "
             f"{'PPL':>15}"]
    for t in RUNGS:
        s, m = rows[t], rows[f"{t}-mix"]
        table.append(f"{t:<7} {s.size_bytes:>10,} → {m.size_bytes:>10,} {s.kl_mean:.5f}±{s.kl_stderr:.5f} "
                     f"{m.kl_mean:.5f}±{m.kl_stderr:.5f} {100 * (m.kl_mean / s.kl_mean - 1):+6.1f}% "
                     f"{100 * s.top1:5.1f}→{100 * m.top1:5.1f}% {s.ppl:6.1f}→{m.ppl:6.1f}")
    print(f"\nheld-out {Path(result.report.text).name}: {result.report.n_tokens} scored tokens\n" + "\n".join(table))
    for t, gain in (("IQ2_M", 0.10), ("Q3_K_M", 0.10), ("IQ3_M", 0.0), ("Q4_K_M", 0.0)):
        stock, mix = rows[t], rows[f"{t}-mix"]
        assert abs(mix.size_bytes / stock.size_bytes - 1) <= 0.01, (t, mix.size_bytes, stock.size_bytes)
        assert mix.kl_mean <= (1 - gain) * stock.kl_mean, "\n".join(table)
        recorded = read_mix(mix.file)
        assert recorded["label"] == f"{t}-mix" and int(recorded["target_bytes"]) == stock.size_bytes
        types = {tt.name: tt.type.name for tt in read_header(mix.file).tensors}
        for key, value in recorded.items():
            if key.startswith("type."):
                names = [n for n in types if group_of(n) == key[len("type."):]]
                assert names and all(types[n] == value for n in names), (key, value, names)


def test_planner_predicts_the_buffers_of_the_mixed_files(neo3_ladder):
    """The placement planner's buffers for every mixed file within 5% of what llama.cpp's load logs: experts of
    layer 1 on the host beside an RPC device; every layer on the host with flash attention and a q8_0 cache (K and
    V Hadamard-rotated); one layer offloaded with flash attention, a q4_0 cache and 256-token micro-batches."""
    from ggtool.plan.memory import Placement

    from .test_plan import check_predictions, start_rpc_server

    _, result = neo3_ladder
    proc, endpoint = start_rpc_server()
    try:
        for v in result.report.variants:
            if v.type.endswith("-mix"):
                for p in (Placement(99, 512, "f16", "f16", False, (1,)), Placement(1, 1024, "q8_0", "q8_0", True, ()),
                          Placement(1, 4096, "q4_0", "q4_0", True, (), 512, 256)):
                    check_predictions(Path(v.file), p, endpoint)
    finally:
        proc.kill()
        proc.wait()
