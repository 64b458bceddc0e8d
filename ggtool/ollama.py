"""`ggtool modelfile`: an Ollama Modelfile whose Go TEMPLATE makes exactly the prompts the GGUF's chat template makes.

The Jinja chat template is never translated construct by construct. It is rendered (sandboxed) on probe
conversations whose contents are unique markers; the text between the markers gives, for each pair of
neighbouring roles, the text the template puts between two messages. Those transitions are factored into
one prefix and one suffix per role, a header and a generation prompt (`ChatFormat`), which is written out as
a Go text/template over Ollama's `.Messages`. The format is then checked by rendering every probe, and
probes with awkward contents (whitespace at the ends, braces, reasoning tags), through a Python model of
how Ollama renders the emitted template; any difference refuses the template, naming what differs.

How Ollama renders (template/template.go, server/routes.go): a template that mentions `.Messages` gets the
whole conversation, system messages included, with consecutive messages of one role merged ("\n\n"), and
`.System` (all system messages joined); when a chat has no system message and the Modelfile has SYSTEM, that
text is inserted as a first system message. Ollama's llama.cpp runner tokenizes the prompt with special
tokens parsed and BOS added when the GGUF's tokenizer.ggml.add_bos_token says so, so a template's leading
BOS is left out of the Go template when the tokenizer adds it (and kept, as text, when it does not).

Ollama >= 0.30 (llama-server runner) uses a Go TEMPLATE only when the GGUF's Jinja has no capability the Go
template lacks (tools, thinking); otherwise it renders the Jinja with llama-server. `choose_template` follows
that rule: such templates get no TEMPLATE, and the Modelfile says so. With a plan, the placement goes in the
server environment (plan/export.py `ollama_setup`), not in num_gpu.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import GgtoolError
from .families import client_note
from .families.metis import METIS_CHAT_TEMPLATE
from .families.mixtral import NEO3_CHAT_TEMPLATE
from .families.olmoe import TULU_TEMPLATE
from .families.ssmoelm import CHAT_TEMPLATE as SSMOELM_TEMPLATE
from .gguf_in import read_gguf_chat
from .outputs import atomic_output, check_destination, refuse_inputs
from .plan.export import load_plan, ollama_env_text, ollama_modelfile_comment, ollama_setup, write_ollama_env
from .template_check import LLAMA_CPP, check_template, enforce
from .templates import render_chat

ROLE_LETTERS = {"s": "system", "u": "user", "a": "assistant"}
# probe conversations (role letters) used to derive the format, then more used only to check it
DERIVE_PROBES = ["u", "uau", "uauau", "su", "suau", "uasu"]
CHECK_PROBES = ["suauau", "suasu", "uasuau", "suauasu"]
# contents chosen to catch templates that transform content (trim, strip reasoning, escape braces...)
AWKWARD = {"system": " Be brief.\n\n", "user": "  two\nlines {{ .Content }} \"q\" \n",
           "assistant": "<think>plan</think>\nanswer ", "user2": "\tok?"}


@dataclass
class ChatFormat:
    """A chat template reduced to fixed text around each message (what the Go template reproduces)."""

    header_user: str  # before the first message when it is not a system message
    header_system: str  # before a leading system message
    prefix: dict[str, str]  # role -> text before its content; "system0" is a leading system message
    suffix: dict[str, str]  # role -> text after its content (an assistant message that ends the chat has none)
    generation: str  # after the last message when it is not the assistant's (the generation prompt)
    system_supported: bool = True  # False: the template refuses system messages
    default_system: str | None = None  # the system text the template uses when the chat has none
    bos: str = ""  # BOS text the tokenizer adds in front (removed from the headers)
    notes: list[str] = field(default_factory=list)  # where Ollama's prompt can differ (e.g. trimmed content)

    def render(self, messages: list[dict]) -> str:
        """The prompt the emitted Go template makes of an Ollama-collated conversation (before BOS)."""
        if not messages:
            return self.header_user
        out = [self.header_system if messages[0]["role"] == "system" else self.header_user]
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            role = "system0" if (m["role"] == "system" and i == 0) else m["role"]
            if role not in self.prefix:
                continue  # tool and other roles: not part of the derived format
            out.append(self.prefix[role] + m["content"])
            if not (last and role == "assistant"):
                out.append(self.suffix[role])
            if last and role != "assistant":
                out.append(self.generation)
        return "".join(out)

    def go_template(self) -> str:
        """The Ollama TEMPLATE text (Go text/template over .Messages)."""

        def q(s: str) -> str:
            return "{{ " + go_string(s) + " }}" if s else ""

        def turn(role: str) -> str:
            text = q(self.prefix[role]) + "{{ .Content }}"
            if role == "assistant":  # a final assistant message is continued (Ollama's prefill), not closed
                return text + ("{{ if not $last }}" + q(self.suffix[role]) + "{{ end }}" if self.suffix[role] else "")
            return text + q(self.suffix[role])

        lines = []
        if self.header_system != self.header_user:
            lines.append('{{- if and .Messages (eq (index .Messages 0).Role "system") }}' + q(self.header_system)
                         + "{{ else }}" + q(self.header_user) + "{{ end }}")
        elif self.header_user:
            lines.append("{{- " + go_string(self.header_user) + " }}")
        lines.append("{{- range $i, $_ := .Messages }}")
        lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
        first, later = "system0" in self.prefix, "system" in self.prefix
        if first or later:
            if first and later and ((self.prefix["system"], self.suffix["system"])
                                    == (self.prefix["system0"], self.suffix["system0"])):
                body = turn("system")
            elif first and later:
                body = "{{ if eq $i 0 }}" + turn("system0") + "{{ else }}" + turn("system") + "{{ end }}"
            elif first:  # the template drops later system messages
                body = "{{ if eq $i 0 }}" + turn("system0") + "{{ end }}"
            else:
                body = "{{ if ne $i 0 }}" + turn("system") + "{{ end }}"
            lines.append('{{- if eq .Role "system" }}' + body)
            lines.append('{{- else if eq .Role "user" }}' + turn("user"))
        else:
            lines.append('{{- if eq .Role "user" }}' + turn("user"))
        lines.append('{{- else if eq .Role "assistant" }}' + turn("assistant"))
        lines.append("{{- end }}")
        if self.generation:
            lines.append('{{- if and $last (ne .Role "assistant") }}' + q(self.generation) + "{{ end }}")
        lines.append("{{- end }}")
        return "\n".join(lines)

    def stops(self, eos: str) -> list[str]:
        """End-of-turn strings: EOS, the assistant's turn terminator, the next user turn's tag."""
        out = []
        for s in (eos, self.suffix["assistant"].strip(), self.prefix["user"].strip()):
            s = s.strip().split("\n")[0].strip()
            if s and s not in out and '"' not in s:
                out.append(s)
        return out


# -- Ollama's side of the rendering -----------------------------------------------------------------

def go_string(s: str) -> str:
    """A Go interpreted string literal for `s` with every non-printable character escaped: Ollama's Modelfile
    parser drops non-printable runes (strconv.IsPrint) other than spaces and newlines, but keeps backslashes."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def survives_modelfile(s: str) -> bool:
    """Whether Ollama's Modelfile parser keeps `s` as is inside triple quotes."""
    return '"""' not in s and all(ch.isprintable() or ch in " \t\n\r" for ch in s)


