"""Small checkpoints built deterministically, for the tests, the demo and the benchmarks.

Nothing here is downloaded: tokenizers are trained on the Python standard library's own sources,
which every machine with Python has, and weights come from a seeded generator.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np

from .families.metis import METIS_CHAT_TEMPLATE
from .families.olmoe import TULU_TEMPLATE

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
    for path in sorted((src / "additional_chat_templates").glob("*.jinja")):
        (dst / "additional_chat_templates").mkdir(exist_ok=True)
        (dst / "additional_chat_templates" / path.name).write_bytes(path.read_bytes())


def save_random_model(model_class, config, folder: Path, seed: int, dtype: str) -> None:
    """A seeded random transformers model saved with save_pretrained (norm weights perturbed off 1.0)."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():  # norms start at 1.0; perturb them so a wrong norm mapping cannot hide
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.to(getattr(torch, dtype)).save_pretrained(str(folder))


def make_olmoe(folder: Path, tokenizer_dir: Path, *, seed: int = 0, hidden_size: int = 256, layers: int = 2,
               experts: int = 8, top_k: int = 2, intermediate_size: int = 128, heads: int = 4,
               vocab_size: int = 4160, init_std: float = 0.08, dtype: str = "float32", **overrides) -> Path:
    """A random OlmoeForCausalLM saved with save_pretrained, plus the tokenizer files."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    pad = next((t["id"] for t in tok["added_tokens"] if t["content"] == "<|padding|>"), None)
    settings = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                    num_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=4096,
                    norm_topk_prob=False, initializer_range=init_std, eos_token_id=eos, pad_token_id=pad,
                    bos_token_id=None, tie_word_embeddings=False)
    config = OlmoeConfig(**{**settings, **overrides})
    save_random_model(OlmoeForCausalLM, config, folder, seed, dtype)
    copy_tokenizer(tokenizer_dir, folder)
    return folder


def make_tiny_olmoe(folder: Path, tokenizer_dir: Path, *, vocab_size: int, seed: int = 0) -> Path:
    """The smallest OLMoE that carries a given tokenizer (hidden 16, one layer, 2 experts): for tokenizer tests
    on large vocabularies, where the weights only need to exist."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_experts=2, num_experts_per_tok=1,
                         max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                         tie_word_embeddings=False)
    save_random_model(OlmoeForCausalLM, config, folder, seed, "float16")
    copy_tokenizer(tokenizer_dir, folder)
    return folder


def train_spm_tokenizer(folder: Path, vocab_size: int = 4096, n_chars: int = 600_000,
                        chat_template: str | None = None, text: str | None = None, **options) -> Path:
    """A SentencePiece BPE (byte fallback, Llama-2 settings) trained on stdlib sources (or on `text`), saved
    HF-style in `folder`."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    lines = (stdlib_text(0, n_chars) + MULTILINGUAL if text is None else text).splitlines()
    settings = dict(model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=0.9995,
                    normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
                    split_digits=True, allow_whitespace_only_pieces=True, max_sentence_length=1 << 16,
                    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2)
    settings.update(options)
    spm.SentencePieceTrainer.train(sentence_iterator=iter([ln for ln in lines if ln.strip()]),
                                   model_prefix=str(folder / "tokenizer"), **settings)
    (folder / "tokenizer.vocab").unlink(missing_ok=True)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "model_max_length": 4096}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def make_mixtral(folder: Path, tokenizer_dir: Path, *, seed: int = 0, hidden_size: int = 256, layers: int = 2,
                 experts: int = 8, top_k: int = 2, intermediate_size: int = 128, heads: int = 8, kv_heads: int = 2,
                 vocab_size: int = 4160, init_std: float = 0.08, dtype: str = "float32", fused: bool = False,
                 **overrides) -> Path:
    """A random MixtralForCausalLM (GQA) saved with save_pretrained, plus the tokenizer files.

    `fused=True` rewrites the experts in the fused layout transformers >= 5 uses in memory
    (`mlp.experts.gate_up_proj` / `down_proj`, router `mlp.gate.weight`), which it also loads.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import MixtralConfig, MixtralForCausalLM

    settings = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                    num_local_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=4096,
                    initializer_range=init_std, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                    tie_word_embeddings=False)
    config = MixtralConfig(**{**settings, **overrides})
    save_random_model(MixtralForCausalLM, config, folder, seed, dtype)
    if fused:
        path = folder / "model.safetensors"
        tensors = load_file(str(path))
        out = {k.replace(".block_sparse_moe.gate.", ".mlp.gate."): v for k, v in tensors.items()
               if ".experts." not in k}
        for b in range(layers):
            pre = f"model.layers.{b}.block_sparse_moe.experts"
            w = {n: torch.stack([tensors[f"{pre}.{x}.{n}.weight"] for x in range(experts)]) for n in ("w1", "w2", "w3")}
            out[f"model.layers.{b}.mlp.experts.gate_up_proj"] = torch.cat([w["w1"], w["w3"]], dim=1).contiguous()
            out[f"model.layers.{b}.mlp.experts.down_proj"] = w["w2"].contiguous()
        save_file(out, str(path), metadata={"format": "pt"})
    copy_tokenizer(tokenizer_dir, folder)
    return folder


