"""Hostile inputs stay bounded: template bombs, and corrupted GGUF models and importance matrices, each fail
in one line, quickly, in little memory."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ggtool.errors import GgtoolError
from ggtool.gguf_in import read_header
from ggtool.templates import render_chat

PAYLOADS = {
    "string repeat": "{{ 'a' * 10**10 }}",
    "center": "{{ 'x'|center(10**10) }}",
    "printf width": "{{ '%0999999999d' % 1 }}",
    "format filter": "{{ '%0999999999d'|format(1) }}",
    "str.format width": "{{ '{:>10000000000}'.format(1) }}",
    "ljust": "{{ 'x'.ljust(10**10) }}",
    "string doubling (+)": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                           "{% endfor %}{{ ns.s|length }}",
    "string doubling (~)": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                           "{% endfor %}{{ ns.s|length }}",
    "doubling by block set": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set t %}{{ ns.s }}"
                             "{{ ns.s }}{% endset %}{% set ns.s = t %}{% endfor %}",
    "list repeat then join": "{% set l = ['x' * 4000000] %}{{ (l * 100)|join }}",
    "replace growth": "{{ ('a' * 100000)|replace('a', 'b' * 100000) }}",
    "indent": "{{ 'x\nx'|indent(10**10) }}",
    "batch fill": "{{ [1]|batch(10**9, 0)|list|length }}",
    "slice": "{{ [1]|slice(10**9)|list|length }}",
    "nested range loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over a string": "{% set s = 'x' * 100000 %}{% for i in s %}{% for j in s %}{% endfor %}"
                                  "{% endfor %}",
    "exponential macro": "{% macro d(n) %}{% if n %}{{ d(n-1) }}{{ d(n-1) }}{% else %}x{% endif %}{% endmacro %}"
                         "{{ d(60)|length }}",
    "lipsum": "{{ lipsum(10**6) }}",
    "huge power": "{{ 2**(10**10) }}",
    "power tower": "{{ 10**(10**(10**10)) }}",
    "integer squaring": "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
                        "{% endfor %}{{ ns.x > 0 }}",
    "deep nesting": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "deep blocks": "{% if 1 %}" * 3000 + "{% endif %}" * 3000,
    "unbounded recursion": "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
}


def test_template_bombs_fail_fast_in_one_line_under_200_mb(tmp_path):
    """All payloads in one fresh process: each one's error and wall time, and the process's peak RSS after it
    (a running maximum, so each payload stayed under it)."""
    script = tmp_path / "bombs.py"
    script.write_text(f"""
import json, re, sys, time
def peak_rss():  # this process's own high-water mark: ru_maxrss would carry pytest's across fork and exec
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:[ \t]+([0-9]+) kB", f.read()).group(1)) * 1024
from ggtool.errors import GgtoolError
from ggtool.templates import render_chat
out = {{}}
for name, payload in json.loads(sys.argv[1]).items():
    t0 = time.monotonic()
    try:
        render_chat(payload, [{{"role": "user", "content": "hi"}}])
        error = None
    except GgtoolError as e:
        error = str(e)
    out[name] = [error, time.monotonic() - t0, peak_rss()]
print(json.dumps(out))
""")
    proc = subprocess.run([sys.executable, str(script), json.dumps(PAYLOADS)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    for name in PAYLOADS:
        error, seconds, rss = results[name]
        assert error is not None, f"{name}: rendered"
        assert "\n" not in error and "internal error" not in error, (name, error)
        assert "limit" in error, (name, error)  # names the limit it went over
        assert seconds < 2.0, (name, seconds)
        assert rss < 200 << 20, (name, rss >> 20)


def test_real_templates_render_as_before_under_the_limits():
    """What HF templates use stays available: namespace, loops, tojson, cycler and joiner (as transformers'
    environment has them), and a long conversation is far below the limits."""
    t = ("{% set ns = namespace(n=0) %}{% set c = cycler('a', 'b') %}{% set j = joiner(',') %}"
         "{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ j() }}{{ c.next() }}{{ m.content }}{% endfor %}"
         "|{{ ns.n }}|{{ messages[0]|tojson }}")
    msgs = [{"role": "user", "content": "x" * 1000} for _ in range(500)]
    out = render_chat(t, msgs)
    assert out.endswith('|500|{"role": "user", "content": "' + "x" * 1000 + '"}')
    assert out.split("|")[0].count(",") == 499


# -- corrupted GGUF models --------------------------------------------------------------------------------
def run_measured(*args: object) -> tuple[int, str, int]:
    """`ggtool ARGS` in a fresh process: exit status, stderr and that process's own peak RSS in bytes."""
    script = ("import os, resource, subprocess, sys\n"
              "p = subprocess.Popen([sys.executable, '-m', 'ggtool.cli', *sys.argv[1:]], stderr=subprocess.PIPE,"
              " stdout=subprocess.DEVNULL, text=True)\n"
              "err = p.stderr.read()\n"
              "_, status, usage = os.wait4(p.pid, 0)\n"
              "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)\n"
              "sys.stdout.write(err)\n")
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    first, _, err = proc.stdout.partition("\n")
    code, rss = map(int, first.split())
    return code, err, rss