def ollama_messages(messages: list[dict], system: str | None) -> list[dict]:
    """The conversation as Ollama hands it to a .Messages template: SYSTEM inserted first when the chat has
    no system message, consecutive messages of one role merged with a blank line (template.go's collate)."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    out: list[dict] = []
    for m in msgs:
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1]["content"] += "\n\n" + m["content"]
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def effective_prompt(text: str, bos: str, add_bos: bool) -> str:
    """What the model reads: llama.cpp (and Ollama) add BOS in front when the tokenizer says so and the text
    does not start with it already."""
    return bos + text if add_bos and bos and not text.startswith(bos) else text


# -- derivation -------------------------------------------------------------------------------------

def _conversation(letters: str) -> list[dict]:
    """A probe conversation whose contents are unique markers."""
    return [{"role": ROLE_LETTERS[c], "content": f"QX{c}{k}XQ"} for k, c in enumerate(letters)]


def _lcs(strings: list[str]) -> str:
    """Longest common suffix."""
    first = strings[0]
    n = 0
    while n < len(first) and all(len(s) > n and s[-1 - n] == first[-1 - n] for s in strings):
        n += 1
    return first[len(first) - n:]


class _Refused(Exception):
    pass


class _Deriver:
    def __init__(self, template: str, bos: str, eos: str, add_bos: bool):
        self.template, self.bos, self.eos, self.add_bos = template, bos, eos, add_bos

    def jinja(self, msgs: list[dict], gen: bool = True, **kw) -> str | None:
        """The template's prompt, or None when the template refuses the conversation (raise_exception)."""
        try:
            return render_chat(self.template, msgs, bos_token=self.bos, eos_token=self.eos,
                               add_generation_prompt=gen, **kw)
        except GgtoolError as e:
            if "sandbox" in str(e) or "does not parse" in str(e):
                raise
            return None

    def transitions(self, letters: str, gen: bool) -> list[tuple[str, str, str]] | str | None:
        """(role before, role after, text between) along a probe; None: refused; "dropped": system not shown."""
        msgs = _conversation(letters)
        text = self.jinja(msgs, gen)
        if text is None:
            return None
        pieces, pos = [], 0
        if any(m["role"] == "system" and m["content"] not in text for m in msgs):
            return "dropped"
        for m in msgs:
            c = m["content"]
            if text.count(c) != 1:
                raise _Refused(f"the {m['role']} message's content is not rendered exactly once, as given"
                               f" (probe {letters!r})")
            at = text.find(c)
            if at < pos:
                raise _Refused(f"a {m['role']} message is rendered out of order (the template moves it to another"
                               f" turn; probe {letters!r})")
            pieces.append(text[pos:at])
            pos = at + len(c)
        pieces.append(text[pos:])
        roles = ["start"] + ["system0" if (m["role"] == "system" and i == 0) else m["role"]
                             for i, m in enumerate(msgs)] + ["end" if gen else "endng"]
        return [(roles[i], roles[i + 1], pieces[i]) for i in range(len(pieces))]

    def derive(self) -> ChatFormat:
        seen: dict[tuple[str, str], str] = {}
        refused: set[str] = set()
        dropped: set[str] = set()
        # without a generation prompt, what follows the last message shows where each suffix ends
        probes = [(p, True) for p in DERIVE_PROBES] + [("u", False), ("ua", False)]
        for letters, gen in probes:
            t = self.transitions(letters, gen)
            if t is None and not gen:
                continue  # hints only: a template may insist on a generation prompt
            if t is None or t == "dropped":
                if "s" not in letters:
                    raise _Refused(f"the template refuses a plain conversation ({letters!r})")
                (refused if t is None else dropped).add("system0" if letters.startswith("s") else "system")
                continue
            for a, b, text in t:
                if (a, b) in seen and seen[(a, b)] != text:
                    raise _Refused(f"the text between a {a} and a {b} message changes along the conversation "
                                   f"({seen[(a, b)]!r} vs {text!r})")
                seen[(a, b)] = text
        starts = {b: t for (a, b), t in seen.items() if a == "start"}
        leading_bos = bool(self.bos) and all(t.startswith(self.bos) for t in starts.values())
        if leading_bos:
            seen.update({("start", b): t[len(self.bos):] for b, t in starts.items()})
        fmt = self._factor(seen)
        # a template may close the final message differently (Tulu: no newline after the last reply): drop those hints
        for drop in (("assistant",), ("user",), ("assistant", "user")):
            if fmt is None:
                fmt = self._factor({k: v for k, v in seen.items() if not (k[1] == "endng" and k[0] in drop)})
        if fmt is None:
            raise _Refused("the text between two messages depends on both roles, not on one prefix and suffix per "
                           "role")
        fmt.bos = self.bos if leading_bos and self.add_bos else ""
        if leading_bos and not self.add_bos:  # the tokenizer will not add it: the template must write it
            fmt.header_user, fmt.header_system = self.bos + fmt.header_user, self.bos + fmt.header_system
        fmt.system_supported = "system0" not in refused | dropped
        if "system" not in fmt.prefix and "system0" in fmt.prefix and "system" not in dropped:
            fmt.prefix["system"], fmt.suffix["system"] = fmt.prefix["system0"], fmt.suffix["system0"]
        if "system" in fmt.prefix and "system0" in fmt.prefix:
            # a leading system message's prefix often is the later one's plus header text: keep that in the header
            p0, p = fmt.prefix["system0"], fmt.prefix["system"]
            if p0 != p and p0.endswith(p) and fmt.suffix["system0"] == fmt.suffix["system"]:
                fmt.header_system += p0[:len(p0) - len(p)]
                fmt.prefix["system0"] = p
        if "system0" in fmt.prefix and fmt.header_user != fmt.header_system:
            block = fmt.header_system + fmt.prefix["system0"]
            hu, ss = fmt.header_user, fmt.suffix["system0"]
            if hu.startswith(block) and hu.endswith(ss) and len(hu) >= len(block) + len(ss):
                fmt.default_system = hu[len(block):len(hu) - len(ss)]
        return fmt

    @staticmethod
    def _factor(seen: dict[tuple[str, str], str]) -> ChatFormat | None:
        """One suffix per source role and one prefix per target role with suffix(a) + prefix(b) = text(a, b)."""
        sources = {a for a, _ in seen if a != "start"}
        targets = {b for _, b in seen}
        p = {b: len(_lcs([t for (a, bb), t in seen.items() if bb == b])) for b in targets}
        if "endng" in p:
            p["endng"] = 0  # nothing follows the last message when no generation prompt is asked for
        s: dict[str, int] = {}
        for _ in range(100):
            s = {a: max(len(t) - p[b] for (aa, b), t in seen.items() if aa == a) for a in sources}
            new_p = {b: min([len(t) - s[a] for (a, bb), t in seen.items() if bb == b and a != "start"]
                            + [len(t) for (a, bb), t in seen.items() if bb == b and a == "start"]) for b in targets}
            if "endng" in new_p:
                new_p["endng"] = min(new_p["endng"], 0)
            if new_p == p:
                break
            p = new_p
        if any(v < 0 for v in [*p.values(), *s.values()]):
            return None
        prefix = {b: next(t[len(t) - p[b]:] for (a, bb), t in seen.items() if bb == b) for b in targets}
        suffix = {a: next(t[:s[a]] for (aa, b), t in seen.items() if aa == a) for a in sources}
        for (a, b), t in seen.items():
            if t[len(t) - p[b]:] != prefix[b] or (a != "start" and (t[:len(t) - p[b]] != suffix[a])):
                return None
        heads = {b: t[:len(t) - p[b]] for (a, b), t in seen.items() if a == "start"}
        head_user = heads.get("user", "")
        gen = prefix.pop("end", "")
        prefix.pop("endng", None)
        if "assistant" not in prefix or "user" not in suffix or "assistant" not in suffix:
            return None
        return ChatFormat(header_user=head_user, header_system=heads.get("system0", head_user), prefix=prefix,
                          suffix=suffix, generation=gen)


