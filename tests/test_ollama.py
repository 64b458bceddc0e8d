"""`ggtool modelfile`: the emitted Go template, rendered by Go's own text/template, makes the Jinja template's prompt.

The Go program in tests/go_render mimics how Ollama renders a .Messages template (SYSTEM insertion, merging of
consecutive same-role messages, .System, missingkey=zero, the json function); see its header comment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chat_templates import PUBLIC, REFUSED, SEEDS
from ggtool.errors import GgtoolError
from ggtool.ollama import derive_format, effective_prompt, modelfile_text, ollama_messages
from ggtool.templates import render_chat
from tests.conftest import run_cli

GO_MAIN = Path(__file__).parent / "go_render" / "main.go"

S = {"role": "system", "content": "You are terse. Answer in French."}
U1 = {"role": "user", "content": "What is 2+2?\nShow the steps."}
A1 = {"role": "assistant", "content": "2+2 = 4 — «quatre» 🙂"}
U2 = {"role": "user", "content": "And {{ 3 }}+3, \"please\"?"}
A2 = {"role": "assistant", "content": "6"}
U3 = {"role": "user", "content": "Thanks!"}
CONVERSATIONS = [[U1], [S, U1], [U1, A1, U2], [S, U1, A1, U2], [S, U1, A1, U2, A2, U3], [U1, A1, U2, A2, U3],
                 [U1, A1, S, U2]]


@pytest.fixture(scope="session")
def go_render(tmp_path_factory) -> Path:
    """The Go harness, built once per session."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (`apt-get install golang-go`; .ci/run installs it)")
    out = tmp_path_factory.mktemp("go") / "go_render"
    env = {**os.environ, "GOCACHE": str(out.parent / "cache"), "GOPATH": str(out.parent / "gopath"),
           "GO111MODULE": "off"}
    subprocess.run([go, "build", "-o", str(out), str(GO_MAIN)], check=True, env=env, cwd=out.parent)
    return out


def render_go(binary: Path, template: str, cases: list[list[dict]], system: str = "") -> list[str]:
    proc = subprocess.run([str(binary)], input=json.dumps({"template": template, "system": system, "cases": cases}),
                          capture_output=True, text=True, check=True)
    results = json.loads(proc.stdout)
    assert all("error" not in r for r in results), results
    return [r["out"] for r in results]


def jinja_or_none(template: str, msgs: list[dict], bos: str, eos: str) -> str | None:
    try:
        return render_chat(template, msgs, bos_token=bos, eos_token=eos, add_generation_prompt=True)
    except GgtoolError:
        return None  # the template refuses this conversation (raise_exception): nothing to match


@pytest.mark.parametrize("name", [*SEEDS, *PUBLIC])
def test_go_template_renders_the_jinja_prompt(go_render, name):
    template, bos, eos, add_bos, trims = {**SEEDS, **PUBLIC}[name]
    fmt = derive_format(template, bos, eos, add_bos)
    assert bool(fmt.notes) == trims  # only templates that trim content carry a note, and they do
    cases = [c for c in CONVERSATIONS if jinja_or_none(template, c, bos, eos) is not None]
    assert [U1] in cases and [U1, A1, U2, A2, U3] in cases
    # through the Modelfile as Ollama's parser reads it; a default system message travels as SYSTEM, which
    # Ollama inserts as a first system message: the harness does the same
    # --template go: the derivation is checked for every template, also those `auto` defers to the GGUF's Jinja
    parts = modelfile_parts(modelfile_text(template, bos=bos, eos=eos, add_bos=add_bos, from_path="./m.gguf",
                                           template_mode="go"))
    assert parts["template"] == fmt.go_template()
    assert (parts["system"] or None) == (fmt.default_system or None)
    outs = render_go(go_render, parts["template"], cases, system=parts["system"] or "")
    for msgs, out in zip(cases, outs):
        want = effective_prompt(jinja_or_none(template, msgs, bos, eos), bos, add_bos)
        assert effective_prompt(out, bos, add_bos) == want, (name, msgs)
        # the Python model used for the derivation's own check agrees with Go
        assert out == fmt.render(ollama_messages(msgs, fmt.default_system))
        if fmt.bos:  # BOS comes from the tokenizer, so the template must not write it as well
            assert not out.startswith(fmt.bos)
    if name in ("qwen2.5-default-system", "vicuna-default-system"):
        assert fmt.default_system and fmt.default_system in outs[0]


@pytest.mark.parametrize("name", [n for n, v in {**SEEDS, **PUBLIC}.items() if not v[4]])
def test_whitespace_around_content_is_kept_exactly(go_render, name):
    template, bos, eos, add_bos, _ = {**SEEDS, **PUBLIC}[name]
    fmt = derive_format(template, bos, eos, add_bos)
    msgs = [{"role": "user", "content": "  padded\n"}, {"role": "assistant", "content": "\n reply \t"},
            {"role": "user", "content": " again "}]
    want = jinja_or_none(template, msgs, bos, eos)
    [out] = render_go(go_render, fmt.go_template(), [msgs], system=fmt.default_system or "")
    assert effective_prompt(out, bos, add_bos) == effective_prompt(want, bos, add_bos)


