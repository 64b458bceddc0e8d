"""`ggtool run`: a completion from a GGUF through llama.cpp, optionally through its chat template."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .errors import GgtoolError
from .gguf_in import SAMPLING_KEYS, read_header, recommended_sampling as gguf_sampling
from .limits import check_sampling
from .llama.model import ContextOptions, LlamaModel, Sampling
from .runnable import require_runnable
from .templates import render_chat


@dataclass
class Completion:
    prompt: str
    text: str
    n_prompt_tokens: int
    n_tokens: int


def check_context(path: Path, n_prompt: int, max_tokens: int) -> None:
    """Refuse a prompt plus completion longer than the model's context length (the KV cache is sized by it)."""
    header = read_header(path)
    limit = header.get(f"{header.get('general.architecture')}.context_length")
    if isinstance(limit, int) and n_prompt + max_tokens > limit:
        raise GgtoolError(f"--max-tokens {max_tokens}: the prompt's {n_prompt} tokens and the completion need a "
                          f"context of {n_prompt + max_tokens}, beyond {path.name}'s context length {limit}",
                          f"use -n {max(1, limit - n_prompt)} or less")


LLAMA_CPP_DEFAULT_TEMPERATURE = 0.8  # llama-cli's, when the GGUF recommends none


def recommended_sampling(path: Path, **overrides) -> Sampling:
    """The GGUF's recommended sampling (general.sampling.*), else llama-cli's defaults; `overrides` that are
    not None win. Temperature 0 is greedy."""
    try:
        recommended = gguf_sampling(read_header(path).get)
    except GgtoolError:  # the load reports it
        recommended = {}
    check_sampling(recommended, str(path), SAMPLING_KEYS)
    values = {"temperature": LLAMA_CPP_DEFAULT_TEMPERATURE, **recommended}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Sampling(**values)


def describe(s: Sampling) -> str:
    """The sampler settings in one short phrase."""
    penalty = f", repeat penalty {s.repeat_penalty:g}" if s.repeat_penalty != 1.0 else ""
    if s.greedy:
        return "greedy" + penalty
    return f"temp {s.temperature:g}, top-k {s.top_k}, top-p {s.top_p:g}, min-p {s.min_p:g}{penalty}, seed {s.seed}"


def _chat_prompt(model: LlamaModel, path: Path, prompt: str) -> tuple[str, str]:
    """One user turn rendered through the GGUF's chat template, and the text of its BOS token."""
    template = model.meta("tokenizer.chat_template")
    if not template:
        raise GgtoolError(f"{path}: has no tokenizer.chat_template", "run without --chat")
    bos, eos = model.chat_tokens()
    text = render_chat(template, [{"role": "user", "content": prompt}], bos_token=bos, eos_token=eos)
    return text, bos


def complete(path: Path, prompt: str, max_tokens: int = 32, chat: bool = False, n_ctx: int = 1024,
             sampling: Sampling | None = None) -> Completion:
    """Completion of `prompt` (rendered through the GGUF's chat template when `chat`), greedy by default."""
    require_runnable(Path(path))
    with LlamaModel(path) as model:
        bos = ""
        if chat:
            prompt, bos = _chat_prompt(model, Path(path), prompt)
        # a template that writes BOS itself must not get a second one from the tokenizer
        add_special = not (chat and bos and prompt.startswith(bos))
        ids = model.tokenize(prompt, add_special=add_special, parse_special=chat)
        out = model.generate(ids, max_tokens, ContextOptions(n_ctx=max(n_ctx, len(ids) + max_tokens)), sampling)
        return Completion(prompt, model.detokenize(out), len(ids), len(out))


@dataclass
class StreamResult:
    completion: Completion
    seconds: float  # generation time after the prompt, for tokens/s
    tokens_per_s: float
    applied: str  # how the model was placed


def stream(path: Path, prompt: str, max_tokens: int = 128, chat: bool = False, plan: dict | None = None,
           rpc: list[str] | None = None, n_ctx: int = 1024, on_text=None,
           sampling: Sampling | None = None) -> StreamResult:
    """Generate with a plan applied (devices, n_gpu_layers, overrides, KV types), calling on_text per piece;
    greedy unless `sampling` says otherwise."""
    path = Path(path)
    require_runnable(path)
    plan = plan or {}
    servers = list(rpc or plan.get("rpc") or [])
    ngl = int(plan.get("n_gpu_layers", 0 if not servers else 999))
    overrides = [(o["pattern"], o.get("buffer", "CPU")) for o in plan.get("overrides", [])]
    split = plan.get("tensor_split") or ()
    opts = ContextOptions(n_ctx=int(plan.get("n_ctx", n_ctx)), n_batch=int(plan.get("n_batch", 512)),
                          n_ubatch=int(plan.get("n_ubatch", 0)), type_k=plan.get("type_k", "f16"),
                          type_v=plan.get("type_v", "f16"), flash_attn=bool(plan.get("flash_attn", False)))
    with LlamaModel(path, ngl, rpc_servers=servers, overrides=overrides, tensor_split=split) as model:
        bos = ""
        if chat:
            prompt, bos = _chat_prompt(model, path, prompt)
        add_special = not (chat and bos and prompt.startswith(bos))
        ids = model.tokenize(prompt, add_special=add_special, parse_special=chat)
        if len(ids) + max_tokens > opts.n_ctx:
            check_context(path, len(ids), max_tokens)
            opts.n_ctx = len(ids) + max_tokens
        out: list[int] = []
        pending = b""
        t0 = None
        for tok in model.stream(ids, max_tokens, opts, sampling):
            if t0 is None:
                t0 = time.perf_counter()  # the first token ends prompt processing
            out.append(tok)
            pending += model.piece(tok)
            try:
                text = pending.decode("utf-8")
                pending = b""
                if on_text:
                    on_text(text)
            except UnicodeDecodeError:
                pass  # a character split over tokens: wait for the rest
        seconds = time.perf_counter() - t0 if t0 is not None else 0.0
        text = model.detokenize(out)
    tps = (len(out) - 1) / seconds if len(out) > 1 and seconds > 0 else 0.0
    where = describe(sampling or Sampling()) + f"; ngl {ngl}" + (f" on {', '.join(servers)}" if servers else "") + \
        (f", {len(overrides)} overrides" if overrides else "") + f", KV {opts.type_k}/{opts.type_v}" + \
        (", flash attention" if opts.flash_attn else "")
    return StreamResult(Completion(prompt, text, len(ids), len(out)), seconds, tps, where)
