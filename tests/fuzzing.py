"""Mutated GGUF models and importance matrices through ggtool's commands, each run bounded and measured.

Used by tests/test_fuzz_gguf.py (a few hundred mutants) and `make fuzz` (`python -m tests.fuzzing`, ≥ 1,000
mutants per command). A fork server keeps this cheap: the parent imports ggtool (and llama.cpp) once, and
every run is a forked child that calls the CLI's `main` with its output in a file, its address space under
RLIMIT_AS and its wall time under a deadline (the parent kills it). The parent collects the exit status and
the child's own peak RSS (wait4's rusage). A run fails the fuzz if it prints a traceback or "internal error",
dies of a signal, overruns its deadline, or peaks above the RSS limit.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_RSS = 200 << 20  # bytes of peak resident memory per run
ADDRESS_SPACE = 3 << 30  # RLIMIT_AS per run: a runaway allocation fails instead of swapping the machine
TIMEOUT = 30.0  # seconds per run


@dataclass
class Outcome:
    args: list[str]
    status: int | None  # exit code, None if killed by a signal
    signal: int | None
    seconds: float
    max_rss: int  # bytes
    output: str
    timed_out: bool

    def problem(self) -> str | None:
        if self.timed_out:
            return f"no answer after {TIMEOUT:g} s"
        if self.signal is not None:
            return f"died of signal {self.signal}"
        if "Traceback" in self.output:
            return "printed a traceback"
        if "internal error" in self.output:
            return "internal error"
        if self.max_rss > MAX_RSS:
            return f"peak RSS {self.max_rss >> 20} MiB"
        if self.status not in (0, 1, 2):
            return f"exit status {self.status}"
        return None


def run_cli(args: list[str], workdir: Path, timeout: float = TIMEOUT) -> Outcome:
    """`ggtool ARGS` in a forked child of this process, bounded and measured."""
    out_path = workdir / f"out.{os.getpid()}.txt"
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.chdir(workdir)
            sys.argv = ["ggtool", *args]
            from ggtool.cli import main

            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - the harness itself: report as a traceback
            import traceback

            traceback.print_exc()
            code = 71
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = t0 + timeout
    timed_out = False
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.002)
    output = out_path.read_text(errors="replace") if out_path.exists() else ""
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) and not timed_out else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return Outcome(args, code, sig, time.monotonic() - t0, usage.ru_maxrss * 1024, output, timed_out)


# -- mutants ------------------------------------------------------------------------------------------
def gguf_mutants(path: Path, n: int, seed: int = 0):
    """`n` corrupted copies of a GGUF: bytes flipped in the header, huge counts and lengths, wrong value and
    element types (the array type of a token list swapped, say), truncation, damaged tensor data."""
    from ggtool.gguf_in import read_header

    data = path.read_bytes()
    header = read_header(path)
    head = min(t.offset for t in header.tensors)
    arrays = list(header.arrays.values())
    rng = random.Random(seed)
    for i in range(n):
        buf = bytearray(data)
        kind = i % 6
        if kind == 0:  # a few bytes anywhere in the header (magic, counts, lengths, types, offsets)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(head)] = rng.randrange(256)
        elif kind == 1:  # a huge little-endian count or length at a random header position
            pos = rng.randrange(head - 8)
            buf[pos:pos + 8] = rng.choice([b"\xff" * 8, bytes(7) + b"\x80", b"\xff\xff\xff\x7f" + bytes(4),
                                           struct.pack("<Q", rng.randrange(1 << 32))])
        elif kind == 2:  # truncated: inside the header or inside the tensor data
            buf = buf[:rng.choice([rng.randrange(head), rng.randrange(head, len(buf))])]
        elif kind == 3 and arrays:  # an array's element type or length replaced
            a = rng.choice(arrays)
            if rng.random() < 0.6:
                buf[a.start - 12:a.start - 8] = struct.pack("<I", rng.randrange(14))
            else:
                buf[a.start - 8:a.start] = struct.pack("<Q", rng.choice([0, 1, a.count + 1, a.count * 4,
                                                                          rng.randrange(1 << 40)]))
        elif kind == 4:  # a 4-byte little-endian value (a type, a scalar) at a random 4-aligned header position
            pos = rng.randrange(head // 4) * 4
            buf[pos:pos + 4] = struct.pack("<I", rng.choice([0, 1, 7, 8, 9, 12, 13, 0xFFFFFFFF,
                                                              rng.randrange(1 << 32)]))
        else:  # tensor data overwritten with NaN/inf/huge bytes (the header stays valid)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(head, len(buf) - 4)
                buf[pos:pos + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff"])
        yield bytes(buf)


def imatrix_mutants(gguf_path: Path, dat_path: Path, n: int, seed: int = 0):
    """`n` corrupted importance matrices: alternately mutated GGUF imatrix files and legacy .dat files
    (bad counts, lengths, names, NaN and negative values, truncation); (suffix, bytes) pairs."""
    gguf_data, dat = gguf_path.read_bytes(), dat_path.read_bytes()
    g = gguf_mutants(gguf_path, n, seed)
    rng = random.Random(seed + 1)
    for i in range(n):
        g_blob = next(g)
        if i % 2 == 0:
            yield ".gguf", g_blob
            continue
        buf = bytearray(dat)
        kind = (i // 2) % 4
        if kind == 0:  # a random int32 replaced (n_entries, a name length, ncall, nval, chunk count)
            pos = rng.randrange(0, len(buf) - 4)
            buf[pos:pos + 4] = struct.pack("<i", rng.choice([-1, 0, 1, 1 << 30, -(1 << 31), rng.randrange(1 << 31)]))
        elif kind == 1:  # NaN / inf / negative floats among the values
            for _ in range(rng.randint(1, 6)):
                pos = rng.randrange(4, len(buf) - 4)
                buf[pos:pos + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", struct.pack("<f", -1.0)])
        elif kind == 2:  # truncated
            buf = buf[:rng.randrange(len(buf))]
        else:  # random bytes flipped
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        yield ".dat", bytes(buf)
    del gguf_data


# -- the campaign -------------------------------------------------------------------------------------
GGUF_COMMANDS = {
    "inspect": lambda m, d: ["inspect", m, "--no-tensors"],
    "plan": lambda m, d: ["plan", m, "--ram", "6GiB", "--vram", "1GiB"],
    "modelfile": lambda m, d: ["modelfile", m, "-o", str(d / "Modelfile")],
    "export lmstudio": lambda m, d: ["export", "lmstudio", m, "--publisher", "p", "--model", "m", "--root",
                                     str(d / "lms"), "--copy"],
    "run": lambda m, d: ["run", m, "-n", "1", "--greedy", "--prompt", "def"],
}
IMATRIX_COMMANDS = {
    "imatrix-coverage": lambda im, model, d: ["imatrix-coverage", im],
    "imatrix-merge": lambda im, model, d: ["imatrix-merge", im, im, "-o", str(d / "merged.gguf")],
}


@dataclass
class Report:
    runs: Counter = field(default_factory=Counter)  # per command
    errors: Counter = field(default_factory=Counter)  # runs that ended in a clear error (exit 1/2)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (command, problem, output tail)
    max_rss: dict = field(default_factory=dict)
    max_seconds: dict = field(default_factory=dict)

    def add(self, name: str, o: Outcome) -> None:
        self.runs[name] += 1
        if o.status in (1, 2):
            self.errors[name] += 1
        self.max_rss[name] = max(self.max_rss.get(name, 0), o.max_rss)
        self.max_seconds[name] = max(self.max_seconds.get(name, 0.0), o.seconds)
        p = o.problem()
        if p:
            self.problems.append((" ".join(map(str, o.args)), p, o.output[-600:]))

    def summary(self) -> str:
        lines = [f"{'command':18s} {'runs':>6s} {'errors':>7s} {'peak RSS':>9s} {'slowest':>8s}"]
        for name in self.runs:
            lines.append(f"{name:18s} {self.runs[name]:6d} {self.errors[name]:7d} "
                         f"{self.max_rss[name] / 2**20:7.0f}MB {self.max_seconds[name]:7.2f}s")
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  {a}: {p}\n    {out!r}" for a, p, out in self.problems[:20]]
        return "\n".join(lines)


def campaign(model: Path, imatrix_gguf: Path, imatrix_dat: Path, n_gguf: int, n_imatrix: int, workdir: Path,
             seed: int = 0, commands: list[str] | None = None, shard: tuple[int, int] = (0, 1)) -> Report:
    """Every GGUF mutant through GGUF_COMMANDS and every imatrix mutant through IMATRIX_COMMANDS (of shard
    (k, n): the mutants whose number is k modulo n)."""
    import importlib

    for name in ("ggtool.cli", "ggtool.llama.model", "ggtool.llama.probe", "ggtool.inspect", "ggtool.plan.search",
                 "ggtool.plan.memory", "ggtool.ollama", "ggtool.lmstudio", "ggtool.run", "ggtool.imatrix",
                 "ggtool.imatrix_file", "ggtool.templates"):
        importlib.import_module(name)  # imported once here, inherited by every forked run

    report = Report()
    k, n_shards = shard
    for i, blob in enumerate(gguf_mutants(model, n_gguf, seed)):
        if i % n_shards != k:
            continue
        d = workdir / f"g{i}"
        d.mkdir()
        m = d / "m.gguf"
        m.write_bytes(blob)
        for name, make in GGUF_COMMANDS.items():
            if commands is None or name in commands:
                report.add(name, run_cli([str(a) for a in make(str(m), d)], d))
        shutil.rmtree(d)
    for i, (suffix, blob) in enumerate(imatrix_mutants(imatrix_gguf, imatrix_dat, n_imatrix, seed)):
        if i % n_shards != k:
            continue
        d = workdir / f"i{i}"
        d.mkdir()
        im = d / f"im{suffix}"
        im.write_bytes(blob)
        for name, make in IMATRIX_COMMANDS.items():
            if commands is None or name in commands:
                report.add(name, run_cli([str(a) for a in make(str(im), model, d)], d))
        shutil.rmtree(d)
    return report


def make_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """A tiny OLMoE GGUF (Q8_0), an importance matrix of it (GGUF) and the same matrix as legacy .dat."""
    from ggtool import fixtures
    from ggtool.convert import convert
    from ggtool.imatrix import collect
    from ggtool.imatrix_file import read_imatrix, write_legacy

    tok = fixtures.train_bpe_tokenizer(folder / "bpe")
    ckpt = fixtures.make_olmoe(folder / "olmoe-tiny", tok, layers=2)
    model = convert(ckpt, folder / "tiny-q8.gguf", "q8_0").dest
    text = folder / "calibration.txt"
    text.write_text(fixtures.stdlib_text(20, 20_000))
    im = folder / "imatrix.gguf"
    collect(model, [text], im, chunk_size=128, max_chunks=2, n_threads=1)
    dat = write_legacy(read_imatrix(im), folder / "imatrix.dat")
    return model, im, dat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=1000, help="mutants per command (GGUF and imatrix each)")
    ap.add_argument("--imatrix-mutants", type=int, default=None, help="default: --mutants")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--inputs", type=Path, help="folder with tiny-q8.gguf, imatrix.gguf and imatrix.dat "
                    "(default: made in a temporary folder)")
    ap.add_argument("--shard", default="0/1", help="K/N: only the mutants numbered K modulo N (for parallel runs)")
    ap.add_argument("--make-inputs", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_inputs:
        make_inputs(args.make_inputs)
        return
    with tempfile.TemporaryDirectory(prefix="ggtool-fuzz-") as tmp:
        folder = Path(tmp)
        inputs = args.inputs
        if inputs is None:  # made in another process: torch and transformers stay out of this one's memory
            import subprocess

            inputs = folder / "inputs"
            subprocess.run([sys.executable, "-m", "tests.fuzzing", "--make-inputs", str(inputs)], check=True)
        t0 = time.monotonic()
        n_im = args.mutants if args.imatrix_mutants is None else args.imatrix_mutants
        k, n = map(int, args.shard.split("/"))
        report = campaign(inputs / "tiny-q8.gguf", inputs / "imatrix.gguf", inputs / "imatrix.dat", args.mutants,
                          n_im, folder, args.seed, shard=(k, n))
        print(report.summary())
        print(f"{sum(report.runs.values())} runs in {time.monotonic() - t0:.0f} s")
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