def test_trimming_template_is_refused_when_strict():
    template, bos, eos, add_bos, _ = PUBLIC["llama-3"]
    with pytest.raises(GgtoolError, match="trims user"):
        derive_format(template, bos, eos, add_bos, strict=True)


@pytest.mark.parametrize("name", list(REFUSED))
def test_inexpressible_templates_are_refused_naming_the_construct(name):
    template, fragment = REFUSED[name]
    with pytest.raises(GgtoolError, match="cannot be written as an Ollama template") as e:
        derive_format(template, "<s>", "</s>", True)
    assert fragment in str(e.value)


def ollama_parser_keeps(value: str) -> str:
    """What Ollama's Modelfile parser keeps of a quoted value: printable runes, spaces and newlines (no unescaping)."""
    return "".join(ch for ch in value if ch.isprintable() or ch in " \t\n\r")


def modelfile_parts(text: str) -> dict:
    """FROM, TEMPLATE, SYSTEM and PARAMETERs of a Modelfile as ggtool writes it, as Ollama's parser reads them."""
    text = ollama_parser_keeps(text)
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    template = template.group(1) if template else None
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    params: dict[str, list[str]] = {}
    for key, value in re.findall(r"^PARAMETER (\S+) (.*)$", text, re.M):
        params.setdefault(key, []).append(value)
    return {"from": re.search(r"^FROM (.*)$", text, re.M).group(1), "template": template,
            "system": system.group(1) if system else None, "params": params}


def test_non_printable_characters_survive_the_modelfile(go_render):
    """Ollama's parser drops non-printable runes: role tags with a zero-width space or NBSP must still match."""
    template = ("{{ bos_token }}{% for m in messages %}{{ '<\u200bturn\u00a0' + m.role + '>\n' + m.content + "
                "'<\u200b/turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<\u200bturn\u00a0assistant>\n' }}"
                "{% endif %}")
    text = modelfile_text(template, bos="<s>", eos="</s>", add_bos=True, from_path="./m.gguf")
    parts = modelfile_parts(text)
    outs = render_go(go_render, parts["template"], [[U1], [S, U1, A1, U2]])
    for msgs, out in zip([[U1], [S, U1, A1, U2]], outs):
        assert "<s>" + out == render_chat(template, msgs, bos_token="<s>", eos_token="</s>")


def test_modelfile_text_has_system_default_stops_and_parameters(go_render):
    template, bos, eos, add_bos, _ = PUBLIC["qwen2.5-default-system"]
    text = modelfile_text(template, bos=bos, eos=eos, add_bos=add_bos, from_path="./qwen.gguf",
                          parameters={"temperature": 0.7, "top_k": 20, "num_ctx": 4096}, template_mode="go")
    parts = modelfile_parts(text)
    assert parts["from"] == "./qwen.gguf"
    assert parts["system"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert parts["params"]["stop"] == ['"<|im_end|>"', '"<|im_start|>user"']
    assert parts["params"]["temperature"] == ["0.7"] and parts["params"]["top_k"] == ["20"]
    assert parts["params"]["num_ctx"] == ["4096"]
    [out] = render_go(go_render, parts["template"], [[U1]], system=parts["system"])
    assert out == render_chat(template, [U1], bos_token=bos, eos_token=eos)


@pytest.fixture(scope="module")
def tiny_gguf(olmoe_checkpoint, tmp_path_factory) -> Path:
    from ggtool.convert import convert

    out = tmp_path_factory.mktemp("ollama") / "olmoe-tiny-f16.gguf"
    convert(olmoe_checkpoint, out, "f16")
    return out


def test_modelfile_command_from_gguf_and_plan(go_render, tiny_gguf, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"model": str(tiny_gguf), "n_gpu_layers": 5, "n_ctx": 2048, "type_k": "f16",
                                "type_v": "f16", "flash_attn": False, "overrides": [], "rpc": [], "predicted": {}}))
    (tmp_path / "ollama").mkdir()
    dest = tmp_path / "ollama" / "Modelfile"
    r = run_cli("modelfile", tiny_gguf, "--plan", plan, "-o", dest)
    assert r.returncode == 0, r.stderr
    parts = modelfile_parts(dest.read_text())
    assert (dest.parent / parts["from"]).resolve() == tiny_gguf.resolve()
    assert not Path(parts["from"]).is_absolute()
    assert parts["params"]["num_ctx"] == ["2048"] and parts["params"]["num_gpu"] == ["5"]
    assert '"<|endoftext|>"' in parts["params"]["stop"]
    from ggtool.gguf_in import read_gguf_chat

    from ggtool.llama.model import LlamaModel

    chat = read_gguf_chat(tiny_gguf)
    outs = render_go(go_render, parts["template"], [[U1], [S, U1, A1, U2]])
    with LlamaModel(tiny_gguf, vocab_only=True) as model:
        for msgs, out in zip([[U1], [S, U1, A1, U2]], outs):
            want = render_chat(chat.template, msgs, bos_token=chat.bos, eos_token=chat.eos)
            assert effective_prompt(out, chat.bos, chat.add_bos) == effective_prompt(want, chat.bos, chat.add_bos)
            # the token ids Ollama's runner makes (BOS per the GGUF, specials parsed) are `ggtool run --chat`'s
            ollama_ids = model.tokenize(out, add_special=True, parse_special=True)
            run_ids = model.tokenize(want, add_special=not want.startswith(chat.bos), parse_special=True)
            assert ollama_ids == run_ids
            assert ollama_ids[0] == int(model.meta("tokenizer.ggml.bos_token_id"))  # BOS once, as a token
            assert ollama_ids[1] != ollama_ids[0]


