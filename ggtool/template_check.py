"""One chat-template check across the engines users run: the same probe conversations rendered by jinja2 as
transformers renders them (the reference, ggtool's sandbox in templates.py), by llama.cpp's own `common/jinja`
engine (Ollama >= 0.30, llama-server, LM Studio's llama.cpp runtime) and by npm `@huggingface/jinja` (LM
Studio's template renderer). Each engine's outcome: same output, different output (the first difference), an
error, or "could not run" with the reason (no C++ compiler, no Node...), never a silent pass.

`convert` warns; `modelfile`, `export lmstudio` and `publish` refuse a template that an engine their target
runs cannot render as the reference does, naming the engine, unless `--force`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime

from .engines import EngineUnavailable, hf_jinja_dir, llama_jinja_binary, node
from .errors import GgtoolError
from .templates import render_chat

LLAMA_CPP = "llama.cpp"
HF_JINJA = "@huggingface/jinja"
ENGINES = (LLAMA_CPP, HF_JINJA)
USED_BY = {LLAMA_CPP: "Ollama >= 0.30, llama-server, LM Studio's llama.cpp runtime",
           HF_JINJA: "LM Studio's template renderer"}
TIMEOUT_S = 120  # per engine and template, all probes together

# (name, messages, add_generation_prompt): plain chats every chat template is meant to render
PROBES = [
    ("system+user+assistant+user", [{"role": "system", "content": "SYS-PROBE"},
                                    {"role": "user", "content": "USER-PROBE"},
                                    {"role": "assistant", "content": "ASSISTANT-PROBE"},
                                    {"role": "user", "content": "USER2-PROBE"}], True),
    ("user", [{"role": "user", "content": "Hello, how are you?"}], True),
    ("user+assistant", [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], False),
    # an earlier answer with its reasoning, and content starting with spaces (string methods must agree)
    ("reasoning", [{"role": "user", "content": "Why?"},
                   {"role": "assistant", "content": "<think>\nPLAN-PROBE\n</think>\n\n  ANSWER-PROBE"},
                   {"role": "user", "content": "  And then?"}], True),
]


@dataclass
class EngineOutcome:
    engine: str
    status: str  # "same" | "different" | "error" | "could not run"
    detail: str = ""  # the first difference, the error, or why the engine could not run

    @property
    def ok(self) -> bool:
        return self.status == "same"

    def line(self) -> str:
        """One line naming the engine, what uses it, and what happened."""
        what = {"different": "renders it differently from jinja2 (transformers)", "error": "fails on it",
                "could not run": "could not be run"}.get(self.status, "renders it as jinja2 does")
        return f"{self.engine} ({USED_BY.get(self.engine, '')}) {what}" + (f": {self.detail}" if self.detail else "")


@dataclass
class TemplateCheck:
    outcomes: list[EngineOutcome] = field(default_factory=list)
    reference_errors: dict[str, str] = field(default_factory=dict)  # probe -> jinja2's error (the template refuses)

    def outcome(self, engine: str) -> EngineOutcome:
        return next(o for o in self.outcomes if o.engine == engine)

    def problems(self, engines: tuple[str, ...] = ENGINES) -> list[EngineOutcome]:
        return [o for o in self.outcomes if o.engine in engines and not o.ok]


def _cases(bos: str, eos: str) -> list[dict]:
    return [{"messages": msgs, "bos_token": bos, "eos_token": eos, "add_generation_prompt": gen}
            for _, msgs, gen in PROBES]


def _reference(template: str, bos: str, eos: str, now: datetime) -> list[dict]:
    results = []
    for _, msgs, gen in PROBES:
        try:
            results.append({"ok": True, "text": render_chat(template, msgs, bos_token=bos, eos_token=eos,
                                                            add_generation_prompt=gen, now=now)})
        except GgtoolError as e:
            results.append({"ok": False, "error": str(e)})
    return results


def _run(engine: str, template: str, cases: list[dict]) -> list[dict]:
    """The engine's results for each case; raises EngineUnavailable when it cannot run."""
    if engine == LLAMA_CPP:
        cmd = [str(llama_jinja_binary())]
    else:
        folder = hf_jinja_dir()
        cmd = [node(), str(folder / "render.mjs")]
    try:
        proc = subprocess.run(cmd, input=json.dumps({"template": template, "cases": cases}), capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [{"ok": False, "error": f"no result within {TIMEOUT_S} s"} for _ in cases]
    except OSError as e:
        raise EngineUnavailable(f"{cmd[0]} could not be started ({e})") from None
    try:
        results = json.loads(proc.stdout)
    except ValueError:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return [{"ok": False, "error": f"crashed: {why}"} for _ in cases]
    if not isinstance(results, list) or len(results) != len(cases):
        raise EngineUnavailable(f"{engine}'s harness answered {str(results)[:80]!r}")
    return results


def _short(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip() and set(line.strip()) != {"-"}]
    return (lines[-1] if lines else str(text))[:200]


def first_difference(expected: str, got: str) -> str:
    """Where two renderings part: the offset and a few characters of each."""
    n = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return (f"at character {n}: jinja2 gives {expected[max(0, n - 12):n + 24]!r}, "
            f"the engine {got[max(0, n - 12):n + 24]!r}")


def _compare(engine: str, reference: list[dict], results: list[dict]) -> EngineOutcome:
    for (probe, _, _), ref, got in zip(PROBES, reference, results):
        if not ref["ok"]:
            if got.get("ok"):
                return EngineOutcome(engine, "different", f"probe {probe}: jinja2 refuses it "
                                     f"({_short(ref['error'])}) but the engine renders it")
            continue
        if not got.get("ok"):
            return EngineOutcome(engine, "error", f"probe {probe}: {_short(got.get('error', '?'))}")
        if got.get("text") != ref["text"]:
            return EngineOutcome(engine, "different", f"probe {probe}: {first_difference(ref['text'], got['text'])}")
    return EngineOutcome(engine, "same")


def check_template(template: str, bos: str = "", eos: str = "", engines: tuple[str, ...] = ENGINES) -> TemplateCheck:
    """Render the probes with jinja2 (reference) and each engine; the outcome per engine."""
    now = datetime.now()
    reference = _reference(template, bos, eos, now)
    check = TemplateCheck(reference_errors={p[0]: r["error"] for p, r in zip(PROBES, reference) if not r["ok"]})
    for engine in engines:
        try:
            results = _run(engine, template, _cases(bos, eos))
        except EngineUnavailable as e:
            check.outcomes.append(EngineOutcome(engine, "could not run", str(e)))
            continue
        check.outcomes.append(_compare(engine, reference, results))
    return check


def enforce(check: TemplateCheck, where: str, engines: tuple[str, ...], force: bool) -> list[str]:
    """Refuse when an engine in `engines` does not render the template as the reference does (unless `force`);
    else the warning lines to print (forced problems, and engines that could not run)."""
    problems = check.problems(engines)
    refusing = [o for o in problems if o.status != "could not run"]
    if refusing and not force:
        raise GgtoolError(f"{where}: its chat template: {refusing[0].line()}"
                          + (f" (and {len(refusing) - 1} more engine(s))" if len(refusing) > 1 else ""),
                          "fix the template, or pass --force to proceed anyway")
    return [f"{where}: chat template: {o.line()}" for o in problems]
