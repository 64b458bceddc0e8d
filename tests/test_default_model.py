"""The embedded default model: what the model card claims, and llama.cpp's parity with transformers on it."""

from __future__ import annotations

import json
from pathlib import Path

from ggtool import DEFAULT_MODEL
from ggtool.convert import convert
from ggtool.verify import verify


def test_default_model_is_small_and_shaped_for_every_k_and_i_quant():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "training_log.json", "generation_config.json"} <= set(files)
    assert sum(files.values()) <= 20_000_000
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["model_type"] == "olmoe"
    assert config["hidden_size"] % 256 == 0 and config["intermediate_size"] % 256 == 0
    assert config["num_experts"] >= 8 and config["num_experts_per_tok"] >= 2
    assert "<|assistant|>" in json.loads((DEFAULT_MODEL / "tokenizer_config.json").read_text())["chat_template"]


def test_training_log_shows_learning_beyond_unigram_statistics():
    log = json.loads((DEFAULT_MODEL / "training_log.json").read_text())
    assert log["unigram_loss"] - log["heldout_loss"] >= 1.0
    card = (DEFAULT_MODEL / "README.md").read_text()
    assert str(log["heldout_loss"]) in card and str(log["unigram_loss"]) in card


def test_default_model_f32_matches_transformers_exactly(tmp_path: Path):
    dest = convert(DEFAULT_MODEL, tmp_path / "default-F32.gguf", "f32").dest
    r = verify(DEFAULT_MODEL, dest, 128)
    assert r.passed
    assert r.top1_agreement == 1.0
    assert r.rel_diff <= 1e-4