def with_array_type(src: Path, dest: Path, key: str, etype: int) -> Path:
    """A copy of `src` with the element type of array `key` replaced."""
    info = read_header(src).arrays[key]
    data = bytearray(src.read_bytes())
    data[info.start - 12:info.start - 8] = struct.pack("<I", etype)
    dest.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("etype", [0, 8, 12])  # uint8, string, float64 instead of int32
def test_wrong_token_type_element_type_is_one_line_in_little_memory(olmoe_gguf, tmp_path, etype):
    bad = with_array_type(olmoe_gguf, tmp_path / "bad.gguf", "tokenizer.ggml.token_type", etype)
    for args in (["modelfile", bad, "-o", tmp_path / "Modelfile"],
                 ["export", "lmstudio", bad, "--publisher", "p", "--model", "m", "--root", tmp_path / "lms"],
                 ["inspect", bad], ["run", bad, "-n", "1"]):
        code, err, rss = run_measured(*args)
        assert code == 1, (args, err)
        assert len(err.strip().splitlines()) <= 2 and "internal error" not in err and str(bad) in err, (args, err)
        assert rss < 200 << 20, (args, rss >> 20)
    assert not (tmp_path / "Modelfile").exists() and not (tmp_path / "lms" / "p" / "m").exists()


def test_tensor_data_is_a_view_of_the_file(olmoe_gguf):
    import gguf

    from ggtool.gguf_in import tensor_data

    header = read_header(olmoe_gguf)
    reference = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(olmoe_gguf).tensors}  # independent reader
    for t in header.tensors:
        data = tensor_data(header, t)
        assert isinstance(data.base, np.memmap) or isinstance(data, np.memmap)
        assert np.array_equal(data, reference[t.name])
    assert header.array("tokenizer.ggml.tokens")[:3] == \
        gguf.GGUFReader(olmoe_gguf).get_field("tokenizer.ggml.tokens").contents()[:3]


# -- corrupted importance matrices ----------------------------------------------------------------------
def legacy_bytes(entries: list[tuple[str, int, list[float]]], chunks: int = 1) -> bytes:
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(values))
        out += struct.pack(f"<{len(values)}f", *values)
    return out + struct.pack("<ii", chunks, 2) + b"ds"


@pytest.mark.parametrize("blob, why", [
    (legacy_bytes([("blk.0.attn_q.weight", 1, [1.0, float("nan")])]), "NaN"),
    (legacy_bytes([("blk.0.attn_q.weight", 1, [1.0, -2.0])]), "negative"),
    (legacy_bytes([("blk.0.attn_q.weight", -5, [1.0, 2.0])]), "negative count"),
    (struct.pack("<i", 1) + struct.pack("<i", 4) + b"blk." + struct.pack("<ii", 1, 1 << 30) + bytes(16),
     "run past the end"),
    (struct.pack("<i", 1 << 30) + bytes(64), "not an importance matrix"),
])
def test_corrupted_legacy_imatrix_is_refused_in_one_line(tmp_path, blob, why):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(blob)
    for args in (["imatrix-coverage", bad], ["imatrix-merge", bad, bad, "-o", tmp_path / "m.gguf"]):
        code, err, rss = run_measured(*args)
        assert code == 1 and why.split()[0] in err and "internal error" not in err, (args, err)
        assert rss < 200 << 20
    assert not (tmp_path / "m.gguf").exists()


def test_corrupted_gguf_imatrix_values_are_refused(olmoe_imatrix, tmp_path):
    from ggtool.imatrix_file import read_imatrix

    header = read_header(olmoe_imatrix)
    counts = next(t for t in header.tensors if t.name.endswith(".counts"))
    for value, why in ((float("nan"), "NaN"), (-3.0, "negative"), (1e30, "2^53")):
        data = bytearray(olmoe_imatrix.read_bytes())
        data[counts.offset:counts.offset + 4] = struct.pack("<f", value)
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(bytes(data))
        with pytest.raises(GgtoolError, match=why.replace("^", r"\^")):
            read_imatrix(bad)
