"""Every number that sizes work, checked before the work starts: the valid ranges live here, once.

Options given on the command line, values read from plan JSON, config.json and GGUF metadata all go through
`check`, which refuses a value outside its range (or not a finite number, or not an integer where one is
needed) with one line naming it and the range. The ranges follow llama.cpp's own limits where it has them
(GGML_MAX_N_THREADS, LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS, its uint32 token counts) and are otherwise wide
enough for any real model and small enough that nothing can be asked to allocate without bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import GgtoolError

try:
    from re import _parser as sre_parse  # Python >= 3.11
except ImportError:  # pragma: no cover (3.10)
    import sre_parse

# llama.cpp's own limits (ggml/include/ggml.h, src/llama-hparams.h of the pinned source)
GGML_MAX_N_THREADS = 512
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
MAX_CONTEXT = 1 << 20  # tokens in one context (KV cache and batch are sized by it)
MAX_TOKENS = 1 << 20  # tokens generated in one run


@dataclass(frozen=True)
class Range:
    """A closed range (`lo_open`/`hi_open` make an end exclusive) of ints (`integer`) or finite floats."""

    lo: float
    hi: float
    integer: bool = True
    hint: str = ""
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        return (v > self.lo if self.lo_open else v >= self.lo) and (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        lo = f"{self.lo:g}" if not self.integer else f"{int(self.lo):,}"
        hi = f"{self.hi:g}" if not self.integer else f"{int(self.hi):,}"
        left, right = ("above " + lo) if self.lo_open else lo, ("below " + hi) if self.hi_open else hi
        kind = "an integer" if self.integer else "a number"
        return f"{kind} from {left} to {right}" + (f"; {self.hint}" if self.hint else "")


# command-line options (and the same settings wherever else they come from)
OPTIONS: dict[str, Range] = {
    "--threads": Range(0, GGML_MAX_N_THREADS, hint="0: every core"),
    "--max-tokens": Range(1, MAX_TOKENS),
    "--ctx": Range(8, MAX_CONTEXT),
    "--chunk-size": Range(16, MAX_CONTEXT),
    "--chunks": Range(0, 1 << 24, hint="0: all"),
    "--tokens": Range(1, 8192, hint="token positions compared"),
    "--margin": Range(0.0, 1.0, integer=False, hi_open=True, hint="the fraction of each memory kept free"),
    "--vram-bandwidth": Range(0.0, 1e5, integer=False, lo_open=True, hint="GB/s"),
    "--ram-bandwidth": Range(0.0, 1e5, integer=False, lo_open=True, hint="GB/s"),
    "--device bandwidth": Range(0.0, 1e5, integer=False, lo_open=True, hint="GB/s"),
    "size": Range(0, 1 << 50, hint="bytes, e.g. 6GiB"),
    "--temp": Range(0.0, 100.0, integer=False, hint="0 is greedy"),
    "--top-k": Range(0, 1 << 24, hint="0: off"),
    "--top-p": Range(0.0, 1.0, integer=False, hint="1.0: off"),
    "--min-p": Range(0.0, 1.0, integer=False, hint="0: off"),
    "--repeat-penalty": Range(0.0, 100.0, integer=False, lo_open=True, hint="1.0 turns the penalty off"),
    "--repeat-last-n": Range(-1, MAX_CONTEXT, hint="-1: the whole context"),
    "--seed": Range(0, 0xFFFFFFFE),
    "--port": Range(1, 65535),
    # plan JSON values (ggtool plan --json), as run --plan and modelfile --plan read them
    "n_ctx": Range(8, MAX_CONTEXT),
    "n_gpu_layers": Range(-1, LLAMA_MAX_LAYERS + 1, hint="-1: every layer"),
    "n_batch": Range(1, MAX_CONTEXT),
    "n_ubatch": Range(0, MAX_CONTEXT, hint="0: n_batch"),
}

# the same sampler settings by their Sampling field names (GGUF general.sampling.* and overrides)
SAMPLING_OPTIONS = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                    "repeat_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n", "seed": "--seed"}


def _number(value: Any, integer: bool) -> float | None:
    """`value` as a number of the right kind, or None (bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, np.integer):  # numpy scalars
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        else:
            return None
    if integer and isinstance(value, float):
        return float(value) if math.isfinite(value) and value.is_integer() else None
    if not integer and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check(name: str, value: Any, rng: Range | None = None, where: str = "") -> Any:
    """`value` if it lies in the range of `name` (the OPTIONS entry unless `rng` is given); else one line naming
    `where` (a file, if the value came from one), the name, the value and the valid range."""
    rng = rng or OPTIONS[name]
    v = _number(value, rng.integer)
    if v is None or not rng.contains(v):
        prefix = f"{where}: " if where else ""
        raise GgtoolError(f"{prefix}{name} {value!r} is out of range", f"use {rng.describe()}")
    return int(v) if rng.integer else float(v)


