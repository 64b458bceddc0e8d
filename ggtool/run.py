"""`ggtool run`: a completion from a GGUF through llama.cpp, optionally through its chat template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from .errors import GgtoolError
from .families import by_arch
from .llama.model import ContextOptions, LlamaModel
from .templates import render_chat


@dataclass
class Completion:
    prompt: str
    text: str
    n_prompt_tokens: int
    n_tokens: int


def require_runnable(path: Path, action: str = "run") -> None:
    """Refuse, with the family's reason, a GGUF whose architecture no llama.cpp graph computes (run, quantize)."""
    try:
        field = gguf.GGUFReader(path).get_field("general.architecture")
    except Exception:  # noqa: BLE001 - missing or malformed: llama.cpp's own load error says more
        return
    family = by_arch(field.contents()) if field is not None else None
    if family is not None and not family.runnable:
        raise GgtoolError(f"{path}: cannot {action} architecture {family.arch} in llama.cpp: "
                          f"{family.not_runnable_reason}", "`ggtool inspect` and `ggtool verify` work on it")


def complete(path: Path, prompt: str, max_tokens: int = 32, chat: bool = False, n_ctx: int = 1024) -> Completion:
    """Greedy completion of `prompt` (rendered through the GGUF's chat template when `chat`)."""
    require_runnable(Path(path))
    with LlamaModel(path) as model:
        bos = ""
        if chat:
            template = model.meta("tokenizer.chat_template")
            if not template:
                raise GgtoolError(f"{path}: has no tokenizer.chat_template", "run without --chat")

            def token_text(key: str) -> str:
                value = model.meta(key)
                return model.piece(int(value), special=True).decode("utf-8", "replace") if value else ""

            bos = token_text("tokenizer.ggml.bos_token_id")
            prompt = render_chat(template, [{"role": "user", "content": prompt}],
                                 bos_token=bos, eos_token=token_text("tokenizer.ggml.eos_token_id"))
        # a template that writes BOS itself must not get a second one from the tokenizer
        add_special = not (chat and bos and prompt.startswith(bos))
        ids = model.tokenize(prompt, add_special=add_special, parse_special=chat)
        out = model.generate(ids, max_tokens, ContextOptions(n_ctx=max(n_ctx, len(ids) + max_tokens)))
        return Completion(prompt, model.detokenize(out), len(ids), len(out))