def _check(d: _Deriver, fmt: ChatFormat, strict: bool) -> None:
    """Render every probe, plain and with awkward contents, both ways; refuse on the first difference."""
    cases = []
    for letters in DERIVE_PROBES + CHECK_PROBES:
        cases.append((letters, _conversation(letters)))
        awkward = []
        seen: dict[str, int] = {}
        for m in _conversation(letters):
            seen[m["role"]] = seen.get(m["role"], 0) + 1
            key = "user2" if (m["role"] == "user" and seen["user"] > 1) else m["role"]
            awkward.append({"role": m["role"], "content": AWKWARD[key]})
        cases.append((letters + " (awkward contents)", awkward))
    for name, msgs in cases:
        want = d.jinja(msgs)
        if want is None:
            continue
        got = effective_prompt(fmt.render(ollama_messages(msgs, fmt.default_system)), d.bos, d.add_bos)
        want = effective_prompt(want, d.bos, d.add_bos)
        if got != want and "awkward" in name:
            trimmed = _trimmed_roles(fmt, msgs, want, d)
            if trimmed:
                if strict:
                    raise _Refused(f"the template trims {', '.join(trimmed)} message content (| trim), which a Go "
                                   "template cannot")
                note = (f"the chat template trims whitespace around {', '.join(trimmed)} message content, which "
                        "Ollama's template language cannot: prompts match exactly for content without "
                        "leading/trailing whitespace")
                if note not in fmt.notes:
                    fmt.notes.append(note)
                continue
        if got != want:
            at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            what = ("message content is transformed (e.g. trimmed, or reasoning removed)" if "awkward" in name
                    else "the rendering depends on more than each message's role")
            raise _Refused(f"{what}: probe {name!r} differs at character {at}: template gives "
                           f"{want[max(0, at - 20):at + 30]!r}, the derived format {got[max(0, at - 20):at + 30]!r}")
    t1 = d.jinja(_conversation("su"), now=_fixed_day(1))
    t2 = d.jinja(_conversation("su"), now=_fixed_day(2))
    if t1 != t2:
        raise _Refused("the template uses the current date (strftime_now), which a fixed Go template cannot")


