"""Rendering chat templates in a sandbox (jinja2's ImmutableSandboxedEnvironment), as Hugging Face does."""

from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import GgtoolError


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def render_chat(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """The prompt text a chat template makes of `messages`."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise GgtoolError(f"the chat template failed to render: {e}") from None
