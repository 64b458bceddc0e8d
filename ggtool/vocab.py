"""tokenizer.json (+ tokenizer_config.json, chat template) -> GGUF vocabulary keys.

llama.cpp's own converter identifies byte-level BPE pre-tokenizers by hashing the token ids of a
probe string, and fails on any tokenizer it has not seen ("BPE pre-tokenizer was not recognized").
ggtool instead reads the tokenizer's pre-tokenizer *definition* (its split regexes and rules) and
picks the llama.cpp pre-tokenizer whose rules are the same, or refuses and names the rule that
differs.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gguf
from gguf.vocab import SentencePieceVocab
from sentencepiece import SentencePieceProcessor

from .checkpoint import read_json
from .errors import GgtoolError
from .pre_tokenizers import PreTokenizer, choose, flatten

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

SPECIAL_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id",
                "eot": "tokenizer.ggml.eot_token_id"}

# Unicode normal forms llama.cpp does not apply but that leave text already in that form as it is: converted,
# with a warning, and recorded under NORMALIZER_KEY (inspect and verify report it; verify normalizes its probe)
NORMAL_FORMS = ("NFC", "NFKC")
NORMALIZER_KEY = "tokenizer.ggml.normalizer"
# normalizers that change ordinary text, and how: refused
_CHANGES_TEXT = {
    "NFD": "decomposes accented letters that ordinary text carries precomposed",
    "NFKD": "decomposes accented letters that ordinary text carries precomposed",
    "Lowercase": "lowercases all text", "StripAccents": "removes accents",
    "Strip": "strips whitespace at the ends", "Replace": "replaces text", "Prepend": "prepends text",
    "Append": "appends text", "BertNormalizer": "cleans control characters, spaces out CJK and may lowercase",
    "Precompiled": "applies a SentencePiece character map", "ByteLevel": "maps bytes to symbols before the model",
}


def normal_form(normalizer: dict | None, where: str) -> str | None:
    """The Unicode normal form a tokenizer.json normalizer applies (NFC/NFKC, also in a Sequence), or None; any
    normalizer that changes ordinary text is refused with what it does."""
    if not normalizer:
        return None
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = []
    for step in steps:
        kind = (step or {}).get("type")
        if kind == "Sequence":
            inner = normal_form(step, where)
            kinds += [inner] if inner else []
        elif kind in NORMAL_FORMS:
            kinds.append(kind)
        else:
            what = _CHANGES_TEXT.get(kind, "changes the text before tokenizing")
            raise GgtoolError(f"{where}: normalizer {kind} {what}, which llama.cpp's byte-level BPE tokenizers do "
                              "not do", "ggtool refuses rather than write a GGUF that tokenizes differently")
    if not kinds:
        return None
    return "NFKC" if "NFKC" in kinds else "NFC"  # NFKC after or before NFC is NFKC


def normal_form_warning(form: str, where: str) -> str:
    """The one line convert prints for a tokenizer whose normal form llama.cpp does not apply."""
    return (f"{where}: normalizer {form} is not applied by llama.cpp: the GGUF gives the same token ids on text "
            f"already in {form} (most text), and may give others where it is not (e.g. decomposed accents); "
            f"recorded as {NORMALIZER_KEY}={form}")


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
    normalizer: str | None = None  # a normal form llama.cpp does not apply (NORMAL_FORMS), recorded

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
        if self.named_templates:  # as gguf-py writes them: tokenizer.chat_template.<name> + tokenizer.chat_templates
            default = [{"name": "default", "template": self.chat_template}] if self.chat_template else []
            w.add_chat_template(default + [{"name": n, "template": t} for n, t in self.named_templates.items()])
        elif self.chat_template:
            w.add_chat_template(self.chat_template)
        if self.normalizer:
            w.add_string(NORMALIZER_KEY, self.normalizer)


def choose_pre_tokenizer(tokenizer_json: dict, where: str) -> PreTokenizer:
    """The llama.cpp pre-tokenizer whose rules equal this byte-level BPE's definition (its normalizer must be
    absent or a normal form, which only picks among names with equal rules)."""
    form = normal_form(tokenizer_json.get("normalizer"), where)
    splits, byte_level = flatten(tokenizer_json.get("pre_tokenizer"), where)
    if not byte_level:
        raise GgtoolError(f"{where}: BPE without a ByteLevel pre-tokenizer is not a byte-level BPE")
    return choose(splits, bool(tokenizer_json["model"].get("ignore_merges", False)), form, where)


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def chat_templates(folder: Path, tokenizer_config: dict | None) -> tuple[str | None, dict[str, str]]:
    """The default chat template and the named ones, read as transformers 5.x reads them: chat_template.jinja
    over tokenizer_config.json's chat_template (a string, or a list of {name, template}), and each
    additional_chat_templates/NAME.jinja as the template NAME (over a tokenizer_config entry of that name)."""
    template = (tokenizer_config or {}).get("chat_template")
    named: dict[str, str] = {}
    if isinstance(template, list):
        for entry in template:
            named[entry["name"]] = entry["template"]
        template = named.pop("default", None)
    jinja, json_file = folder / "chat_template.jinja", folder / "chat_template.json"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif template is None and json_file.is_file():  # a processor's template file
        found = (read_json(json_file) or {}).get("chat_template")
        template = found if isinstance(found, str) else None
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            if path.is_file():
                named[path.stem] = path.read_text(encoding="utf-8")
    named.pop("default", None)
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


def token_table(tj: dict, n_vocab: int, path: Path) -> tuple[list[str], list[int]]:
    """Tokens and token types of a tokenizer.json's BPE vocabulary and added tokens, padded to `n_vocab` rows."""
    ids: dict[int, str] = {int(i): t for t, i in tj["model"]["vocab"].items()}
    added = {int(t["id"]): t for t in tj.get("added_tokens", [])}
    ids.update({i: t["content"] for i, t in added.items()})
    if max(ids) >= n_vocab:
        raise GgtoolError(f"{path}: the tokenizer has ids up to {max(ids)} but the embedding has only {n_vocab} rows",
                          "the tokenizer does not belong to these weights")
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(ids[i])
            types.append(TOKEN_CONTROL if added[i].get("special", False) else TOKEN_USER_DEFINED)
        elif i in ids:
            tokens.append(ids[i])
            types.append(TOKEN_NORMAL)
        else:  # embedding rows beyond the tokenizer: placeholders llama.cpp never produces
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
    return tokens, types


