"""Rendering chat templates in a sandbox, with the environment Hugging Face's apply_chat_template provides.

Every chat template ggtool renders (run --chat, modelfile derivation, LM Studio checks) goes through
`render_chat`. The environment is jinja2's ImmutableSandboxedEnvironment with HF's additions
(raise_exception, strftime_now, tojson with HF's arguments, loop controls, `{% generation %}` blocks,
trim_blocks/lstrip_blocks). One change from stock jinja2: reaching for an unsafe attribute
(`__class__`, `__globals__`, `append` on an immutable list...) raises at once instead of yielding an
undefined value that prints as "", so an injection attempt fails loudly and executes nothing.

Rendering is bounded (`LIMITS`): every string or list the template builds (`*`, `+`, `~`, `%`, block sets,
macro output, the growing filters and string methods) and the output itself stay under a size limit checked
*before* the value is made; integers under a size in bits; loop iterations and calls under a count; the
whole render under a wall-time limit; nesting under Python's recursion limit. A template over a limit fails
with one line naming the limit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import threading
import time
from datetime import datetime
from typing import Any, Iterable

from jinja2 import TemplateError, filters as jfilters, nodes, utils as jutils
from jinja2.compiler import CodeGenerator
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


# -- limits --------------------------------------------------------------------------------------------
LIMITS = {
    "size": 4 << 20,  # characters (or items) in any string or list the template makes, and in its output
    "int_bits": 1 << 16,  # bits in any integer it computes
    "steps": 1_000_000,  # loop iterations plus calls
    "seconds": 1.0,  # wall time of one render
}


class TemplateLimit(Exception):
    """A render went over one of LIMITS."""


def _over(limit: str, what: str) -> TemplateLimit:
    shown = {"size": f"{LIMITS['size']:,} characters", "int_bits": f"{LIMITS['int_bits']:,}-bit integers",
             "steps": f"{LIMITS['steps']:,} loop iterations and calls",
             "seconds": f"{LIMITS['seconds']:g} s of rendering"}[limit]
    return TemplateLimit(f"{what} goes over the sandbox's limit of {shown}")


class _Budget(threading.local):
    steps = 0
    deadline = float("inf")


_BUDGET = _Budget()


def _tick(n: int = 1) -> None:
    _BUDGET.steps += n
    if _BUDGET.steps > LIMITS["steps"]:
        raise _over("steps", "the template")
    if not _BUDGET.steps & 1023 and time.monotonic() > _BUDGET.deadline:
        raise _over("seconds", "the template")


def _weight(value: Any) -> int:
    """Roughly the characters `value` stands for (strings, and lists/tuples of strings one level deep)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + sum(len(v) for v in value if isinstance(v, str))
    return 0


def _check_size(n: int, what: str) -> None:
    if n > LIMITS["size"]:
        raise _over("size", what)


def _checked_concat(pieces: Iterable[str]) -> str:
    """jinja2's concat (template output, block sets, macro results) with the size checked as it grows."""
    out, total = [], 0
    for p in pieces:
        total += len(p)
        _check_size(total, "the template's output")
        out.append(p)
    return "".join(out)


