"""What every benchmark section shares: timed child processes, ratio statistics, the machine description."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# The timing wrapper: a fresh interpreter whose only child is the measured program, so RUSAGE_CHILDREN's
# ru_maxrss is that program's peak RSS alone, and the wall time excludes the wrapper's own start-up.
_WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
            "w = time.perf_counter() - t; open(sys.argv[1], 'wb').write(p.stdout + b'\\n----stderr----\\n' + p.stderr); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(json.dumps({'rc': p.returncode, 'seconds': w, 'cpu_seconds': u.ru_utime + u.ru_stime, "
            "'peak_rss': u.ru_maxrss * 1024}))")


@dataclass
class Timed:
    """One measured child process: wall seconds, CPU seconds (user + system, all threads), peak RSS in bytes,
    and its combined output. On a shared machine CPU seconds drift far less than wall seconds."""

    seconds: float
    cpu_seconds: float
    peak_rss: int
    output: str


class BenchError(RuntimeError):
    """A measured program failed; carries the tail of its output."""


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
    """Run `cmd` in a fresh wrapper process; its stdout+stderr go to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([PY, "-c", _WRAPPER, str(log), *map(str, cmd)], capture_output=True, text=True,
                          env=env, cwd=cwd)
    if proc.returncode != 0:
        raise BenchError(f"timing wrapper failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    output = log.read_text(errors="replace")
    if res["rc"] != 0:
        raise BenchError(f"{' '.join(map(str, cmd[:4]))} ... exited {res['rc']}:\n{output[-3000:]}")
    return Timed(res["seconds"], res["cpu_seconds"], res["peak_rss"], output)


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max of a list of numbers (the form every ratio is reported in)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def fmt_spread(s: dict[str, float] | None, digits: int = 2) -> str:
    if not s:
        return "–"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


@dataclass
class Section:
    """One comparison: its table rows, its machine-readable results, and whether it ran."""

    name: str
    title: str
    status: str = "ok"              # ok | skipped | failed
    reason: str = ""
    results: dict = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)   # {"what", "target", "measured", "met"}

    def skip(self, reason: str) -> "Section":
        self.status, self.reason = "skipped", reason
        return self

    def target(self, what: str, target: str, measured: float | None, met: bool | None) -> None:
        self.targets.append({"what": what, "target": target, "measured": measured, "met": met})


def ggtool_commands() -> set[str]:
    """The sub-commands the installed ggtool CLI offers right now (sections skip missing ones)."""
    proc = subprocess.run([PY, "-m", "ggtool.cli", "--help"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"})
    return set(re.findall(r"^│ (\w[\w-]*)\s", proc.stdout, flags=re.M))


def machine() -> dict:
    """CPU model, cores, RAM and software versions, for the report header."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, flags=re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, flags=re.M)
    simd = sorted({f for f in (flags.group(1).split() if flags else [])
                   if f in {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni", "avx_vnni", "amx_tile"}})
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    versions = {"python": platform.python_version()}
    for mod in ("ggtool", "llama_cpp", "gguf", "numpy", "torch", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is just not listed
            pass
    return {"cpu": model.group(1).strip() if model else platform.processor(), "cores": os.cpu_count(),
            "simd": simd, "ram_bytes": int(mem.group(1)) * 1024 if mem else None,
            "os": f"{platform.system()} {platform.release()}", "load_avg_at_start": os.getloadavg(),
            "versions": versions}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_pairs(rep: dict, rungs, what: str, digits: int = 4) -> None:
    """The mix − stock table of an eval report (`rep`: type → VariantQuality, with `T` and `T-mix` per rung),
    paired chunk by chunk: the difference's mean ± its standard error, and how many chunks the mix wins."""
    import numpy as np

    print(f"{what}; mix − stock, chunk by chunk:")
    print("| type | size stock → mix | mean KL stock | mean KL mix | difference | chunks mix better | "
          "top-1 stock → mix | PPL stock → mix |")
    print("|---|---|---|---|---|---|---|---|")
    for t in rungs:
        s, m = rep[t], rep[f"{t}-mix"]
        d = np.asarray(m.kl_chunks) - np.asarray(s.kl_chunks)
        f = f".{digits}f"
        print(f"| {t} | {s.size_bytes:,} → {m.size_bytes:,} ({100 * (m.size_bytes / s.size_bytes - 1):+.2f}%) | "
              f"{s.kl_mean:{f}} ± {s.kl_stderr:{f}} | {m.kl_mean:{f}} ± {m.kl_stderr:{f}} | "
              f"{100 * d.mean() / s.kl_mean:+.1f}% ({d.mean():+{f}} ± {d.std(ddof=1) / np.sqrt(len(d)):{f}}) | "
              f"{(d < 0).sum()} of {len(d)} | {100 * s.top1:.1f}% → {100 * m.top1:.1f}% | {s.ppl:.1f} → {m.ppl:.1f} |")
