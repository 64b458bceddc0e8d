"""Corrupted and truncated GGUF headers through `inspect` and `plan`: a clear error or a result, no crash, no hang."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from ggtool.errors import GgtoolError
from ggtool.inspect import inspect
from ggtool.plan.memory import Device, read_gguf
from ggtool.plan.search import Budget, plan


@pytest.fixture(scope="session")
def small_gguf(olmoe_checkpoint, tmp_path_factory) -> Path:
    from ggtool.convert import convert

    return convert(olmoe_checkpoint, tmp_path_factory.mktemp("fuzz") / "q8.gguf", "q8_0").dest


def header_size(path: Path) -> int:
    from ggtool.gguf_in import read_header

    return min(t.offset for t in read_header(path).tensors)


def mutants(path: Path, n: int, seed: int = 0):
    data = path.read_bytes()
    head = header_size(path)
    rng = random.Random(seed)
    for i in range(n):
        buf = bytearray(data)
        kind = i % 3
        if kind == 0:  # flip a few bytes anywhere in the header (magic, counts, lengths, types, offsets)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(head)] = rng.randrange(256)
        elif kind == 1:  # a huge little-endian count or length at a random header position
            pos = rng.randrange(head - 8)
            buf[pos:pos + 8] = rng.choice([b"\xff" * 8, bytes(7) + b"\x80", b"\xff\xff\xff\x7f" + bytes(4)])
        else:  # truncated: inside the header or inside the tensor data
            buf = buf[:rng.choice([rng.randrange(head), rng.randrange(head, len(buf))])]
        yield bytes(buf)


def test_mutated_headers_give_clear_errors(small_gguf, tmp_path):
    budget = Budget([Device("GPU0", 1 << 30)], 6 << 30)
    n_errors = 0
    for i, blob in enumerate(mutants(small_gguf, 30)):
        bad = tmp_path / f"m{i}.gguf"
        bad.write_bytes(blob)
        for action in (lambda: inspect(bad), lambda: plan(read_gguf(bad), budget, 512)):
            try:
                action()
            except GgtoolError as e:
                n_errors += 1
                assert str(bad) in str(e)
        bad.unlink()
    assert n_errors > 10  # most mutations must be noticed


def test_cli_on_corrupted_files_no_traceback_no_hang(small_gguf, tmp_path):
    for i, blob in enumerate(list(mutants(small_gguf, 3, seed=7))):
        bad = tmp_path / f"c{i}.gguf"
        bad.write_bytes(blob)
        for args in (["inspect", bad, "--no-tensors"], ["plan", bad, "--ram", "6GiB", "--vram", "1GiB"]):
            proc = subprocess.run([sys.executable, "-m", "ggtool.cli", *map(str, args)], capture_output=True,
                                  text=True, timeout=60)  # a hang fails the test
            assert proc.returncode in (0, 1), proc.stderr
            assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


FUZZ_MUTANTS = 120  # per input kind; `make fuzz` runs 1,000+ (tests/fuzzing.py)


def test_fuzz_every_command_on_mutated_models_and_imatrices(small_gguf, olmoe_imatrix, tmp_path):
    """A seeded campaign in a fresh process (tests/fuzzing.py): every GGUF mutant through inspect, plan,
    modelfile, export lmstudio and run -n 1, every imatrix mutant (GGUF and legacy .dat) through
    imatrix-coverage and imatrix-merge; each run under RLIMIT_AS and a deadline. No traceback, no internal
    error, no hang, no signal, and peak RSS under 200 MB in every run."""
    from ggtool.imatrix_file import read_imatrix, write_legacy

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "tiny-q8.gguf").symlink_to(small_gguf)
    (inputs / "imatrix.gguf").symlink_to(olmoe_imatrix)
    write_legacy(read_imatrix(olmoe_imatrix), inputs / "imatrix.dat")
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fuzzing", "--inputs", str(inputs), "--mutants",
                               str(FUZZ_MUTANTS), "--seed", "0", "--shard", f"{k}/2"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=root) for k in range(2)]  # one per core
    counts: dict[str, int] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=1500)
        assert proc.returncode == 0, out[-4000:] + err[-2000:]
        assert "problems: 0" in out
        for line in out.splitlines():
            words = line.split()
            if words and words[0] in ("inspect", "plan", "modelfile", "run", "imatrix-coverage"):
                counts[words[0]] = counts.get(words[0], 0) + int(words[-4])
    assert counts == {"inspect": FUZZ_MUTANTS, "plan": FUZZ_MUTANTS, "modelfile": FUZZ_MUTANTS,
                      "run": FUZZ_MUTANTS, "imatrix-coverage": FUZZ_MUTANTS}, counts
