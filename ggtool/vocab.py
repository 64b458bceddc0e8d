"""tokenizer.json (+ tokenizer_config.json, chat template) -> GGUF vocabulary keys.

llama.cpp's own converter identifies byte-level BPE pre-tokenizers by hashing the token ids of a
probe string, and fails on any tokenizer it has not seen ("BPE pre-tokenizer was not recognized").
ggtool instead reads the tokenizer's pre-tokenizer *definition* (its split regexes and rules) and
picks the llama.cpp pre-tokenizer whose rules are the same, or refuses and names the rule that
differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .errors import GgtoolError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id",
                "eot": "tokenizer.ggml.eot_token_id"}

# The split regexes of HF's ByteLevel(use_regex=True) pre-tokenizer.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) as the HF rules it reproduces."""

    name: str
    splits: tuple[str, ...]  # regexes applied in order, each isolating its matches
    ignore_merges: bool = False  # llama.cpp looks whole pre-tokens up in the vocab before merging


# llama.cpp's byte-level pre-tokenizers (src/llama-vocab.cpp), written as the tokenizer.json rules they implement.
LLAMA_PRE_TOKENIZERS = [
    PreTokenizer("gpt-2", (GPT2_SPLIT,)),
    PreTokenizer("starcoder", (r"\p{N}", GPT2_SPLIT)),
    PreTokenizer("llama-bpe", (LLAMA3_SPLIT,), ignore_merges=True),
    PreTokenizer("qwen2", (QWEN2_SPLIT,)),
    PreTokenizer("qwen35", (QWEN35_SPLIT,)),
]


@dataclass
class Vocab:
    """Everything the GGUF `tokenizer.*` keys hold."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/pad/unk/eot -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    named_templates: dict[str, str] = field(default_factory=dict)

    def write(self, w: gguf.GGUFWriter) -> None:
        """Add the tokenizer keys to a GGUF writer."""
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.token_types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges:
            w.add_token_merges(self.merges)
        for kind, token_id in self.special.items():
            w.add_uint32(SPECIAL_KEYS[kind], token_id)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.chat_template:
            w.add_chat_template(self.chat_template)
        for name, template in self.named_templates.items():
            w.add_string(f"tokenizer.chat_template.{name}", template)


def _flatten_pre_tokenizer(node: dict | None, where: str) -> tuple[list[str], bool]:
    """The ordered split regexes of an HF pre-tokenizer definition, and whether it is byte-level."""
    if node is None:
        return [], False
    kind = node.get("type")
    if kind == "Sequence":
        splits, byte_level = [], False
        for child in node.get("pretokenizers", []):
            s, b = _flatten_pre_tokenizer(child, where)
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
        return [regex], False
    if kind == "Digits":
        return [r"\p{N}" if node.get("individual_digits", False) else r"\p{N}+"], False
    raise GgtoolError(f"{where}: pre-tokenizer {kind} has no llama.cpp equivalent",
                      "no llama.cpp pre-tokenizer reproduces it; ggtool refuses rather than tokenize differently")


def choose_pre_tokenizer(tokenizer_json: dict, where: str) -> PreTokenizer:
    """The llama.cpp pre-tokenizer whose rules equal this byte-level BPE's definition."""
    normalizer = tokenizer_json.get("normalizer")
    if normalizer is not None:
        raise GgtoolError(f"{where}: normalizer {normalizer.get('type')} is not applied by llama.cpp's byte-level "
                          "BPE tokenizers", "ggtool refuses rather than tokenize differently")
    splits, byte_level = _flatten_pre_tokenizer(tokenizer_json.get("pre_tokenizer"), where)
    if not byte_level:
        raise GgtoolError(f"{where}: BPE without a ByteLevel pre-tokenizer is not a byte-level BPE")
    ignore_merges = bool(tokenizer_json["model"].get("ignore_merges", False))
    for pre in LLAMA_PRE_TOKENIZERS:
        if tuple(splits) == pre.splits:
            if pre.ignore_merges != ignore_merges:
                raise GgtoolError(f"{where}: the split rules match llama.cpp's '{pre.name}' pre-tokenizer, but "
                                  f"model.ignore_merges={ignore_merges} while llama.cpp uses {pre.ignore_merges}")
            return pre
    closest = max(LLAMA_PRE_TOKENIZERS, key=lambda p: sum(a == b for a, b in zip(p.splits, splits)))
    differing = next((s for i, s in enumerate(splits) if i >= len(closest.splits) or closest.splits[i] != s),
                     "(fewer split rules)")
    raise GgtoolError(f"{where}: no llama.cpp pre-tokenizer reproduces this tokenizer's split rules; the closest, "
                      f"'{closest.name}', differs at rule {differing!r}",
                      "ggtool refuses rather than write a GGUF that tokenizes differently")


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GgtoolError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def chat_templates(folder: Path, tokenizer_config: dict | None) -> tuple[str | None, dict[str, str]]:
    """The default chat template and any named ones, from tokenizer_config.json or chat_template.jinja."""
    template = (tokenizer_config or {}).get("chat_template")
    named: dict[str, str] = {}
    if isinstance(template, list):
        for entry in template:
            named[entry["name"]] = entry["template"]
        template = named.pop("default", None)
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template, named


