"""llama.cpp's byte-level BPE pre-tokenizers, written as the tokenizer.json rules each one reproduces.

llama.cpp's converter recognises a tokenizer by hashing the ids of a probe string and fails on any it has not
seen. ggtool reads the tokenizer's `pre_tokenizer` definition instead, flattens it to an ordered list of
rules (each split regex, with `ByteLevel`, `Digits` and `Punctuation` written as the regex they apply), and
picks the llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) whose rules are the same.

The table below covers the `llm_tokenizer_bpe` cases of the vendored `src/llama-vocab.cpp`. Its regexes are
the upstream tokenizer.json forms (llama.cpp rewrites some for its own regex engine, e.g. `(?i:'s|…)` as
`(?:'[sS]|…)`; its comments keep the originals). Where several llama.cpp names share one rule set, the entry
listed first wins, with the name llama.cpp's converter writes for the reference model of those rules (e.g.
`olmo` rather than `mpt` for a GPT-NeoX-style NFC tokenizer, as OLMoE's is). Left out, with the reason:
`default` (llama.cpp's fallback for a missing name, not a model's rules), `afmoe` and `kimi-k2` (custom
splitters in llama.cpp's unicode.cpp that no tokenizer.json regex states), `superbpe` (zero-width split
points), `granite-embed-multi-97m` (only an adapted regex is in the source), and `gemma4`, `sarvam-moe`,
`whitespace` (not byte-level: they tokenize raw UTF-8).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GgtoolError

# The split regex of HF's ByteLevel(use_regex=True) pre-tokenizer (GPT-2's).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Digits(individual_digits=True / False)
DIGIT = r"\p{N}"
DIGITS = r"\p{N}+"
# Punctuation(behavior=Contiguous / Isolated): Unicode punctuation plus the ASCII symbols Rust counts as punctuation
PUNCTUATION_RUN = r"[\p{P}\$\+<=>\^~\|`]+"
PUNCTUATION_ONE = r"[\p{P}\$\+<=>\^~\|`]"

_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
LLAMA3_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
JAIS2_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
               r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
MINICPM5_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SEED_CODER_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                    r"|\s+(?!\S)|\s+")
EXAONE_MOE_SPLIT = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
UFAKZEKA_SPLIT = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
BAILINGMOE_SPLIT = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
                    r"|\s+(?!\S)|\s+")
TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
YOUTU_SPLIT = O200K_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# non-ASCII classes written with escapes: an editor that normalizes to NFC would silently change them
CJK_DEEPSEEK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
DEEPSEEK_LLM_LETTERS = (
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
DEEPSEEK_LLM_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
CJK_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DEEPSEEK3_SPLIT = (r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
                   r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPARK_SPLIT = (r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
               r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+")
YOUTU_CJK = ("[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
             "\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+")
BLOOM_SPLIT = " ?[^(\\s|[.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c])]+"


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) as the tokenizer.json rules it reproduces."""

    name: str
    splits: tuple[str, ...]  # rules applied in order, each isolating its matches (canonical regex text)
    ignore_merges: bool = False  # llama.cpp looks whole pre-tokens up in the vocab before merging
    normal_form: str | None = None  # the normalizer of the converter's reference model (picks among equal rules)


# Ordered: among entries with equal rules the first whose normal form matches wins, else the first.
LLAMA_PRE_TOKENIZERS = [
    PreTokenizer("gpt-2", (GPT2_SPLIT,)),  # also mpt, olmo, jais, trillion, granite-docling, phi-2...
    PreTokenizer("olmo", (GPT2_SPLIT,), normal_form="NFC"),  # allenai/OLMo-1.7-7B-hf (OLMoE's tokenizer)
    PreTokenizer("starcoder", (DIGIT, GPT2_SPLIT)),  # also refact, smollm, codeshell, exaone, minerva, mellum2
    PreTokenizer("command-r", (DIGIT, GPT2_SPLIT), normal_form="NFC"),
    PreTokenizer("llama-bpe", (LLAMA3_SPLIT,), ignore_merges=True),  # also falcon3, pixtral, lfm2...
    PreTokenizer("dbrx", (LLAMA3_SPLIT,)),  # also smaug-bpe
    PreTokenizer("qwen2", (QWEN2_SPLIT,), normal_form="NFC"),  # also stablelm2, hunyuan, solar-open, grok-2
    PreTokenizer("qwen35", (QWEN35_SPLIT,)),
    PreTokenizer("deepseek-llm", ("[\\r\\n]", DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_PUNCT, r"\s+$", CJK_DEEPSEEK, DIGITS)),
    PreTokenizer("deepseek-coder", ("[\\r\\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_DEEPSEEK, DIGIT)),
    PreTokenizer("falcon", (PUNCTUATION_RUN, GPT2_SPLIT, DIGITS, "[0-9][0-9][0-9]")),
    PreTokenizer("deepseek-v3", (r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3_SPLIT)),  # also hunyuan-dense, joyai-llm, hy_v4
    PreTokenizer("spark2_5", (r"\p{N}{1,3}", CJK_KANA, SPARK_SPLIT, DIGIT)),
    PreTokenizer("youtu", (YOUTU_CJK, YOUTU_SPLIT), ignore_merges=True),
    PreTokenizer("tekken", (TEKKEN_SPLIT,), ignore_merges=True),
    PreTokenizer("gpt-4o", (O200K_SPLIT,)),  # also llama4, minimax-m2, kanana2
    PreTokenizer("tiny_aya", (r"\d{1,3}(?=(?:\d{3})*\b)", O200K_SPLIT)),
    PreTokenizer("bailingmoe", (BAILINGMOE_SPLIT,)),
    PreTokenizer("seed-coder", (SEED_CODER_SPLIT,)),
    PreTokenizer("exaone-moe", (EXAONE_MOE_SPLIT,)),
    PreTokenizer("jais-2", (JAIS2_SPLIT,)),
    PreTokenizer("minicpm5", (r"\p{N}{1,3}", MINICPM5_SPLIT), ignore_merges=True),
    PreTokenizer("ufakzeka", (UFAKZEKA_SPLIT,)),
    PreTokenizer("laguna", (r"[^\n]+|[\n]+", QWEN2_SPLIT)),
    PreTokenizer("bloom", (BLOOM_SPLIT,)),  # also poro-chat, gpt3-finnish
    PreTokenizer("viking", (BLOOM_SPLIT, DIGIT)),
    PreTokenizer("chameleon", ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )",
                               DIGIT, PUNCTUATION_ONE, GPT2_SPLIT)),
]