def _trimmed_roles(fmt: ChatFormat, msgs: list[dict], want: str, d: _Deriver) -> tuple[str, ...]:
    """The smallest set of roles whose trimmed content makes the derived format match the template, or ()."""
    roles = ("system", "user", "assistant")
    for n in (1, 2, 3):
        for combo in itertools.combinations(roles, n):
            stripped = [dict(m, content=m["content"].strip() if m["role"] in combo else m["content"]) for m in msgs]
            got = effective_prompt(fmt.render(ollama_messages(stripped, fmt.default_system)), d.bos, d.add_bos)
            if got == want:
                return combo
    return ()


def _fixed_day(day: int):  # noqa: ANN202
    return datetime(2024, 1, day, 12, 0, 0)


def derive_format(template: str, bos: str = "", eos: str = "", add_bos: bool = False,
                  strict: bool = False) -> ChatFormat:
    """The ChatFormat equivalent to a Jinja chat template, or GgtoolError naming what cannot be expressed
    (`strict`: also refuse templates that trim message content)."""
    d = _Deriver(template, bos, eos, add_bos)
    try:
        fmt = d.derive()
        _check(d, fmt, strict)
    except _Refused as e:
        raise GgtoolError(f"the chat template cannot be written as an Ollama template exactly: {e}",
                          "write the TEMPLATE by hand, or fix the chat template") from None
    return fmt


