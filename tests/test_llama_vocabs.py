"""llama.cpp's own tokenizer test vectors (models/ggml-vocab-*.gguf + .inp/.out in the vendored source).

For every byte-level BPE vocabulary there, a tokenizer.json is rebuilt from the GGUF's tokens and merges with
the normalizer and pre-tokenizer the upstream model's tokenizer.json has. The rebuilt tokenizer must give
llama.cpp's expected ids under HF tokenizers (the .out files were made with the upstream tokenizers, so this
proves the rebuild is faithful); then ggtool converts it, must choose the `tokenizer.ggml.pre` llama.cpp's
converter writes (or a name llama.cpp gives the same rules), and llama.cpp must tokenize every .inp line to
the .out ids.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from ggtool import fixtures
from ggtool.convert import convert
from ggtool.gguf_in import read_header
from ggtool.llama.model import LlamaModel
from ggtool.llama.source import source_dir

SEP = "\n__ggml_vocab_test__\n"
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
BYTE_LEVEL_NO_REGEX = {**BYTE_LEVEL, "use_regex": False}
NFC = {"type": "NFC"}


def split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def seq(*nodes: dict) -> dict:
    return {"type": "Sequence", "pretokenizers": list(nodes)}


LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DIGITS_1 = {"type": "Digits", "individual_digits": True}
CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"  # escapes: NFC-normalizing editors would change the text
DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf"
    "\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d"
    "\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-"
    "\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113"
    "\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
    "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b"
    "\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-"
    "\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+")
EMPTY_SEQUENCE = {"type": "Sequence", "normalizers": []}

# vocabulary -> (upstream repo, its normalizer, its pre_tokenizer, model.ignore_merges, names llama.cpp gives these
# rules; the first is the one llama.cpp's convert_hf_to_gguf.py writes for the repo). The definitions are those
# of each repo's tokenizer.json (the repos convert_hf_to_gguf_update.py lists); the HF check below confirms them
# against llama.cpp's expected ids.
UPSTREAM = {
    "gpt-2": ("openai-community/gpt2", None, BYTE_LEVEL, False, ["gpt-2"]),
    "llama-bpe": ("meta-llama/Meta-Llama-3-8B", None, seq(split(LLAMA3), BYTE_LEVEL_NO_REGEX), True, ["llama-bpe"]),
    "qwen2": ("Qwen/Qwen1.5-7B", NFC, seq(split(QWEN2), BYTE_LEVEL_NO_REGEX), False, ["qwen2"]),
    "qwen35": ("Qwen/Qwen3.5-9B-Instruct", None, seq(split(QWEN35), BYTE_LEVEL_NO_REGEX), False, ["qwen35"]),
    "starcoder": ("bigcode/starcoder2-3b", None, seq(DIGITS_1, BYTE_LEVEL), False, ["starcoder"]),
    "refact": ("smallcloudai/Refact-1_6-base", None, seq(DIGITS_1, BYTE_LEVEL), False, ["refact", "starcoder"]),
    "command-r": ("CohereForAI/c4ai-command-r-v01", NFC, seq(DIGITS_1, BYTE_LEVEL), False, ["command-r"]),
    "mpt": ("mosaicml/mpt-7b", NFC, BYTE_LEVEL, False, ["mpt", "olmo", "gpt-2"]),
    "deepseek-coder": ("deepseek-ai/deepseek-coder-6.7b-base", EMPTY_SEQUENCE,
                       seq(split("[\r\n]"), split(r"\s?\p{L}+"), split(r"\s?\p{P}+"), split(CJK), DIGITS_1,
                           BYTE_LEVEL_NO_REGEX), False, ["deepseek-coder"]),
    "deepseek-llm": ("deepseek-ai/deepseek-llm-7b-base", EMPTY_SEQUENCE,
                     seq(split("[\r\n]"), split(DEEPSEEK_LETTERS),
                         split("\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"),
                         split(r"\s+$"), split(CJK), {"type": "Digits", "individual_digits": False},
                         BYTE_LEVEL_NO_REGEX), False, ["deepseek-llm"]),
    "falcon": ("tiiuae/falcon-7b", None,
               seq({"type": "Punctuation", "behavior": "Contiguous"}, BYTE_LEVEL,
                   {"type": "Digits", "individual_digits": False}, split("[0-9][0-9][0-9]")), False, ["falcon"]),
}


def vocab_files(name: str) -> tuple[Path, list[str], list[list[int]]]:
    """The vendored GGUF and its test lines with the expected ids."""
    src = source_dir(download=False)
    assert src is not None, "the vendored llama.cpp source is missing: run `make install`"
    path = src / "models" / f"ggml-vocab-{name}.gguf"
    raw = Path(f"{path}.inp").read_text(encoding="utf-8")
    lines = raw.split(SEP)
    if lines and lines[-1] == "":
        lines.pop()
    outs = [[int(x) for x in line.split()] for line in Path(f"{path}.out").read_text().splitlines()]
    assert len(lines) == len(outs) > 40
    return path, lines, outs


def gguf_metadata(path: Path) -> dict:
    """All key/values of a GGUF (arrays included), read in one pass: gguf-py's reader takes a minute on the
    large vocabularies."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):  # noqa: ANN202
        nonlocal pos
        value = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value[0]

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n:pos].decode("utf-8")

    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def value(kind: int):  # noqa: ANN202
        if kind == 8:
            return string()
        if kind == 9:
            item, n = take("<I"), take("<Q")
            return [value(item) for _ in range(n)]
        return take(scalar[kind])

    assert data[:4] == b"GGUF"
    pos = 8
    take("<Q")  # tensor count
    n_kv = take("<Q")
    out = {}
    for _ in range(n_kv):
        key = string()
        out[key] = value(take("<I"))
    return out


