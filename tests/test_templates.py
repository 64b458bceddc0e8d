"""The sandboxed chat-template renderer: HF's environment, and injection payloads stopped before they run."""

from __future__ import annotations

from datetime import datetime

import pytest

from ggtool.errors import GgtoolError
from ggtool.fixtures import TULU_TEMPLATE
from ggtool.templates import render_chat

PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch /tmp/ggtool-pwned').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch /tmp/ggtool-pwned') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "{{ raise_exception.__globals__ }}",
    "{{ (messages|first).__class__ }}",
    "{{ '{0.__class__.__mro__}'.format(1) }}",
    "{% set ns = namespace(x=1) %}{% set ns.__class__ = 1 %}{{ ns.__class__ }}",
    "{{ messages.append({'role': 'user'}) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ strftime_now.__code__ }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_payloads_are_stopped_by_the_sandbox(payload, tmp_path):
    with pytest.raises(GgtoolError, match="stopped by the sandbox") as e:
        render_chat(payload, [{"role": "user", "content": "hi"}])
    assert "nothing was executed" in str(e.value)
    assert not __import__("os").path.exists("/tmp/ggtool-pwned")


def test_template_errors_are_one_clear_error():
    with pytest.raises(GgtoolError, match="Conversation roles must alternate"):
        render_chat("{{ raise_exception('Conversation roles must alternate') }}", [])
    with pytest.raises(GgtoolError, match="does not parse"):
        render_chat("{% for %}", [])
    with pytest.raises(GgtoolError, match="Range too big"):
        render_chat("{% for i in range(10**9) %}{% endfor %}", [])


def test_hf_environment():
    msgs = [{"role": "user", "content": "Grüße"}, {"role": "assistant", "content": "ok"}]
    # tojson keeps non-ASCII (HF's ensure_ascii=False) and takes indent/separators
    assert render_chat("{{ messages[0] | tojson }}", msgs) == '{"role": "user", "content": "Grüße"}'
    assert render_chat("{{ messages[1] | tojson(indent=1) }}", msgs) == '{\n "role": "assistant",\n "content": "ok"\n}'
    compact = render_chat("{{ messages[1] | tojson(separators=(',', ':')) }}", msgs)
    assert compact == '{"role":"assistant","content":"ok"}'
    # loop controls, generation blocks, strftime_now with a fixed clock, tools
    t = ("{% for m in messages %}{% if m.role == 'user' %}{% continue %}{% endif %}"
         "{% generation %}[{{ m.content }}]{% endgeneration %}{% break %}{% endfor %}"
         "{{ strftime_now('%Y-%m-%d') }}{% if tools %}{{ tools | length }}{% endif %}")
    assert render_chat(t, msgs, now=datetime(2024, 7, 26), tools=[{"name": "f"}]) == "[ok]2024-07-261"
    # trim_blocks / lstrip_blocks as HF sets them
    assert render_chat("  {% if true %}\nx\n  {% endif %}\ny", []) == "x\ny"


def test_tulu_template_renders_as_the_card_says():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_chat(TULU_TEMPLATE, msgs, bos_token="<B>", eos_token="<E>") == \
        "<B><|system|>\nS\n<|user|>\nU\n<|assistant|>\n"
    assert render_chat(TULU_TEMPLATE, msgs, bos_token="<B>", eos_token="<E>", add_generation_prompt=False) == \
        "<B><|system|>\nS\n<|user|>\nU\n"