# -- which template Ollama renders --------------------------------------------------------------------
# Ollama >= 0.30 (server/images.go) compares the capabilities of the Modelfile's Go TEMPLATE with those of the
# GGUF's Jinja template and prefers the Jinja (rendered by llama-server) when it has more, unless
# OLLAMA_GO_TEMPLATE is set. The Jinja side is a plain substring test (chatTemplateHasToolSupport,
# chatTemplateHasThinkingSupport); the Go side counts .Tools and thinking tags, which ggtool's Go templates do
# not carry. So a Go TEMPLATE is only used when the Jinja shows neither tools nor thinking.

TEMPLATE_MODES = ("auto", "go", "jinja")


def ollama_jinja_capabilities(template: str) -> list[str]:
    """The capabilities Ollama >= 0.30 reads from a GGUF chat template's text ("tools", "thinking")."""
    caps = []
    if "tools" in template or "tool_call" in template:
        caps.append("tools")
    if ("<think>" in template and "</think>" in template) or (
            ("content.split('</think>')" in template or 'content.split("</think>")' in template)
            and "reasoning_content" not in template and "<SPECIAL_12>" not in template):
        caps.append("thinking")
    return caps


@dataclass
class TemplateChoice:
    go: bool  # True: a Go TEMPLATE is written; False: deferred to the GGUF's Jinja (no TEMPLATE)
    reason: str

    def describe(self) -> str:
        return ("Go TEMPLATE" if self.go else "no TEMPLATE (the GGUF's Jinja, rendered by llama-server)") + \
            f": {self.reason}"


