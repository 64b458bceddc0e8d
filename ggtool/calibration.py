"""Calibration and evaluation text as llama.cpp's tools read it: plain text or chat conversations to token ids,
then cut into chunks exactly as llama-imatrix and llama-perplexity cut them (imatrix, eval and the mix share it)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import GgtoolError
from .llama.imatrix import adds_bos, bos_token
from .templates import render_chat


def read_conversations(path: Path) -> list[list[dict]]:
    """The conversations of a jsonl file with one {"messages": [...]} per line."""
    convs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise GgtoolError(f"{path}:{i}: expected a JSON object "
                              '{"messages": [{"role": ..., "content": ...}, ...]}') from None
        convs.append(messages)
    if not convs:
        raise GgtoolError(f"{path}: no conversations")
    return convs


def calibration_tokens(model, files: list[Path], chat: bool) -> list[int]:
    """Token ids of the calibration files: plain text as is, or (chat) conversations rendered through the
    GGUF's own chat template and tokenized with special tokens parsed."""
    ids: list[int] = []
    for path in files:
        if not path.is_file():
            raise GgtoolError(f"{path}: no such file")
        if not chat:
            # as llama-imatrix: BOS (and EOS) only if the vocabulary adds them
            ids += model.tokenize(path.read_text(encoding="utf-8", errors="replace"), add_special=True)
            continue
        template = model.meta("tokenizer.chat_template")
        if not template:
            raise GgtoolError(f"{model.path}: has no tokenizer.chat_template", "calibrate without --chat")
        bos, eos = model.chat_tokens()
        for messages in read_conversations(path):
            text = render_chat(template, messages, bos_token=bos, eos_token=eos, add_generation_prompt=False)
            ids += model.tokenize(text, add_special=False, parse_special=True)
    return ids


def make_chunks(ids: list[int], chunk_size: int, bos: int | None) -> list[list[int]]:
    """Whole chunks of `chunk_size` tokens; with `bos` (the vocabulary adds BOS) each chunk's first token is
    replaced by BOS, exactly as llama-imatrix and llama-perplexity do."""
    chunks = [ids[i * chunk_size:(i + 1) * chunk_size] for i in range(len(ids) // chunk_size)]
    if bos is not None:
        for c in chunks:
            c[0] = bos
    return chunks


def model_chunks(model, ids: list[int], chunk_size: int, max_chunks: int | None, what: str,
                 option: str) -> list[list[int]]:
    """`ids` cut as llama-imatrix and llama-perplexity cut them for `model` (BOS when its vocabulary adds one),
    at most `max_chunks`; an error naming `what` and the `option` to change when not one chunk fits."""
    chunks = make_chunks(ids, chunk_size, bos_token(model) if adds_bos(model) else None)[:max_chunks or None]
    if not chunks:
        raise GgtoolError(f"the {what} has {len(ids)} tokens, fewer than one chunk of {chunk_size}",
                          f"give more text or a smaller {option}")
    return chunks