_PRINTF_NUMBER = re.compile(r"%[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_NUMBER = re.compile(r"\d+")


def _check_printf(fmt: str, args: Any) -> None:
    """A printf-style format whose widths or precisions would make a huge string."""
    star = False
    for m in _PRINTF_NUMBER.finditer(fmt):
        for g in m.groups():
            star |= g == "*"
            if g and g != "*" and int(g) > LIMITS["size"]:
                raise _over("size", f"the format width {g}")
    if star:
        values = args if isinstance(args, tuple) else (args,)
        if any(isinstance(v, int) and abs(v) > LIMITS["size"] for v in values):
            raise _over("size", "a * format width")


def _checked_binop(op: str, left: Any, right: Any) -> Any:
    if op == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                _check_size(_weight(seq) * max(n, 0), "a repeated string or list")
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > LIMITS["int_bits"]:
                raise _over("int_bits", "an integer product")
        return left * right
    if op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if (abs(left).bit_length() - 1) * right > LIMITS["int_bits"]:
                raise _over("int_bits", "a power")
        return left ** right
    if op == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_size(_weight(left) + _weight(right), "a concatenation")
        return left + right
    if op == "%":
        if isinstance(left, str):
            _check_printf(left, right)
        return left % right
    raise AssertionError(op)


class _Generator(CodeGenerator):
    """jinja2's code generator with `~` going through the checked concat."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:  # noqa: N802 - jinja2's visitor API
        self.write("environment.concat(map(str, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


def _guard_iter(iterable: Any) -> Any:
    """Every for-loop's iterable, counted against the step limit."""
    try:
        it = iter(iterable)
    except TypeError:
        return iterable  # jinja2 reports it as usual
    return _counted(it)


def _counted(it: Any) -> Any:
    for x in it:
        _tick()
        yield x


_LOOP_GUARD = "__ggtool_loop"

# str methods that make a string whose size their arguments set
_GROWING_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map", "replace", "join",
                    "splitlines", "split", "rsplit", "encode"}


def _check_call(obj: Any, args: tuple, kwargs: dict) -> tuple:
    """The call's arguments (an iterable to join, materialized) after checking what it would make."""
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format / format_map
    self_ = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(self_, str) and name in _GROWING_METHODS:
        if name == "join":
            items = list(args[0]) if args else []
            _check_size(sum(len(i) for i in items if isinstance(i, str)) + len(self_) * len(items),
                        "a joined string")
            args = (items,)
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            n = self_.count(args[0]) if args[0] else len(self_) + 1
            _check_size(len(self_) + n * len(args[1]), "a replaced string")
        elif name in ("format", "format_map"):
            for m in _FORMAT_NUMBER.finditer(self_):
                if int(m.group()) > LIMITS["size"]:
                    raise _over("size", f"the format width {m.group()}")
        for v in (*args, *kwargs.values()):
            if isinstance(v, int) and abs(v) > LIMITS["size"]:
                raise _over("size", f"{name}({v})")
    return args


def _filter(original: Any, check: Any) -> Any:
    """A jinja2 filter with `check(*args, **kwargs)` run first (the filter's pass_* marks kept)."""
    skip = 1 if getattr(original, "jinja_pass_arg", None) else 0  # the context / eval context / environment

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check(*args[skip:], **kwargs)
        return original(*args, **kwargs)
    return wrapper


def _width_check(value: Any, width: Any = 80, *rest: Any, **kwargs: Any) -> None:
    text = str(value)
    w = len(width) if isinstance(width, str) else width
    if isinstance(w, int):
        _check_size(max(len(text), w) + (text.count("\n") + 1) * max(w, 0), "a padded or indented string")


def _count_check(value: Any, count: Any = 1, *rest: Any, **kwargs: Any) -> None:
    if isinstance(count, int):
        _check_size(abs(count), f"a batch or slice of {count}")


def _format_check(value: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(value, str):
        _check_printf(value, args)


def _replace_check(s: Any, old: Any, new: Any, count: Any = None) -> None:
    s, old, new = str(s), str(old), str(new)
    n = s.count(old) if old else len(s) + 1
    _check_size(len(s) + n * len(new), "a replaced string")


def _join_check(value: Any, d: str = "", attribute: Any = None) -> None:
    if isinstance(value, (list, tuple)):
        _check_size(_weight(value) + len(str(d)) * len(value), "a joined string")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # HF's tojson: unlike jinja2's own filter, no HTML escaping and non-ASCII kept as is
    if isinstance(indent, int) and indent > 64 or isinstance(indent, str) and len(indent) > 64:
        raise _over("size", "a tojson indent over 64")
    out = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    _check_size(len(out), "tojson's output")
    return out


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - jinja2's names
    if not all(isinstance(v, int) for v in (n, min, max)) or n * max > 100_000:
        raise _over("size", f"lipsum({n}, max={max})")
    return jutils.generate_lorem_ipsum(n, html, min, max)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing on unsafe attribute access rather than returning an undefined value,
    with every growing operation checked against LIMITS."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_checked_concat)

    def unsafe_undefined(self, obj: Any, attribute: str):  # noqa: ANN201
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        return _checked_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805, B902
        _tick()
        args = _check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):  # every loop's iterable counted
            guard = nodes.Call(nodes.Name(_LOOP_GUARD, "load", lineno=loop.lineno), [loop.iter], [], None, None,
                               lineno=loop.lineno)
            guard.set_environment(self)
            loop.iter = guard
        return tree


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


