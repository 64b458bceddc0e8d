"""Small checkpoints built deterministically, for the tests, the demo and the benchmarks.

Nothing here is downloaded: tokenizers are trained on the Python standard library's own sources,
which every machine with Python has, and weights come from a seeded generator.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np

TULU_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}"
)

MULTILINGUAL = (
    "Grüße aus München! Ça va très bien, merci. ¿Dónde está la estación? Привет, как дела? "
    "Γειά σου Κόσμε. 日本語のテキストも含めます。中文分词测试。한국어 문장입니다. "
    "Emoji: 🙂🚀✨ — en dash – ellipsis… «guillemets» „Anführungszeichen“ ½ ¾ ² ³ µ Ω ∑ √ ∞ ≠ ≤.\n"
)


def stdlib_files() -> list[Path]:
    """The standard library's .py files in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def stdlib_text(start: int, n_chars: int) -> str:
    """`n_chars` of standard-library source, beginning with file number `start`."""
    out, total = [], 0
    for p in stdlib_files()[start:]:
        text = p.read_text(encoding="utf-8", errors="replace")
        out.append(text)
        total += len(text)
        if total >= n_chars:
            break
    return "".join(out)[:n_chars]


def heldout_text(n_chars: int = 60_000) -> str:
    """Mixed text for tokenizer parity: code, prose, non-ASCII, runs of spaces, newlines and digits."""
    rng = np.random.default_rng(1234)
    code = stdlib_text(150, n_chars // 2)
    pieces = [code, MULTILINGUAL * 20]
    for i in range(200):
        digits = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(1, 14))))
        spaces = " " * int(rng.integers(1, 9))
        newlines = "\n" * int(rng.integers(1, 4))
        pieces.append(f"Item {i}:{spaces}{digits}{newlines}\t{spaces}value = {digits[::-1]}  \n")
    text = "".join(pieces)
    while len(text) < n_chars:
        text += code[: n_chars - len(text)]
    return text


def train_bpe_tokenizer(folder: Path, vocab_size: int = 4096, chat_template: str | None = TULU_TEMPLATE) -> Path:
    """A byte-level BPE (GPT-2 style pre-tokenizer) trained on stdlib sources, saved HF-style in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = stdlib_text(0, 1_500_000) + MULTILINGUAL
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
              "eos_token": "<|endoftext|>", "pad_token": "<|padding|>", "add_bos_token": False,
              "add_eos_token": False, "model_max_length": 4096}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja"):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())


def make_olmoe(folder: Path, tokenizer_dir: Path, *, seed: int = 0, hidden_size: int = 256, layers: int = 2,
               experts: int = 8, top_k: int = 2, intermediate_size: int = 128, heads: int = 4,
               vocab_size: int = 4160, init_std: float = 0.08, dtype: str = "float32", **overrides) -> Path:
    """A random OlmoeForCausalLM saved with save_pretrained, plus the tokenizer files."""
    import torch
    from transformers import OlmoeConfig, OlmoeForCausalLM

    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    pad = next((t["id"] for t in tok["added_tokens"] if t["content"] == "<|padding|>"), None)
    config = OlmoeConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         num_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=4096,
                         norm_topk_prob=False, initializer_range=init_std, eos_token_id=eos, pad_token_id=pad,
                         bos_token_id=None, tie_word_embeddings=False, **overrides)
    torch.manual_seed(seed)
    model = OlmoeForCausalLM(config)
    with torch.no_grad():  # norms start at 1.0; perturb them so a wrong norm mapping cannot hide
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(folder))
    copy_tokenizer(tokenizer_dir, folder)
    return folder