def spm_to_hf_tokenizer(spm_dir: Path, folder: Path) -> Path:
    """The SentencePiece BPE in `spm_dir` rewritten as a Llama-2-style byte-fallback BPE tokenizer.json (no .model)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    folder.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    merges = []  # every split of a piece into two pieces, in the piece's score order (SentencePiece's merge order)
    for piece, i in vocab.items():
        if sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i):
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += [(i, vocab[a], vocab[b], a, b) for a, b in splits]
    merges = [(a, b) for *_, a, b in sorted(merges)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                            for i in range(sp.vocab_size()) if sp.is_control(i) or sp.is_unknown(i)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_bytes((spm_dir / "tokenizer_config.json").read_bytes())
    return folder


# --- SSMoELM: packed 1-bit/4-bit safetensors ----------------------------------------------------------

SSMOELM_SPECIAL_TOKENS = ["<bos>", "<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|eot|>"]


def train_byte_fallback_bpe(folder: Path, vocab_size: int = 8192,
                            special_tokens: list[str] = SSMOELM_SPECIAL_TOKENS) -> Path:
    """A SentencePiece-style BPE with byte fallback (specials first, then <0x00>..<0xFF>), saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, show_progress=False, special_tokens=special_tokens)
    tok.train_from_iterator(stdlib_text(0, 1_000_000).splitlines(keepends=True), trainer)
    # byte tokens go right after the specials (as in Llama's tokenizer); the learned tokens move up by 256
    tj = json.loads(tok.to_str())
    learned = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])[len(special_tokens):]
    vocab = {t: i for i, t in enumerate(special_tokens)}
    vocab.update({f"<0x{b:02X}>": len(special_tokens) + b for b in range(256)})
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    tj["model"]["vocab"] = vocab
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return folder