def test_modelfile_command_refuses_clearly(tmp_path):
    r = run_cli("modelfile", tmp_path / "missing.gguf", "-o", tmp_path / "Modelfile")
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "Modelfile").exists()


def test_checked_in_modelfiles_are_current(go_render):
    """modelfiles/ holds what write_seed_modelfiles generates today, and each renders its template exactly."""
    from ggtool.ollama import SEED_MODELFILES, seed_modelfile

    folder = Path(__file__).parent.parent / "modelfiles"
    for name in SEED_MODELFILES:
        text = seed_modelfile(name)
        assert (folder / name / "Modelfile").read_text() == text, f"modelfiles/{name} is stale"
        parts = modelfile_parts(text)
        template, bos, eos, add_bos, _ = SEEDS["olmoe-tulu" if name.startswith("SmartMoE") else
                                              "neo-3" if name.startswith("neo-3") else
                                              "ssmoelm-it" if name.startswith("SSMoELM") else "metis-think"]
        outs = render_go(go_render, parts["template"], [[U1], [S, U1, A1, U2]], system=parts["system"] or "")
        for msgs, out in zip([[U1], [S, U1, A1, U2]], outs):
            want = render_chat(template, msgs, bos_token=bos, eos_token=eos)
            assert effective_prompt(out, bos, add_bos) == effective_prompt(want, bos, add_bos), name


# a ChatML template with reasoning: Ollama >= 0.30 sees "thinking" (<think> and </think> in the text)
CHATML_THINK = ("{% for message in messages %}{% set content = message['content'] %}{% if message['role'] == "
                "'assistant' and '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
                "{{'<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}")


def test_templates_with_tools_or_thinking_defer_to_the_gguf_jinja():
    """Ollama >= 0.30 prefers the GGUF's Jinja over a Go TEMPLATE that lacks its tools/thinking: such templates get
    no TEMPLATE (said in the Modelfile, with the reason); every other template gets the Go TEMPLATE, which then has
    every capability Ollama reads from the Jinja, so Ollama uses it."""
    from ggtool.ollama import DEFERRED_NOTE, ollama_jinja_capabilities

    cases = {**SEEDS, **PUBLIC, "chatml-think": (CHATML_THINK, "", "<|im_end|>", False, False)}
    deferred = {}
    for name, (template, bos, eos, add_bos, _) in cases.items():
        text = modelfile_text(template, bos=bos, eos=eos, add_bos=add_bos, from_path="./m.gguf")
        parts = modelfile_parts(text)
        caps = ollama_jinja_capabilities(template)
        if caps:
            assert parts["template"] is None and DEFERRED_NOTE in text, name
            deferred[name] = re.search(r"^# no TEMPLATE: .*$", text, re.M).group(0)
        else:
            assert parts["template"] and "# template: Go TEMPLATE" in text, name
            assert ".Tools" not in parts["template"] and ".Thinking" not in parts["template"]
    assert sorted(deferred) == ["chatml-think", "qwen2.5-default-system"]
    assert "has tools" in deferred["qwen2.5-default-system"] and "has thinking" in deferred["chatml-think"]
    # the end-of-turn stops stay, and --template go still writes the Go TEMPLATE
    qwen = PUBLIC["qwen2.5-default-system"]
    text = modelfile_text(qwen[0], bos=qwen[1], eos=qwen[2], add_bos=qwen[3], from_path="./m.gguf")
    assert modelfile_parts(text)["params"]["stop"] == ['"<|im_end|>"', '"<|im_start|>user"']
    text = modelfile_text(qwen[0], bos=qwen[1], eos=qwen[2], add_bos=qwen[3], from_path="./m.gguf", template_mode="go")
    assert modelfile_parts(text)["template"] and "OLLAMA_GO_TEMPLATE=1" in text


def test_modelfile_command_prints_the_template_choice(tiny_gguf, tmp_path):
    r = run_cli("modelfile", tiny_gguf, "-o", tmp_path / "Modelfile")
    assert r.returncode == 0, r.stderr
    assert "template: Go TEMPLATE" in r.stdout
    r = run_cli("modelfile", tiny_gguf, "-o", tmp_path / "Modelfile", "--template", "jinja")
    assert r.returncode == 0 and "template: no TEMPLATE" in r.stdout
    assert modelfile_parts((tmp_path / "Modelfile").read_text())["template"] is None
    r = run_cli("modelfile", tiny_gguf, "-o", tmp_path / "Modelfile", "--template", "bogus")
    assert r.returncode != 0 and "Traceback" not in r.stderr