def check_size(text_name: str, n: float) -> int:
    """A size in bytes parsed from an option such as --ram 6GiB."""
    if not math.isfinite(n) or not OPTIONS["size"].contains(n):
        raise GgtoolError(f"{text_name} is out of range", f"use {OPTIONS['size'].describe()}")
    return int(n)


def check_sampling(values: dict[str, Any], where: str = "", names: dict[str, str] | None = None) -> None:
    """Sampler settings by Sampling field name; `names` says what to call each in a message (a GGUF key, say)."""
    for field, value in values.items():
        if value is None or field not in SAMPLING_OPTIONS:
            continue
        check((names or {}).get(field, SAMPLING_OPTIONS[field]), value, OPTIONS[SAMPLING_OPTIONS[field]], where)


def check_plan(plan: dict, where: str) -> None:
    """The numbers of a plan JSON that size llama.cpp's context and offload, and its override patterns."""
    if not isinstance(plan, dict):
        return  # the reader reports what is missing
    for key in ("n_ctx", "n_gpu_layers", "n_batch", "n_ubatch"):
        if plan.get(key) is not None:
            check(key, plan[key], where=where)
    overrides = plan.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, dict) and isinstance(o.get("pattern"), str)
                                                  for o in overrides):
        raise GgtoolError(f"{where}: overrides is not a list of {{\"pattern\": REGEX, \"buffer\": NAME}}",
                          "write the plan with `ggtool plan MODEL --json FILE`")
    for o in overrides:
        check_regex(o["pattern"], f"{where}: override")


# -- model shapes ------------------------------------------------------------------------------------------
# GGUF keys under `{arch}.` that size llama.cpp's graph and its allocations (llama_model::load_hparams asserts
# on some and allocates by the others); the upper ends are llama.cpp's maxima or far above any real model
HPARAMS: dict[str, Range] = {
    "block_count": Range(1, LLAMA_MAX_LAYERS, hint="llama.cpp's LLAMA_MAX_LAYERS"),
    "expert_count": Range(0, LLAMA_MAX_EXPERTS, hint="llama.cpp's LLAMA_MAX_EXPERTS"),
    "expert_used_count": Range(0, LLAMA_MAX_EXPERTS, hint="at most expert_count"),
    "context_length": Range(1, 1 << 24),
    "embedding_length": Range(1, 1 << 20),
    "feed_forward_length": Range(0, 1 << 22),
    "expert_feed_forward_length": Range(0, 1 << 22),
    "attention.head_count": Range(1, 1 << 14),
    "attention.head_count_kv": Range(0, 1 << 14),
    "attention.key_length": Range(1, 1 << 16),
    "attention.value_length": Range(1, 1 << 16),
    "vocab_size": Range(1, 1 << 24),
}


def check_hparams(get: Callable[[str], Any], where: str, name_of: Callable[[str], str] = lambda k: k) -> None:
    """A model's shape keys (`get(key)` reads one `{arch}.`-relative key, None if absent; arrays are None) within
    llama.cpp's limits, and top-k routing that selects between 1 and expert_count experts."""
    def scalar(key: str) -> Any:
        value = get(key)
        return None if isinstance(value, (list, tuple)) else value  # per-layer arrays: llama.cpp checks them

    for key, rng in HPARAMS.items():
        value = scalar(key)
        if value is not None:
            check(name_of(key), value, rng, where)
    n_expert, n_used = scalar("expert_count"), scalar("expert_used_count")
    n_expert = int(n_expert) if n_expert is not None else 0
    if n_used is not None and n_expert > 0 and not 1 <= int(n_used) <= n_expert:
        raise GgtoolError(f"{where}: {name_of('expert_used_count')} {n_used} does not fit "
                          f"{name_of('expert_count')} {n_expert}", f"use an integer from 1 to {n_expert}")
    if n_used and n_expert == 0:
        raise GgtoolError(f"{where}: {name_of('expert_used_count')} {n_used} without experts "
                          f"({name_of('expert_count')} is 0 or missing)", "the model's metadata is inconsistent")