@functools.lru_cache(maxsize=64)
def _compile(template: str):  # noqa: ANN202
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlocks, loopcontrols])
    env.filters["tojson"] = _tojson
    for name, check in (("center", _width_check), ("indent", _width_check), ("batch", _count_check),
                        ("slice", _count_check), ("format", _format_check), ("replace", _replace_check),
                        ("join", _join_check)):
        env.filters[name] = _filter(jfilters.FILTERS[name], check)
    env.globals["raise_exception"] = _raise_exception
    env.globals["lipsum"] = _lipsum
    env.globals[_LOOP_GUARD] = _guard_iter
    try:
        with _limits(compiling=True):
            return env.from_string(template)
    except TemplateError as e:
        raise GgtoolError(f"the chat template does not parse: {e}") from None
    except RecursionError:
        raise GgtoolError("the chat template does not parse: it nests deeper than the sandbox's recursion "
                          "limit") from None
    except (TemplateLimit, MemoryError) as e:
        raise GgtoolError(f"the chat template does not parse: {e or 'out of memory'}") from None
    except Exception as e:  # noqa: BLE001 - jinja2's compiler fails on some inputs with Python's errors
        raise GgtoolError(f"the chat template does not parse: {type(e).__name__}: {e}") from None


@contextlib.contextmanager
def _limits(compiling: bool = False):  # noqa: ANN202
    """The step count and wall-time limits around one render (compiling: five times the time): checked in
    every loop step and call, and (in the main thread) by a timer that interrupts even a loop that calls
    nothing."""
    seconds = LIMITS["seconds"] * (5 if compiling else 1)
    _BUDGET.steps = 0
    _BUDGET.deadline = time.monotonic() + seconds
    main = threading.current_thread() is threading.main_thread()
    if main:
        def on_alarm(signum: int, frame: Any) -> None:
            raise _over("seconds", "the template")
        previous = signal.signal(signal.SIGALRM, on_alarm)
        outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # a caller's own timer, restored after
        started = time.monotonic()
    try:
        yield
    finally:
        _BUDGET.deadline = float("inf")
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer:
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))


def render_chat(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, tools: list[dict] | None = None,
                now: datetime | None = None, **extra: Any) -> str:
    """The prompt text a chat template makes of `messages` (sandboxed and bounded by LIMITS; `now` fixes
    strftime_now)."""
    compiled = _compile(template)
    clock = now or datetime.now()
    variables = dict(extra, messages=messages, bos_token=bos_token, eos_token=eos_token,
                     add_generation_prompt=add_generation_prompt, tools=tools,
                     strftime_now=lambda fmt: clock.strftime(fmt))
    try:
        with _limits():
            return compiled.render(**variables)
    except SecurityError as e:
        raise GgtoolError(f"the chat template was stopped by the sandbox: {e}",
                          "it reaches for Python internals; nothing was executed") from None
    except TemplateLimit as e:
        raise GgtoolError(f"the chat template was stopped: {e}") from None
    except RecursionError:
        raise GgtoolError("the chat template was stopped: it recurses deeper than the sandbox's recursion "
                          "limit") from None
    except MemoryError:
        raise GgtoolError("the chat template was stopped: it ran out of memory") from None
    except TemplateError as e:
        raise GgtoolError(f"the chat template failed to render: {e}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as e:
        raise GgtoolError(f"the chat template failed to render: {type(e).__name__}: {e}") from None


def parse_template(template: str) -> None:
    """Refuse, in one line, a template that does not parse in this environment (without rendering it)."""
    _compile(template)