def choose_template(template: str, mode: str = "auto") -> TemplateChoice:
    """Whether the Modelfile carries a Go TEMPLATE or defers to the GGUF's Jinja chat template."""
    if mode not in TEMPLATE_MODES:
        raise GgtoolError(f"--template {mode!r}: choose one of {', '.join(TEMPLATE_MODES)}")
    caps = ollama_jinja_capabilities(template)
    if mode == "go":
        note = (f"; the chat template has {' and '.join(caps)}, which it does not carry, so Ollama >= 0.30 uses it "
                "only with OLLAMA_GO_TEMPLATE=1") if caps else ""
        return TemplateChoice(True, "--template go" + note)
    if mode == "jinja":
        return TemplateChoice(False, "--template jinja")
    if caps:
        return TemplateChoice(False, f"the chat template has {' and '.join(caps)} (Ollama's test: "
                                     "\"tools\"/\"tool_call\", <think>...</think>), which ggtool's Go templates do not "
                                     "carry, so Ollama >= 0.30 would prefer the GGUF's Jinja anyway")
    return TemplateChoice(True, "the chat template has no tools or thinking: Ollama >= 0.30 uses this TEMPLATE")


# -- the Modelfile ----------------------------------------------------------------------------------

def _quoted(s: str) -> str:
    if '"""' in s:
        raise GgtoolError('a Modelfile value contains """, which a Modelfile cannot quote')
    return '"""' + s + '"""'


def modelfile_text(template: str, *, bos: str = "", eos: str = "", add_bos: bool = False, from_path: str,
                   parameters: dict[str, float | int] | None = None, system: str | None = None,
                   comment: str = "", strict: bool = False, template_mode: str = "auto") -> str:
    """A complete Modelfile for a model whose chat template is `template` (Jinja)."""
    return build_modelfile(template, bos=bos, eos=eos, add_bos=add_bos, from_path=from_path, parameters=parameters,
                           system=system, comment=comment, strict=strict, template_mode=template_mode)[0]


DEFERRED_NOTE = ("no TEMPLATE: deliberately deferred to the GGUF's own Jinja chat template (tokenizer.chat_template), "
                 "which Ollama >= 0.30 renders with llama-server")
OLDER_OLLAMA_NOTE = ("older Ollama (its own runner) cannot render Jinja and guesses a template from its own list: "
                     "for it, write a Go TEMPLATE with `ggtool modelfile --template go` (tools and thinking not "
                     "carried)")


