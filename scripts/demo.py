"""The README's first command: the main job on the embedded default model, step by step through the CLI.

    python scripts/demo.py [OUT]        (default out/demo)

convert (and verify against transformers) → importance matrix → IQ2_M / IQ3_M / Q3_K_M / Q4_K_M with
the quality table → plan for 1 GiB VRAM + 6 GiB RAM → Ollama Modelfile → LM Studio layout → a chat
completion from the Q4_K_M file. Every step is a `ggtool` command, printed before it runs.
"""

from __future__ import annotations

import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from ggtool import DEFAULT_MODEL

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo")
console = Console()
timings: list[tuple[str, float]] = []


def step(title: str, *args: str) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ ggtool {shlex.join(args)}[/]")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ggtool.cli", *args], check=True)
    timings.append((title, time.perf_counter() - t0))
    console.print(f"[dim]({timings[-1][1]:.1f} s)[/]")


def main() -> None:
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    src = DEFAULT_MODEL
    ladder_dir = OUT / "ladder"
    f32 = OUT / "default-F32.gguf"
    step("convert to f32 and verify against transformers", "convert", str(src), "-o", str(f32), "--outtype", "f32")
    step("verify (llama.cpp vs transformers, f32)", "verify", str(src), str(f32), "--tokens", "128")
    step("ladder: convert f16 → importance matrix → IQ2_M / IQ3_M / Q3_K_M / Q4_K_M → quality",
         "ladder", str(src), "-o", str(ladder_dir))
    q4 = next(ladder_dir.glob("*-Q4_K_M.gguf"))
    plan = OUT / "plan-Q4_K_M.json"
    step("plan for 1 GiB VRAM + 6 GiB RAM", "plan", str(q4), "--vram", "1GiB", "--ram", "6GiB", "--json", str(plan))
    step("Ollama Modelfile", "modelfile", str(q4), "--plan", str(plan), "-o", str(ladder_dir / "Modelfile"))
    step("LM Studio layout", "export", "lmstudio", *map(str, sorted(ladder_dir.glob("*-I*.gguf"))),
         *map(str, sorted(ladder_dir.glob("*-Q*_K_M.gguf"))), "--publisher", "ggtool", "--model", "ggtool-tiny-moe",
         "--root", str(OUT / "lmstudio"), "--copy")
    step("chat with the Q4_K_M file", "run", str(q4), "--plan", str(plan), "--chat", "-p",
         "What does the function os.path.join do?", "-n", "48", "--seed", "0")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    console.rule("[bold green]demo finished")
    for title, seconds in timings:
        console.print(f"  {seconds:6.1f} s  {title}")
    console.print(f"outputs in {OUT}/: {ladder_dir.name}/ (GGUF ladder, imatrix.gguf, quality.json, Modelfile, "
                  f"ollama.env), "
                  f"{plan.name}, lmstudio/  —  {time.perf_counter() - t0:.0f} s, peak RSS of a step {peak:.0f} MiB")


if __name__ == "__main__":
    main()
