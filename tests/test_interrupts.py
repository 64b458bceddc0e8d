"""Ctrl-C and a full disk: the command stops, its temporary files go, and every final file is complete or absent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ggtool import fixtures
from ggtool.imatrix_file import read_imatrix

TYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "Q4_0", "Q5_0"]


@pytest.fixture(scope="module")
def long_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(fixtures.stdlib_text(30, 150_000))
    return path


def cli(*args: object, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ggtool.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"}, **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name or p.name.startswith("ggtool-"))


def interrupt_soon(delay: float) -> threading.Timer:
    """SIGINT to this process after `delay` seconds (while llama.cpp is computing, in the tests below)."""
    from ggtool.llama import interrupt

    assert signal.getsignal(signal.SIGINT) is interrupt._on_sigint  # ggtool's handler is in place
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_sigint_during_quantize_exits_130_and_leaves_only_complete_files(olmoe_gguf, tmp_path):
    out = tmp_path / "q"
    proc = cli("quantize", olmoe_gguf, "-o", out, "--types", ",".join(TYPES), "--threads", "1")
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(".partial" in p.name for p in out.iterdir())):  # llama.cpp is writing
        assert proc.poll() is None and time.monotonic() < deadline, "quantize finished before it could be stopped"
        time.sleep(0.005)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 10
    assert "interrupted" in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert leftovers(tmp_path) == []
    done = sorted(out.glob("*.gguf")) if out.exists() else []
    assert len(done) < len(TYPES)
    for f in done[:1]:  # what finished is byte-identical to an uninterrupted quantization
        t = f.stem.rsplit("-", 1)[1]
        ref = tmp_path / "ref"
        subprocess.run([sys.executable, "-m", "ggtool.cli", "quantize", olmoe_gguf, "-o", ref, "--types", t,
                        "--threads", "1"], check=True, capture_output=True)
        assert f.read_bytes() == (ref / f.name).read_bytes()


def test_sigint_during_imatrix_exits_130_without_a_matrix(olmoe_gguf, long_text, tmp_path):
    dest = tmp_path / "im.gguf"
    # the text six times over: an idle machine collects one copy in under 4 s, so the signal would come too late
    proc = cli("imatrix", olmoe_gguf, *["-f", long_text] * 6, "-o", dest, "--chunk-size", "256", "--threads", "1")
    time.sleep(4)
    assert proc.poll() is None, "imatrix finished before it could be stopped"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Exception ignored" not in err and "Traceback" not in err, err
    assert not dest.exists() and leftovers(tmp_path) == []


def test_sigint_inside_the_eval_callback_stops_collection(olmoe_gguf, long_text, tmp_path):
    from ggtool.imatrix import collect

    seen = []

    def progress(done: int, total: int) -> None:
        if not seen:  # the first chunk is done: the signal lands while the next one is being computed
            seen.append(interrupt_soon(0.02))

    dest = tmp_path / "im.gguf"
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            collect(olmoe_gguf, [long_text], dest, chunk_size=512, n_threads=1, progress=progress)
    finally:
        for timer in seen:  # never let a late signal reach pytest itself
            timer.cancel()
    assert time.monotonic() - t0 < 60
    assert not dest.exists() and leftovers(tmp_path) == []
    from ggtool.llama import interrupt

    assert not interrupt.pending()


def test_sigint_during_the_ladder_is_not_recorded_and_the_step_is_redone(olmoe_gguf, tmp_path):
    from ggtool.ladder import MANIFEST, ladder

    out = tmp_path / "ladder"
    text = tmp_path / "calibration.txt"
    text.write_text(fixtures.stdlib_text(30, 40_000))
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(fixtures.heldout_text(4_000))
    timers = []

    def progress(what: str, done: int, total: int) -> None:
        if what == "imatrix" and done == 1 and not timers:
            timers.append(interrupt_soon(0.02))

    kw = dict(calibration=[text], heldout=heldout, conversations=None, chunk_size=64, eval_ctx=64)
    try:
        with pytest.raises(KeyboardInterrupt):
            ladder(olmoe_gguf, out, ["Q4_K_M"], progress=progress, **kw)
    finally:
        for timer in timers:
            timer.cancel()
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else {}
    assert "imatrix" not in manifest
    assert not (out / "imatrix.gguf").exists() and leftovers(out) == []

    steps = []
    r = ladder(olmoe_gguf, out, ["Q4_K_M"], on_step=steps.append, **kw)
    assert [(s.name, s.made) for s in steps][:1] == [("imatrix", True)]
    im = read_imatrix(r.imatrix)  # every chunk's counts, as the matrix claims
    n_tokens = im.chunk_count * im.chunk_size
    dense = [e for e in im.entries.values() if e.n_mat == 1]
    assert dense and all(int(e.counts[0]) == n_tokens for e in dense)


# -- a full disk --------------------------------------------------------------------------------------
def on_small_tmpfs(size: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`script` (sh) with $FULL a fresh tmpfs of `size`, in a private mount namespace; skipped where unavailable."""
    full = tmp_path / "full"
    full.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small tmpfs")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {full}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    return subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {full} && FULL={full} && export FULL && {script}; "
                           f"echo rc=$?; ls -A {full}"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def test_quantize_on_a_full_disk_says_so_in_one_line(olmoe_gguf, tmp_path):
    r = on_small_tmpfs("256k", f"{sys.executable} -m ggtool.cli quantize {olmoe_gguf} -o $FULL/q --types Q4_K_M",
                       tmp_path)
    lines = r.stderr.strip().splitlines()
    assert "rc=1" in r.stdout, r.stdout + r.stderr
    assert len(lines) == 1 and "no space left" in lines[0] and "/q" in lines[0], r.stderr
    assert "Q4_K_M.gguf" in lines[0] and ".partial" not in lines[0], r.stderr  # the final name, not the temporary one
    assert r.stdout.strip().splitlines()[-1] == "rc=1"  # the tmpfs is empty: no partial file, no empty folder


def test_eval_with_a_full_tmpdir_fails_in_one_line_and_cleans_up(olmoe_gguf, long_text, tmp_path):
    r = on_small_tmpfs("64k", f"TMPDIR=$FULL {sys.executable} -m ggtool.cli eval {olmoe_gguf} {olmoe_gguf} "
                       f"-f {long_text} --ctx 64 --chunks 8", tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.stdout.strip().splitlines()[-1] == "rc=1", r.stdout + r.stderr  # not SIGBUS, nothing left
    assert len(lines) == 1 and "no space" in lines[0] and "TMPDIR" in lines[0], r.stderr