def _add_special_from_post_processor(post: dict | None) -> tuple[bool | None, bool | None]:
    """(add_bos, add_eos) as a TemplateProcessing post-processor states them, or None when silent."""
    if not post:
        return None, None
    if post.get("type") == "Sequence":
        for child in post.get("processors", []):
            found = _add_special_from_post_processor(child)
            if found != (None, None):
                return found
        return None, None
    if post.get("type") != "TemplateProcessing":
        return None, None
    single = post.get("single", [])
    is_special = ["SpecialToken" in item for item in single]
    return bool(is_special and is_special[0]), bool(is_special and is_special[-1])


def load_bpe_vocab(folder: Path, n_vocab: int, config: dict) -> Vocab:
    """A byte-level BPE tokenizer.json as a GGUF `gpt2` vocabulary padded to the embedding's rows."""
    path = folder / "tokenizer.json"
    tj = _read_json(path)
    if tj is None:
        raise GgtoolError(f"{path}: not found", "the checkpoint needs its tokenizer.json to make a usable GGUF")
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback", False):
        raise GgtoolError(f"{path}: model type {model.get('type')} (byte_fallback={model.get('byte_fallback')}) "
                          "is not a byte-level BPE")
    pre = choose_pre_tokenizer(tj, str(path))
    ids: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(t["id"]): t for t in tj.get("added_tokens", [])}
    for i, t in added.items():
        ids[i] = t["content"]
    size = max(n_vocab, max(ids) + 1)
    if size > n_vocab:
        raise GgtoolError(f"{path}: the tokenizer has ids up to {size - 1} but the embedding has only {n_vocab} rows",
                          "the tokenizer does not belong to these weights")
    tokens, types = [], []
    for i in range(size):
        if i in added:
            tokens.append(ids[i])
            types.append(TOKEN_CONTROL if added[i].get("special", False) else TOKEN_USER_DEFINED)
        elif i in ids:
            tokens.append(ids[i])
            types.append(TOKEN_NORMAL)
        else:  # embedding rows beyond the tokenizer: placeholders llama.cpp never produces
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tc = _read_json(folder / "tokenizer_config.json")
    token_to_id = {t: i for i, t in enumerate(tokens)}
    special: dict[str, int] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        content = _token_content((tc or {}).get(f"{kind}_token"))
        if content is not None and content in token_to_id:
            special[kind] = token_to_id[content]
        elif isinstance(config.get(f"{kind}_token_id"), int) and 0 <= config[f"{kind}_token_id"] < size:
            special[kind] = config[f"{kind}_token_id"]
    post_bos, post_eos = _add_special_from_post_processor(tj.get("post_processor"))
    add_bos = (tc or {}).get("add_bos_token", post_bos or False)
    add_eos = (tc or {}).get("add_eos_token", post_eos or False)
    template, named = chat_templates(folder, tc)
    return Vocab(model="gpt2", pre=pre.name, tokens=tokens, token_types=types, merges=merges, special=special,
                 add_bos=bool(add_bos), add_eos=bool(add_eos), chat_template=template, named_templates=named)