def load_bpe_vocab(folder: Path, n_vocab: int, config: dict) -> Vocab:
    """A byte-level BPE tokenizer.json as a GGUF `gpt2` vocabulary padded to the embedding's rows."""
    path = folder / "tokenizer.json"
    tj = read_json(path)
    if tj is None:
        raise GgtoolError(f"{path}: not found", "the checkpoint needs its tokenizer.json to make a usable GGUF")
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback", False):
        raise GgtoolError(f"{path}: model type {model.get('type')} (byte_fallback={model.get('byte_fallback')}) "
                          "is not a byte-level BPE")
    pre = choose_pre_tokenizer(tj, str(path))
    form = normal_form(tj.get("normalizer"), str(path))
    if form:
        warnings.warn(normal_form_warning(form, str(path)), stacklevel=2)
    tokens, types = token_table(tj, n_vocab, path)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tc = read_json(folder / "tokenizer_config.json")
    special = special_token_ids(tokens, tc, config, {})
    post_bos, post_eos = _add_special_from_post_processor(tj.get("post_processor"))
    add_bos = (tc or {}).get("add_bos_token", post_bos or False)
    add_eos = (tc or {}).get("add_eos_token", post_eos or False)
    template, named = chat_templates(folder, tc)
    return Vocab(model="gpt2", pre=pre.name, tokens=tokens, token_types=types, merges=merges, special=special,
                 add_bos=bool(add_bos), add_eos=bool(add_eos), chat_template=template, named_templates=named,
                 normalizer=form)