def build_modelfile(template: str, *, bos: str, eos: str, add_bos: bool, from_path: str,
                    parameters: dict[str, float | int] | None, system: str | None, comment: str,
                    strict: bool, template_mode: str = "auto") -> tuple[str, ChatFormat | None]:
    """The Modelfile text and the ChatFormat it was written from (None when the template is deferred to the
    GGUF's Jinja: see `choose_template`)."""
    choice = choose_template(template, template_mode)
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    if choice.go:
        fmt: ChatFormat | None = derive_format(template, bos, eos, add_bos, strict)
        lines.append(f"# template: {choice.describe()}")
        lines += [f"# note: {n}" for n in fmt.notes]
        if not fmt.system_supported:
            lines.append("# the chat template refuses or ignores system messages: do not set SYSTEM for this model")
        lines += [f"FROM {from_path}", "", f"TEMPLATE {_quoted(fmt.go_template())}", ""]
        default = system if system is not None else fmt.default_system
        # the template writes the default system block itself when a chat has none, so SYSTEM is only a convenience
        if default and survives_modelfile(default):
            lines += [f"SYSTEM {_quoted(default)}", ""]
        stops = fmt.stops(eos)
    else:
        # a deferred template is rendered by llama.cpp's own engine (common/jinja, in llama-server): write_modelfile
        # checks every template with it (template_check, LLAMA_CPP) before anything is written
        lines += [f"# {DEFERRED_NOTE}: {choice.reason}", f"# {OLDER_OLLAMA_NOTE}"]
        try:  # end-of-turn strings still help Ollama stop; llama-server also stops at the GGUF's EOG tokens
            fmt = None
            stops = derive_format(template, bos, eos, add_bos).stops(eos)
        except GgtoolError:
            stops = [eos] if eos and '"' not in eos else []
        lines += [f"FROM {from_path}", ""]
        if system is not None and survives_modelfile(system):
            lines += [f"SYSTEM {_quoted(system)}", ""]
    for stop in stops:
        lines.append(f'PARAMETER stop "{stop}"')
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value:g}" if isinstance(value, float) else f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n", fmt


@dataclass
class ModelfileResult:
    dest: Path
    text: str
    notes: list[str]
    template: TemplateChoice | None = None
    env_path: Path | None = None  # the server environment written beside the Modelfile (with --plan)
    env_text: str = ""


ENV_FILE = "ollama.env"