def rebuild_tokenizer(path: Path, normalizer: dict | None, pre_tokenizer: dict,
                      ignore_merges: bool) -> tuple[dict, dict]:
    """tokenizer.json + tokenizer_config.json from a GGUF's tokens, types and merges."""
    meta = gguf_metadata(path)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = meta["tokenizer.ggml.merges"]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": ty == 3} for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)]
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
          "pre_tokenizer": pre_tokenizer, "post_processor": None,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                    "ignore_merges": ignore_merges, "vocab": {t: i for i, t in enumerate(tokens)},
                    "merges": [m.split(" ", 1) for m in merges]}}
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return tj, {"eos_token": tokens[eos] if eos is not None else None, "add_bos_token": False, "add_eos_token": False}


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_llama_cpp_vocab_converts_and_tokenizes_its_test_lines(name, tmp_path, recwarn):
    repo, normalizer, pre_tokenizer, ignore_merges, accepted = UPSTREAM[name]
    path, lines, expected = vocab_files(name)
    tj, tc = rebuild_tokenizer(path, normalizer, pre_tokenizer, ignore_merges)
    hf = Tokenizer.from_str(json.dumps(tj))
    assert [hf.encode(line, add_special_tokens=False).ids for line in lines] == expected, \
        f"the rebuilt {repo} tokenizer.json does not reproduce llama.cpp's test vectors"

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    ckpt = fixtures.make_tiny_olmoe(tmp_path / "ckpt", tok_dir, vocab_size=len(tj["model"]["vocab"]))
    out = tmp_path / "v.gguf"
    convert(ckpt, out, "f16")
    header = read_header(out)
    assert header.get("tokenizer.ggml.pre") in accepted
    warned = [str(w.message) for w in recwarn if "normalizer" in str(w.message)]
    assert len(warned) == (1 if normalizer == NFC else 0)
    assert header.get("tokenizer.ggml.normalizer") == ("NFC" if normalizer == NFC else None)
    with LlamaModel(out, vocab_only=True) as m:
        got = [m.tokenize(line) for line in lines]
    matched = sum(g == e for g, e in zip(got, expected))
    assert matched == len(lines), [(line, g, e) for line, g, e in zip(lines, got, expected) if g != e][:3]