def pack_bits(signs: np.ndarray) -> np.ndarray:
    """±1 codes [rows, cols] as numpy.packbits rows (MSB first, 1 means +1), zero-padded to whole bytes."""
    return np.packbits(signs > 0, axis=1)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """-8..7 codes [rows, cols] as two's-complement nibbles, two per byte, low nibble first."""
    nibbles = (codes.astype(np.int8) & 0xF).astype(np.uint8)
    if nibbles.shape[1] % 2:
        nibbles = np.pad(nibbles, ((0, 0), (0, 1)))
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def packed_entries(key: str, codes: np.ndarray, scale: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """The safetensors entries of one packed matrix: codes, fp16 row scales, shape and column count."""
    data = pack_bits(codes) if bits == 1 else pack_int4(codes)
    rows, cols = codes.shape
    return {f"{key}__{'bin' if bits == 1 else 'int4'}": data, f"{key}__scale": scale.astype(np.float16),
            f"{key}__shape": np.array([rows, cols], dtype=np.int32), f"{key}__cols": np.array([cols], dtype=np.int32)}


def ssmoelm_tensors(*, seed: int = 0, layers: int = 6, d_model: int = 768, heads: int = 12, kv_heads: int = 3,
                    head_dim: int = 64, experts: int = 8, d_ff: int = 256, d_ff_shared: int = 256,
                    vocab_size: int = 8192, layer_ids: list[int] | None = None) -> dict[str, np.ndarray]:
    """Random packed SSMoELM tensors at the card's precisions, named as ggtool's SSMoELM table assumes."""
    rng = np.random.default_rng(seed)
    layer_ids = list(range(layers)) if layer_ids is None else layer_ids
    last = max(layer_ids)
    out: dict[str, np.ndarray] = {}

    def matrix(key: str, rows: int, cols: int, bits: int, gain: float = 1.0) -> None:
        if bits == 1:
            codes, spread = rng.choice(np.array([-1, 1], dtype=np.int8), size=(rows, cols)), 1.0
        else:
            codes, spread = rng.integers(-8, 8, size=(rows, cols), dtype=np.int8), 21.25 ** 0.5
        scale = gain / (spread * cols ** 0.5) * rng.uniform(0.5, 1.5, size=rows)  # per-row scales differ
        out.update(packed_entries(key, codes, scale, bits))

    def plain(key: str, arr: np.ndarray) -> None:
        out[key] = arr.astype(np.float16)

    matrix("embed.weight", vocab_size, d_model, 4, gain=d_model ** 0.5 * 0.05)
    for lid in layer_ids:
        p = f"layers.{lid}."
        vo_bits = 4 if lid in (0, last) else 1  # the card: V/O 4-bit in the first and last layer, 1-bit between
        plain(p + "attn_norm.weight", 1 + 0.1 * rng.standard_normal(d_model))
        matrix(p + "attn.q_proj.weight", heads * head_dim, d_model, 4)
        matrix(p + "attn.k_proj.weight", kv_heads * head_dim, d_model, 4)
        matrix(p + "attn.v_proj.weight", kv_heads * head_dim, d_model, vo_bits)
        matrix(p + "attn.o_proj.weight", d_model, heads * head_dim, vo_bits, gain=0.5)
        plain(p + "ffn_norm.weight", 1 + 0.1 * rng.standard_normal(d_model))
        plain(p + "moe.router.weight", rng.standard_normal((experts, d_model)) * 2 / d_model ** 0.5)
        for x in range(experts):
            q = f"{p}moe.experts.{x}."
            matrix(q + "gate_proj.weight", d_ff, d_model, 1)
            matrix(q + "up_proj.weight", d_ff, d_model, 1)
            matrix(q + "down_proj.weight", d_model, d_ff, 1, gain=0.5)
        matrix(p + "moe.shared_expert.gate_proj.weight", d_ff_shared, d_model, 4)
        matrix(p + "moe.shared_expert.up_proj.weight", d_ff_shared, d_model, 4)
        matrix(p + "moe.shared_expert.down_proj.weight", d_model, d_ff_shared, 4, gain=0.5)
    plain("norm.weight", 1 + 0.1 * rng.standard_normal(d_model))
    return out


def save_ssmoelm(folder: Path, tensors: dict[str, np.ndarray], tokenizer_dir: Path,
                 metadata: dict[str, str] | None = None) -> Path:
    """An SSMoELM checkpoint folder: model.safetensors, tokenizer.json and an empty config.json."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "ssmoelm-packed", **(metadata or {})})
    # the released repos ship no config.json; ggtool's checkpoint reader needs one, so an empty one stands in
    (folder / "config.json").write_text("{}\n")
    copy_tokenizer(tokenizer_dir, folder)
    return folder


def make_ssmoelm(folder: Path, tokenizer_dir: Path, *, five_layer: bool = False, **dims) -> Path:
    """A random packed SSMoELM checkpoint; `five_layer`: the -it-5L layout (layers 0,1,2,3,5; layer 3 run twice)."""
    if not five_layer:
        return save_ssmoelm(folder, ssmoelm_tensors(**dims), tokenizer_dir)
    tensors = ssmoelm_tensors(layer_ids=[0, 1, 2, 3, 5], **dims)
    return save_ssmoelm(folder, tensors, tokenizer_dir,
                        metadata={"layer_ids": "[0, 1, 2, 3, 5]", "pass_order": "[0, 1, 2, 3, 3, 5]"})



# --- Metis-1.5: a JAX pytree flattened into safetensors (metis_jax_safetensors_v1), bf16 -------------

# the 44 byte values whose byte-level symbols the released vocabulary lacks (models.md §4.5)
METIS_ABSENT_BYTES = [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, 0xC0, 0xC1, *range(0xF5, 0x100)]
METIS_GENERATION_CONFIG = {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256,
                           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def train_metis_tokenizer(folder: Path, vocab_size: int = 2000) -> Path:
    """An NFKC + byte-level BPE like Metis-1.5's: <pad>,<bos>,<eos>,<unk> = 0..3, 44 byte symbols left out."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from .families.metis import byte_symbols

    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    absent = set(METIS_ABSENT_BYTES)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  initial_alphabet=[s for b, s in enumerate(symbols) if b not in absent])
    # the training text must not contain the left-out bytes (the others, 0xC0/0xC1/0xF5+, never occur in UTF-8)
    text = (stdlib_text(0, 400_000) + MULTILINGUAL).translate({b: None for b in absent if b < 0x80})
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1",
                                                       special_tokens=[("<bos>", 1), ("<eos>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "add_bos_token": True, "add_eos_token": True,
              "model_max_length": 1024, "chat_template": METIS_CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return folder


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as JAX's astype(bfloat16) does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """A safetensors file of bf16 tensors, in the given order (numpy has no bf16 for the safetensors package)."""
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        blob = f32_to_bf16_bits(arr).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for blob in blobs:
            f.write(blob)


def make_metis(folder: Path, tokenizer_dir: Path, *, seed: int = 0, d_model: int = 192, layers: int = 2,
               heads: int = 6, kv_heads: int = 2, head_dim: int = 32, experts: int = 8, top_k: int = 2,
               latent: int = 64, expert_ff: int = 96, shared_ff: int = 128, vocab_size: int | None = None,
               bias_std: float = 0.5, edit=None) -> Path:
    """A random Metis-1.5-shaped checkpoint: JAX tensor names, [in, out] layout, bf16, the stale config.json.

    `edit(tensors)` may change the float32 tensors (a dict in file order) before they are written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    n_vocab = vocab_size or len(tok["model"]["vocab"])
    rng = np.random.default_rng(seed)

    def proj(*shape: int) -> np.ndarray:  # [.., in, out] scaled by fan-in so activations stay O(1)
        return (rng.standard_normal(shape) / np.sqrt(shape[-2])).astype(np.float32)

    def norm() -> np.ndarray:  # not all ones, so a wrong norm mapping cannot hide
        return (1.0 + 0.1 * rng.standard_normal(d_model)).astype(np.float32)

    t: dict[str, np.ndarray] = {"embed": (0.08 * rng.standard_normal((n_vocab, d_model))).astype(np.float32),
                                "final_norm.scale": norm()}
    for b in range(layers):
        p = f"layers.{b}."
        t.update({p + "attn_norm.scale": norm(), p + "q": proj(d_model, heads * head_dim),
                  p + "k": proj(d_model, kv_heads * head_dim), p + "v": proj(d_model, kv_heads * head_dim),
                  p + "o": proj(heads * head_dim, d_model), p + "moe_norm.scale": norm(),
                  p + "latent_down": proj(d_model, latent), p + "latent_up": proj(latent, d_model),
                  p + "router": proj(d_model, experts),
                  # large enough that selection by s + b often differs from selection by s alone
                  p + "router_bias": (bias_std * rng.standard_normal(experts)).astype(np.float32),
                  p + "expert_w1": proj(experts, latent, expert_ff), p + "expert_w2": proj(experts, expert_ff, latent),
                  p + "shared_w1": proj(d_model, shared_ff), p + "shared_w2": proj(shared_ff, d_model)})
    if edit is not None:
        edit(t)
    write_bf16_safetensors(folder / "model.safetensors", t, {"format": "metis_jax_safetensors_v1"})
    config = {"architectures": ["MetisMoRLMHeadModel"], "model_type": "metis_multihead_latent_moe",
              "architecture": "metis_multihead_latent_moe_decoder", "name": "Metis-1.5", "vocab_size": n_vocab,
              "block_size": 1024, "d_model": d_model, "n_layer": layers, "n_heads": heads, "n_kv_heads": kv_heads,
              "head_dim": head_dim, "intermediate_size": 4096, "hidden_act": "swiglu",  # stale, as released
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "unk_token_id": 3, "tie_embeddings": True,
              "rope_theta": 10000.0, "rms_norm": True, "attention_bias": False, "mlp_bias": False,
              "torch_dtype": "bfloat16", "mor_max_depth": 3}
    if (experts, top_k) != (32, 4):  # the release's config.json has no MoE keys; a smaller model must say top-k
        config["moe_top_k"] = top_k
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(METIS_GENERATION_CONFIG, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return folder


# --- small trained models -----------------------------------------------------------------------------

def unigram_loss(train_ids: np.ndarray, held_ids: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) of held-out tokens under add-one-smoothed training unigram frequencies."""
    counts = np.bincount(train_ids, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[held_ids].mean())


def held_out_loss(model, held_ids: np.ndarray, seq_len: int, batch: int) -> float:  # noqa: ANN001
    """Mean next-token cross-entropy (transformers) over non-overlapping `seq_len` windows of a token stream."""
    import torch

    n = (len(held_ids) - 1) // seq_len
    x = torch.from_numpy(held_ids[: n * seq_len + 1])
    inputs = x[:-1].view(n, seq_len)
    targets = x[1:].view(n, seq_len)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            logits = model(input_ids=inputs[i:i + batch]).logits.float()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       targets[i:i + batch].reshape(-1), reduction="sum").item()
    model.train()
    return total / (n * seq_len)


def train_causal_lm(model, ids: np.ndarray, *, steps: int, batch: int, seq_len: int, lr: float, seed: int,  # noqa: ANN001
                    aux_loss_coef: float = 0.01, log=None) -> None:  # noqa: ANN001
    """Next-token training of a transformers MoE on random windows of `ids`: AdamW (0.9, 0.95, weight decay 0.1),
    linear warm-up over 5% of the steps then cosine to 10% of `lr`, gradients clipped at 1, the router's
    load-balancing loss added at `aux_loss_coef`. Deterministic for a seed and a thread count.
    `log(step, loss)` is called every 25 steps and at the last."""
    import math

    import torch

    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    rng = np.random.default_rng(seed)
    starts = len(ids) - seq_len - 1
    model.train()
    for step in range(steps):
        offsets = rng.integers(0, starts, size=batch)
        window = torch.from_numpy(np.stack([ids[o:o + seq_len + 1] for o in offsets]))
        result = model(input_ids=window[:, :-1], output_router_logits=True)
        lm_loss = torch.nn.functional.cross_entropy(result.logits.reshape(-1, vocab), window[:, 1:].reshape(-1))
        (lm_loss + aux_loss_coef * result.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        if log and (step % 25 == 0 or step == steps - 1):
            log(step, lm_loss.item())


def train_mixtral(folder: Path, text: str, heldout: str, *, steps: int = 240, seed: int = 0, vocab_size: int = 2048,
                  seq_len: int = 128, batch: int = 8, lr: float = 3e-3, threads: int = 1, **shape) -> dict:
    """A small neo-3 (MixtralForCausalLM) trained here on `text`: a SentencePiece tokenizer trained on the same
    text, `make_mixtral`'s model (keyword `shape` overrides: layers, experts, top_k, intermediate_size, ...)
    trained for `steps` steps, saved in bf16 as released checkpoints are. Returns its training log: held-out
    loss on `heldout` (never trained on) beside the unigram baseline, nats/token."""
    import time

    import sentencepiece as spm
    import torch
    from transformers import MixtralForCausalLM

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = train_spm_tokenizer(folder / "tokenizer", vocab_size=vocab_size, text=text)
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    train_ids = np.asarray(sp.encode(text), dtype=np.int64)
    held_ids = np.asarray(sp.encode(heldout), dtype=np.int64)
    src = make_mixtral(folder / "model", tok_dir, seed=seed, vocab_size=vocab_size, init_std=0.02, **shape)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = MixtralForCausalLM.from_pretrained(str(src), dtype=torch.float32)
        train_causal_lm(model, train_ids, steps=steps, batch=batch, seq_len=seq_len, lr=lr, seed=seed,
                        aux_loss_coef=0.01)
        model = model.to(torch.bfloat16).to(torch.float32)  # measured as shipped
        loss = held_out_loss(model, held_ids, seq_len, batch)
        model.to(torch.bfloat16).save_pretrained(str(src))
    finally:
        torch.set_num_threads(threads_before)
    return {"steps": steps, "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids)),
            "heldout_loss": round(loss, 4), "unigram_loss": round(unigram_loss(train_ids, held_ids, vocab_size), 4),
            "seconds": round(time.perf_counter() - t0, 1), "src": str(src)}
