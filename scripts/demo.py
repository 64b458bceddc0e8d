"""The README's first command: the main job on the embedded default model, step by step through the CLI.

Until the trained default model lands, the default model is a small random OLMoE generated here
deterministically (seeded), with a byte-level BPE trained on the Python standard library.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from ggtool import fixtures

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo")
console = Console()


def step(title: str, *args: str) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ ggtool {shlex.join(args)}[/]")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ggtool.cli", *args], check=True)
    console.print(f"[dim]({time.perf_counter() - t0:.1f} s)[/]")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    src = OUT / "olmoe-demo"
    if not (src / "config.json").exists():
        console.rule("[bold]default model")
        with console.status("training the demo tokenizer and generating the demo OLMoE checkpoint"):
            fixtures.make_olmoe(src, fixtures.train_bpe_tokenizer(OUT / "tokenizer"), layers=4, seed=0)
    f16, f32 = OUT / "olmoe-demo-F16.gguf", OUT / "olmoe-demo-F32.gguf"
    step("convert", "convert", str(src), "-o", str(f16), "--outtype", "f16")
    step("inspect", "inspect", str(f16), "--no-tensors")
    step("convert (f32, for an exact check)", "convert", str(src), "-o", str(f32), "--outtype", "f32")
    step("verify against transformers", "verify", str(src), str(f32), "--tokens", "64")
    step("verify the f16 file", "verify", str(src), str(f16), "--tokens", "64")
    step("generate through the chat template", "run", str(f16), "--chat", "-p", "Write a Python function.",
         "-n", "24")
    console.rule("[bold green]demo finished")
    console.print(f"outputs in {OUT}/")


if __name__ == "__main__":
    main()