def canonical_regex(regex: str) -> str:
    """A split regex with control characters written as escapes (`[\\r\\n]` and a literal CR LF class are one rule)."""
    return regex.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")


def flatten(node: dict | None, where: str) -> tuple[list[str], bool]:
    """The ordered rules of an HF pre-tokenizer definition, and whether it is byte-level."""
    if node is None:
        return [], False
    kind = node.get("type")
    if kind == "Sequence":
        splits, byte_level = [], False
        for child in node.get("pretokenizers", []):
            s, b = flatten(child, where)
            splits += s
            byte_level |= b
        return splits, byte_level
    if kind == "ByteLevel":
        if node.get("add_prefix_space", False):
            raise GgtoolError(f"{where}: pre-tokenizer ByteLevel has add_prefix_space=true, which llama.cpp's "
                              "byte-level tokenizers never do", "ggtool refuses rather than tokenize differently")
        return ([GPT2_SPLIT] if node.get("use_regex", True) else []), True
    if kind == "Split":
        pattern = node.get("pattern", {})
        regex = pattern.get("Regex")
        if regex is None:
            regex = "".join("\\" + ch if ch in r".^$*+?()[]{}|\\" else ch for ch in pattern.get("String", ""))
        if node.get("behavior") != "Isolated" or node.get("invert", False):
            raise GgtoolError(f"{where}: pre-tokenizer Split with behavior={node.get('behavior')} "
                              f"invert={node.get('invert', False)}: llama.cpp's pre-tokenizers only isolate matches")
        return [canonical_regex(regex)], False
    if kind == "Digits":
        return [DIGIT if node.get("individual_digits", False) else DIGITS], False
    if kind == "Punctuation":
        behavior = node.get("behavior", "Isolated")
        if behavior not in ("Isolated", "Contiguous"):
            raise GgtoolError(f"{where}: pre-tokenizer Punctuation with behavior={behavior}: llama.cpp's "
                              "pre-tokenizers only isolate punctuation (one mark or a run of them)")
        return [PUNCTUATION_ONE if behavior == "Isolated" else PUNCTUATION_RUN], False
    raise GgtoolError(f"{where}: pre-tokenizer {kind} has no llama.cpp equivalent",
                      "no llama.cpp pre-tokenizer reproduces it; ggtool refuses rather than tokenize differently")


def choose(splits: list[str], ignore_merges: bool, normal_form: str | None, where: str) -> PreTokenizer:
    """The llama.cpp pre-tokenizer with these rules (refused, naming the differing rule, when none has them)."""
    same = [p for p in LLAMA_PRE_TOKENIZERS if p.splits == tuple(splits)]
    if same:
        fitting = [p for p in same if p.ignore_merges == ignore_merges]
        if not fitting:
            raise GgtoolError(f"{where}: the split rules match llama.cpp's '{same[0].name}' pre-tokenizer, but "
                              f"model.ignore_merges={ignore_merges} while llama.cpp uses {same[0].ignore_merges}",
                              "ggtool refuses rather than write a GGUF that tokenizes differently")
        return next((p for p in fitting if p.normal_form == normal_form), fitting[0])
    closest = max(LLAMA_PRE_TOKENIZERS, key=lambda p: sum(a == b for a, b in zip(p.splits, splits)))
    differing = next((s for i, s in enumerate(splits) if i >= len(closest.splits) or closest.splits[i] != s),
                     "(fewer split rules)")
    raise GgtoolError(f"{where}: no llama.cpp pre-tokenizer reproduces this tokenizer's split rules; the closest, "
                      f"'{closest.name}', differs at rule {differing!r}",
                      "ggtool refuses rather than write a GGUF that tokenizes differently")


def by_name(name: str) -> PreTokenizer | None:
    """The table entry llama.cpp calls `name`."""
    return next((p for p in LLAMA_PRE_TOKENIZERS if p.name == name), None)


def definition(pre: PreTokenizer) -> dict:
    """A tokenizer.json `pre_tokenizer` with exactly `pre`'s rules (ByteLevel where GPT-2's regex is, else last)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    nodes, has_byte_level = [], False
    for rule in pre.splits:
        if rule == GPT2_SPLIT and not has_byte_level:
            nodes.append(byte_level)
            has_byte_level = True
        elif rule in (DIGIT, DIGITS):
            nodes.append({"type": "Digits", "individual_digits": rule == DIGIT})
        elif rule in (PUNCTUATION_ONE, PUNCTUATION_RUN):
            nodes.append({"type": "Punctuation", "behavior": "Isolated" if rule == PUNCTUATION_ONE else "Contiguous"})
        else:
            nodes.append({"type": "Split", "pattern": {"Regex": rule}, "behavior": "Isolated", "invert": False})
    if not has_byte_level:
        nodes.append({**byte_level, "use_regex": False})
    return nodes[0] if len(nodes) == 1 else {"type": "Sequence", "pretokenizers": nodes}
