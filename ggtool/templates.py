"""Rendering chat templates in a sandbox, with the environment Hugging Face's apply_chat_template provides.

Every chat template ggtool renders (run --chat, modelfile derivation, LM Studio checks) goes through
`render_chat`. The environment is jinja2's ImmutableSandboxedEnvironment with HF's additions
(raise_exception, strftime_now, tojson with HF's arguments, loop controls, `{% generation %}` blocks,
trim_blocks/lstrip_blocks). One change from stock jinja2: reaching for an unsafe attribute
(`__class__`, `__globals__`, `append` on an immutable list...) raises at once instead of yielding an
undefined value that prints as "", so an injection attempt fails loudly and executes nothing.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import GgtoolError


class _GenerationBlocks(Extension):
    """`{% generation %}…{% endgeneration %}` (HF's assistant-mask markers): the body renders as is."""

    tags = {"generation"}

    def parse(self, parser):  # noqa: ANN001, ANN201 - jinja2's extension API
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing on unsafe attribute access rather than returning an undefined value."""

    def unsafe_undefined(self, obj: Any, attribute: str):  # noqa: ANN201
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # HF's tojson: unlike jinja2's own filter, no HTML escaping and non-ASCII kept as is
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=64)
def _compile(template: str):  # noqa: ANN202
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlocks, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise GgtoolError(f"the chat template does not parse: {e}") from None


def render_chat(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, tools: list[dict] | None = None,
                now: datetime | None = None, **extra: Any) -> str:
    """The prompt text a chat template makes of `messages` (sandboxed; `now` fixes strftime_now)."""
    compiled = _compile(template)
    clock = now or datetime.now()
    variables = dict(extra, messages=messages, bos_token=bos_token, eos_token=eos_token,
                     add_generation_prompt=add_generation_prompt, tools=tools,
                     strftime_now=lambda fmt: clock.strftime(fmt))
    try:
        return compiled.render(**variables)
    except SecurityError as e:
        raise GgtoolError(f"the chat template was stopped by the sandbox: {e}",
                          "it reaches for Python internals; nothing was executed") from None
    except TemplateError as e:
        raise GgtoolError(f"the chat template failed to render: {e}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as e:
        raise GgtoolError(f"the chat template failed to render: {type(e).__name__}: {e}") from None


def parse_template(template: str) -> None:
    """Refuse, in one line, a template that does not parse in this environment (without rendering it)."""
    _compile(template)