def check_gguf_model(header) -> None:  # noqa: ANN001 (gguf_in.GGUFHeader)
    """A GGUF model's shape metadata before llama.cpp loads it (its asserts abort the process)."""
    arch = header.get("general.architecture")
    if not isinstance(arch, str):
        return
    check_hparams(lambda k: header.get(f"{arch}.{k}"), str(header.path), lambda k: f"{arch}.{k}")


# config.json keys (Hugging Face names and the aliases ggtool's families read) that size a conversion
CONFIG_KEYS: dict[str, Range] = {
    **{k: Range(1, LLAMA_MAX_LAYERS, hint="llama.cpp's LLAMA_MAX_LAYERS") for k in ("num_hidden_layers", "n_layer")},
    **{k: Range(1, LLAMA_MAX_EXPERTS, hint="llama.cpp's LLAMA_MAX_EXPERTS")
       for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")},
    **{k: Range(1, LLAMA_MAX_EXPERTS) for k in ("num_experts_per_tok", "moe_top_k")},
    **{k: Range(1, 1 << 14) for k in ("num_attention_heads", "n_heads")},
    **{k: Range(1, 1 << 14) for k in ("num_key_value_heads", "n_kv_heads")},
    "head_dim": Range(1, 1 << 16),
    **{k: Range(1, 1 << 20) for k in ("hidden_size", "n_embd", "d_model")},
    **{k: Range(1, 1 << 22) for k in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")},
    "vocab_size": Range(1, 1 << 24),
    **{k: Range(1, 1 << 24) for k in ("max_position_embeddings", "block_size")},
}
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k")


def check_config(config: dict, where: str) -> None:
    """config.json's shape values: integers in range, top-k no larger than the expert count."""
    if not isinstance(config, dict):
        raise GgtoolError(f"{where}: not a JSON object", "a checkpoint's config.json maps names to values")
    for key, rng in CONFIG_KEYS.items():
        if config.get(key) is not None:
            check(key, config[key], rng, where)
    n_expert = next((config[k] for k in _EXPERT_KEYS if config.get(k) is not None), None)
    top_k_key = next((k for k in _TOP_K_KEYS if config.get(k) is not None), None)
    if n_expert is not None and top_k_key is not None and config[top_k_key] > n_expert:
        raise GgtoolError(f"{where}: {top_k_key} {config[top_k_key]} is more than the {n_expert} experts",
                          f"use an integer from 1 to {n_expert}; llama.cpp aborts on such a file")


# -- regular expressions ----------------------------------------------------------------------------------
MAX_REGEX_LENGTH = 256


def _backtracks(items, repeated: bool = False) -> bool:  # noqa: ANN001 (a parsed pattern)
    """Whether a parsed regex repeats something that itself repeats or alternates inside a repetition: the
    shapes ((a+)+, (a|aa)*, (.*x){20}) whose matching time grows exponentially in a backtracking engine."""
    for op, av in items:
        name = str(op)
        if name.endswith("REPEAT"):
            lo, hi, sub = av
            many = hi > 1
            if repeated and many or _backtracks(sub, repeated or many):
                return True
        elif name == "SUBPATTERN":
            if _backtracks(av[-1], repeated):
                return True
        elif name == "BRANCH":
            if repeated or any(_backtracks(b, repeated) for b in av[1]):
                return True
        elif name in ("ASSERT", "ASSERT_NOT"):
            if _backtracks(av[1], repeated):
                return True
    return False


def check_regex(pattern: str, option: str) -> None:
    """Refuse a regex that could backtrack without bound over a tensor name (llama.cpp matches overrides with
    std::regex, a backtracking engine, on every tensor), or one longer than any tensor-name pattern needs."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise GgtoolError(f"{option} {pattern[:40]!r}…: a regular expression of {len(pattern)} characters",
                          f"use at most {MAX_REGEX_LENGTH}")
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as e:
        raise GgtoolError(f"{option} {pattern!r}: bad regular expression ({e})") from None
    if _backtracks(list(parsed)):
        raise GgtoolError(f"{option} {pattern!r}: a repeated group that itself repeats or alternates can take "
                          "exponential time", "write it without nested repetition, e.g. blk\\.\\d+\\.ffn_down_exps")