def write_modelfile(model: Path, dest: Path, plan: Path | None = None, strict: bool = False,
                    force: bool = False, template_mode: str = "auto") -> ModelfileResult:
    """Write an Ollama Modelfile for `model` (a GGUF) at `dest`, FROM relative to the Modelfile's folder; with a
    plan, also the server environment that realises it (ollama.env beside the Modelfile). Refuses a template
    llama.cpp's engine (Ollama >= 0.30 renders the GGUF's Jinja with it) renders unlike jinja2, unless `force`."""
    model, dest = Path(model), Path(dest)
    chat = read_gguf_chat(model)
    if not chat.template:
        raise GgtoolError(f"{model}: has no tokenizer.chat_template", "convert it from a folder with a chat template")
    check_destination(dest, [("the model", model), ("the plan", plan)], example="Modelfile")
    engine_notes = enforce(check_template(chat.template, chat.bos, chat.eos, (LLAMA_CPP,)), str(model), (LLAMA_CPP,),
                           force)
    rel = os.path.relpath(model.resolve(), dest.parent.resolve())
    params: dict[str, float | int] = dict(chat.sampling)
    comment = [f"generated by ggtool from {model.name}'s tokenizer.chat_template"]
    setup = None
    if plan is not None:
        setup = ollama_setup(load_plan(plan))
        params.update(setup.parameters)
        comment += ollama_modelfile_comment(setup, ENV_FILE)

    arch_note = client_note(chat.arch, "Ollama")
    if arch_note:
        comment.append(f"note: {arch_note}")
    choice = choose_template(chat.template, template_mode)
    text, fmt = build_modelfile(chat.template, bos=chat.bos, eos=chat.eos, add_bos=chat.add_bos,
                                from_path=rel if rel.startswith(".") else f"./{rel}", parameters=params, system=None,
                                comment="\n".join(comment), strict=strict, template_mode=template_mode)

    env_path, env_text = None, ""
    if setup is not None:
        env_path, env_text = dest.parent / ENV_FILE, ollama_env_text(setup, model.name)
        refuse_inputs(env_path, [("the model", model), ("the plan", plan)])
        write_ollama_env(env_path, env_text)
    with atomic_output(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return ModelfileResult(dest, text, [*([arch_note] if arch_note else []), *engine_notes,
                                        *(fmt.notes if fmt else []), *(setup.notes if setup else [])],
                           choice, env_path, env_text)


# -- the Modelfiles in modelfiles/ for the seed families ----------------------------------------------

def _seed_table() -> dict[str, dict]:
    # template, BOS/EOS texts and add_bos as ggtool's conversion writes them; sampling from each card
    return {
        "SmartMoE-1B-7B": dict(template=TULU_TEMPLATE, bos="<|endoftext|>", eos="<|endoftext|>", add_bos=False,
                               file="SmartMoE-1B-7B-IQ3_M.gguf", parameters={"temperature": 0.7, "top_p": 0.9},
                               source="OLMoE-1B-7B-0125-Instruct's Tulu template; sampling from the SmartMoE card"),
        "neo-3-1B-A90M-Instruct": dict(template=NEO3_CHAT_TEMPLATE, bos="<s>", eos="</s>", add_bos=True,
                                       file="neo-3-1B-A90M-Instruct-Q8_0.gguf",
                                       parameters={"temperature": 0.7, "top_p": 0.9},
                                       source="neo-3's card convention (ggtool/families/mixtral.py); sampling from "
                                              "the card's usage snippet"),
        "neo-3-3B-A400M-Thinking": dict(template=NEO3_CHAT_TEMPLATE, bos="<s>", eos="</s>", add_bos=True,
                                        file="neo-3-3B-A400M-Thinking-Q8_0.gguf",
                                        parameters={"temperature": 0.4, "top_p": 0.9},
                                        source="neo-3's card convention (ggtool/families/mixtral.py); sampling from "
                                               "the card's usage snippet"),
        "SSMoELM-it": dict(template=SSMOELM_TEMPLATE, bos="<bos>", eos="<eos>", add_bos=True,
                           file="SSMoELM-it-lossless.gguf",
                           parameters={"temperature": 0.0, "top_k": 1, "top_p": 0.9, "repeat_penalty": 1.3},
                           source="the SSMoELM-it card's chat format (ggtool/families/ssmoelm.py) and decoding"),
        "Metis-1.5-think": dict(template=METIS_CHAT_TEMPLATE, bos="<bos>", eos="<eos>", add_bos=True,
                                file="Metis-1.5-think-f16.gguf", parameters={"temperature": 0.7, "top_p": 0.95},
                                source="the released tokenizer_config.json template and generation_config.json; "
                                       "note: Ollama loads it only once its bundled llama.cpp carries the metis "
                                       "architecture (ggtool's patches/llama.cpp/metis.patch)"),
    }


SEED_MODELFILES = ("SmartMoE-1B-7B", "neo-3-1B-A90M-Instruct", "neo-3-3B-A400M-Thinking", "SSMoELM-it",
                   "Metis-1.5-think")


def seed_modelfile(name: str) -> str:
    """The Modelfile text for one seed model (FROM its conventional file name in the same folder)."""
    s = _seed_table()[name]
    return modelfile_text(s["template"], bos=s["bos"], eos=s["eos"], add_bos=s["add_bos"], from_path=f"./{s['file']}",
                          parameters=s["parameters"],
                          comment=f"{name}: generated by ggtool.ollama.write_seed_modelfiles\nfrom {s['source']}")


def write_seed_modelfiles(folder: Path) -> list[Path]:
    """Write modelfiles/<name>/Modelfile for every seed model."""
    out = []
    for name in SEED_MODELFILES:
        dest = Path(folder) / name / "Modelfile"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(seed_modelfile(name), encoding="utf-8")
        out.append(dest)
    return out