# --- SentencePiece-style vocabularies (GGUF `llama`) ----------------------------------------------
#
# llama.cpp's `llama` tokenizer is SentencePiece's BPE encoder: split into characters, then repeatedly
# merge the adjacent pair whose concatenation is the highest-scoring token; leftovers become <0xXX>
# byte tokens. It does not normalize text, never collapses whitespace, and only knows whether to
# prepend a space (add_space_prefix). Tokenizers needing anything else are refused.

SPM_SPACE = "\u2581"  # ▁, SentencePiece's escaped space
SPM_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.model_type

@dataclass
class LlamaVocab(Vocab):
    """A GGUF `llama` (SentencePiece-style) vocabulary: adds the space-prefix flag llama.cpp reads."""

    add_space_prefix: bool = True

    def write(self, w: gguf.GGUFWriter) -> None:
        """Add the tokenizer keys, including tokenizer.ggml.add_space_prefix."""
        super().write(w)
        w.add_add_space_prefix(self.add_space_prefix)


def _proto_fields(blob: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; enough wire format for sentencepiece's."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = blob[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while pos < len(blob):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = blob[pos:pos + 8], pos + 8
        elif wire == 2:
            n = varint()
            value, pos = blob[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = blob[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def sentencepiece_specs(path: Path) -> dict:
    """The piece types and the trainer and normalizer settings of a tokenizer.model that decide how it tokenizes."""
    specs = {"model_type": 1, "treat_whitespace_as_suffix": False, "byte_fallback": False,
             "normalizer": "", "charsmap": b"", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
             "escape_whitespaces": True, "types": []}
    try:
        for number, _, value in _proto_fields(path.read_bytes()):
            if number == 1:  # SentencePiece: its type (field 3) uses GGUF's token type numbers; NORMAL if absent
                specs["types"].append(next((v for n, _, v in _proto_fields(value) if n == 3), TOKEN_NORMAL))
            elif number == 2:  # TrainerSpec
                for n, _, v in _proto_fields(value):
                    key = {3: "model_type", 24: "treat_whitespace_as_suffix", 35: "byte_fallback"}.get(n)
                    if key:
                        specs[key] = v if key == "model_type" else bool(v)
            elif number == 3:  # NormalizerSpec
                for n, _, v in _proto_fields(value):
                    if n == 1:
                        specs["normalizer"] = v.decode("utf-8", errors="replace")
                    elif n == 2:
                        specs["charsmap"] = v
                    elif n in (3, 4, 5):
                        specs[{3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}[n]] \
                            = bool(v)
    except (IndexError, ValueError) as e:
        raise GgtoolError(f"{path}: not a SentencePiece model ({e})", "re-download tokenizer.model") from None
    return specs


def _check_sentencepiece(path: Path, specs: dict) -> None:
    """Refuse SentencePiece settings llama.cpp's `llama` tokenizer does not reproduce."""
    refused = [
        (SPM_MODEL_TYPES.get(specs["model_type"]) != "bpe",
         f"model_type={SPM_MODEL_TYPES.get(specs['model_type'], specs['model_type'])}",
         "llama.cpp's llama tokenizer is SentencePiece's BPE encoder; a unigram model would segment differently"),
        (bool(specs["charsmap"]), f"normalizer {specs['normalizer']!r}",
         "llama.cpp's llama tokenizer applies no Unicode normalization"),
        (specs["remove_extra_whitespaces"], "remove_extra_whitespaces=true",
         "llama.cpp's llama tokenizer never collapses runs of spaces"),
        (not specs["escape_whitespaces"], "escape_whitespaces=false", "llama.cpp's llama tokenizer always writes ▁"),
        (specs["treat_whitespace_as_suffix"], "treat_whitespace_as_suffix=true",
         "llama.cpp's llama tokenizer puts ▁ before words"),
    ]
    for bad, setting, why in refused:
        if bad:
            raise GgtoolError(f"{path}: SentencePiece {setting}: {why}",
                              "ggtool refuses rather than write a GGUF that tokenizes differently")


def _sentencepiece_tokens(path: Path) -> tuple[list[str], list[float], list[int], dict[str, int], bool]:
    """Tokens, scores, types, special ids and add_space_prefix of a tokenizer.model."""
    specs = sentencepiece_specs(path)
    _check_sentencepiece(path, specs)
    spv = SentencePieceVocab(path.parent)  # also reads added_tokens.json, as llama.cpp's converter does
    tokens, scores, types = [], [], []
    for text, score, toktype in spv.all_tokens():
        tokens.append(text.decode("utf-8"))
        scores.append(float(score))
        types.append(int(toktype))
    # gguf-py calls user-defined pieces NORMAL; SentencePiece matches them whole, which llama.cpp does
    # only for USER_DEFINED tokens, so the model's own types are kept
    types[:len(specs["types"])] = specs["types"]
    sp = SentencePieceProcessor(model_file=str(path))
    special = {kind: i for kind, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                       ("pad", sp.pad_id())) if i >= 0}
    return tokens, scores, types, special, specs["add_dummy_prefix"]


def _hf_space_rules(tj: dict, where: str) -> bool:
    """add_space_prefix for a byte-fallback tokenizer.json whose whitespace rules llama.cpp reproduces."""
    norm, pre = tj.get("normalizer"), tj.get("pre_tokenizer")
    steps = (norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else [])
    kinds = [(s.get("type"), s.get("prepend"), (s.get("pattern") or {}).get("String"), s.get("content"))
             for s in steps]
    replace = ("Replace", None, " ", SPM_SPACE)
    if pre is None and kinds == [("Prepend", SPM_SPACE, None, None), replace]:
        return True  # Llama-2 style: "▁" prepended, spaces escaped
    if pre is None and kinds == [replace]:
        return False
    if norm is None and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == SPM_SPACE:
        scheme = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never")
        vocab = tj["model"]["vocab"]
        if pre.get("split", True) and any(SPM_SPACE in t[1:] for t in vocab):
            raise GgtoolError(f"{where}: pre-tokenizer Metaspace splits at ▁ but the vocabulary has tokens with ▁ "
                              "inside them, which llama.cpp's llama tokenizer would form across the split",
                              "ggtool refuses rather than tokenize differently")
        return scheme != "never"
    raise GgtoolError(f"{where}: normalizer {norm and norm.get('type')} / pre-tokenizer {pre and pre.get('type')} "
                      "is not SentencePiece's escape-spaces rule that llama.cpp's llama tokenizer applies",
                      "ggtool refuses rather than write a GGUF that tokenizes differently")


def _hf_byte_fallback_tokens(path: Path, tj: dict) -> tuple[list[str], list[float], list[int], dict[str, int], bool]:
    """Tokens, scores, types, special ids and add_space_prefix of a tokenizer.json BPE with byte_fallback."""
    model = tj["model"]
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise GgtoolError(f"{path}: BPE sets {key}={model[key]!r}, which llama.cpp's llama tokenizer lacks")
    if model.get("ignore_merges"):
        raise GgtoolError(f"{path}: BPE sets ignore_merges=true, which llama.cpp's llama tokenizer lacks")
    add_space = _hf_space_rules(tj, str(path))
    ids: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    # llama.cpp merges the highest-scoring pair whose concatenation is a token; scoring each token by
    # minus the rank of the merge that makes it reproduces BPE's lowest-rank-first order.
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges", [])):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(left + right, r)
    unmerged = -float(len(rank) + 1)  # multi-character tokens no merge makes: last resort
    added = {int(t["id"]): t for t in tj.get("added_tokens", [])}
    unk = model.get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(max([*ids, *added], default=-1) + 1):
        text = added[i]["content"] if i in added else ids.get(i)
        if text is not None and re.fullmatch(r"<0x[0-9A-F]{2}>", text):  # llama.cpp's byte fallback looks these up
            tokens.append(text)
            scores.append(0.0)
            types.append(TOKEN_BYTE)
        elif i in added:
            tokens.append(text)
            scores.append(-1000.0)
            types.append(TOKEN_CONTROL if added[i].get("special", False) else TOKEN_USER_DEFINED)
        elif text is not None:
            tokens.append(text)
            scores.append(-float(rank[text]) if text in rank else 0.0 if len(text) == 1 else unmerged)
            types.append(TOKEN_UNKNOWN if text == unk else TOKEN_NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(TOKEN_UNUSED)
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in model["vocab"]]
    if missing:
        raise GgtoolError(f"{path}: byte_fallback is set but the vocabulary lacks byte tokens such as {missing[0]}",
                          "llama.cpp needs all 256 <0xXX> tokens to encode unknown characters")
    special = {"unk": model["vocab"][unk]} if unk in model["vocab"] else {}
    return tokens, scores, types, special, add_space


def special_token_ids(tokens: list[str], tc: dict | None, config: dict, found: dict[str, int]) -> dict[str, int]:
    """bos/eos/pad/unk ids: tokenizer_config.json's strings first, then config.json's ids, then the tokenizer's."""
    token_to_id = {t: i for i, t in enumerate(tokens)}
    special: dict[str, int] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        content = _token_content((tc or {}).get(f"{kind}_token"))
        if content is not None and content in token_to_id:
            special[kind] = token_to_id[content]
        elif isinstance(config.get(f"{kind}_token_id"), int) and 0 <= config[f"{kind}_token_id"] < len(tokens):
            special[kind] = config[f"{kind}_token_id"]
        elif kind in found:
            special[kind] = found[kind]
    return special


def load_llama_vocab(folder: Path, n_vocab: int, config: dict) -> Vocab:
    """A SentencePiece tokenizer.model (preferred) or byte-fallback BPE tokenizer.json as a GGUF `llama` vocabulary."""
    spm_path, json_path = folder / "tokenizer.model", folder / "tokenizer.json"
    tj = read_json(json_path)
    if spm_path.is_file():
        tokens, scores, types, found, add_space = _sentencepiece_tokens(spm_path)
        where = spm_path
        default_bos = True  # HF's LlamaTokenizer (and llama.cpp) add BOS to SentencePiece text by default
    elif tj is not None:
        model = tj.get("model", {})
        if model.get("type") != "BPE" or not model.get("byte_fallback", False):
            raise GgtoolError(f"{json_path}: model type {model.get('type')} (byte_fallback="
                              f"{model.get('byte_fallback', False)}) is not a SentencePiece-style BPE with byte "
                              "fallback", "this family expects tokenizer.model or a byte-fallback BPE tokenizer.json")
        tokens, scores, types, found, add_space = _hf_byte_fallback_tokens(json_path, tj)
        where = json_path
        default_bos = False
    else:
        raise GgtoolError(f"{folder}: neither tokenizer.model nor tokenizer.json found",
                          "the checkpoint needs its tokenizer to make a usable GGUF")
    if len(tokens) > n_vocab:
        raise GgtoolError(f"{where}: the tokenizer has {len(tokens)} tokens but the embedding has only {n_vocab} rows",
                          "the tokenizer does not belong to these weights")
    for i in range(len(tokens), n_vocab):  # embedding rows beyond the tokenizer: placeholders never produced
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(TOKEN_UNUSED)

    tc = read_json(folder / "tokenizer_config.json")
    if isinstance((tc or {}).get("add_prefix_space"), bool):  # transformers rebuilds the tokenizer with it
        add_space = tc["add_prefix_space"]
    for i, entry in ((tc or {}).get("added_tokens_decoder") or {}).items():  # tokens HF adds on top of the model
        i = int(i)
        if 0 <= i < n_vocab and tokens[i] != entry["content"]:
            tokens[i] = entry["content"]
            scores[i] = -1000.0
            types[i] = TOKEN_CONTROL if entry.get("special", False) else TOKEN_USER_DEFINED
    special = special_token_ids(tokens, tc, config, found)
    post_bos, post_eos = _add_special_from_post_processor((tj or {}).get("post_processor"))
    add_bos = (tc or {}).get("add_bos_token", default_bos if post_bos is None else post_bos)
    add_eos = (tc or {}).get("add_eos_token", post_eos or False)
    template, named = chat_templates(folder, tc)
    return LlamaVocab(model="llama", pre="default", tokens=tokens, token_types=types, scores=scores,
                      special=special, add_bos=bool(add_bos), add_eos=bool(add_eos), chat_template=template,
                      named_templates=named, add_space_prefix=add_space)
