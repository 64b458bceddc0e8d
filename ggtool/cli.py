"""The `ggtool` command line: parses arguments, calls one library function per command, renders with rich."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import GgtoolError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Small Mixture-of-Experts checkpoints to GGUF files that run well in llama.cpp.")
out = Console()
err = Console(stderr=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


@app.command()
def convert(src: Path = typer.Argument(..., help="checkpoint folder (config.json + *.safetensors)"),
            output: Path = typer.Option(..., "-o", "--output", help="GGUF file to write"),
            outtype: str = typer.Option("f16", "--outtype", help="f32 | f16 | bf16 | q8_0"),
            lossless: bool = typer.Option(False, "--lossless", help="packed 1-/4-bit weights (SSMoELM) kept exact as "
                                          "TQ1_0/Q4_0 blocks, the rest f32; overrides --outtype")) -> None:
    """Convert a checkpoint folder to GGUF (metadata, tokenizer and chat template included)."""
    from .convert import convert as run_convert

    with Progress(TextColumn("[bold]convert[/] {task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("", total=None)

        def progress(name: str, n: int) -> None:
            bar.update(task, advance=n, description=name)

        result = run_convert(src, output, outtype, progress, lossless=lossless)
    out.print(f"[green]wrote[/] {result.dest}  ({result.family} → arch {result.arch}, {result.outtype}, "
              f"{result.n_tensors} tensors, {human(result.n_bytes)}, {result.n_params / 1e6:.1f}M params, "
              f"{result.seconds:.1f} s)")


@app.command()
def inspect(path: Path = typer.Argument(..., help="GGUF file"),
            tensors: bool = typer.Option(True, "--tensors/--no-tensors", help="list every tensor")) -> None:
    """Show a GGUF's metadata, tensors and bytes per tensor group."""
    from .inspect import inspect as run_inspect

    info = run_inspect(path)
    meta = Table(title=f"{info.path.name}: metadata", show_lines=False)
    meta.add_column("key")
    meta.add_column("value", overflow="fold")
    for key, value in info.metadata.items():
        text = str(value)
        meta.add_row(key, text if len(text) < 300 else text[:300] + f"… ({len(text)} chars)")
    out.print(meta)
    if tensors:
        table = Table(title="tensors")
        for col in ("name", "type", "shape (ne0 first)", "bytes", "group"):
            table.add_column(col)
        for r in info.tensors:
            table.add_row(r.name, r.type, str(r.shape), human(r.n_bytes), r.group)
        out.print(table)
    groups = Table(title=f"bytes per group (file {human(info.file_bytes)})")
    groups.add_column("group")
    groups.add_column("bytes", justify="right")
    groups.add_column("share", justify="right")
    total = sum(info.groups.values()) or 1
    for g, n in sorted(info.groups.items(), key=lambda kv: -kv[1]):
        groups.add_row(g, human(n), f"{100 * n / total:.1f}%")
    out.print(groups)


@app.command()
def verify(src: Path = typer.Argument(..., help="the checkpoint folder the GGUF was converted from"),
           path: Path = typer.Argument(..., help="GGUF file"),
           tokens: int = typer.Option(64, "--tokens", help="number of token positions to compare")) -> None:
    """Compare llama.cpp's logits on the GGUF with the source family's reference model."""
    from .verify import verify as run_verify

    r = run_verify(src, path, tokens)
    t = r.tolerance
    table = Table(title=f"verify {path.name} ({r.file_type}, KV cache {t.kv_type}, {r.n_tokens} tokens)\n{r.compared}")
    for col in ("measure", "value", "tolerance"):
        table.add_column(col)
    table.add_row("max |Δlogit|", f"{r.max_abs_diff:.3g}", "")
    table.add_row("max |Δlogit| / max |logit|", f"{r.rel_diff:.3g}",
                  f"≤ {t.max_rel_diff:g}" if t.max_rel_diff is not None else "")
    table.add_row("top-1 agreement", f"{100 * r.top1_agreement:.2f}%", f"≥ {100 * t.min_top1:g}%")
    table.add_row("mean KL divergence", f"{r.mean_kl:.3g}", f"≤ {t.max_mean_kl:g}")
    out.print(table)
    if not r.passed:
        err.print(f"[red]verify failed:[/] outside the tolerance ({r.compared})", soft_wrap=True)
        raise typer.Exit(1)
    out.print("[green]verify passed[/]")


@app.command()
def run(path: Path = typer.Argument(..., help="GGUF file"),
        prompt: str = typer.Option("Hello", "-p", "--prompt"),
        n: int = typer.Option(32, "-n", "--max-tokens", help="tokens to generate"),
        chat: bool = typer.Option(False, "--chat", help="render the prompt through the GGUF's chat template")) -> None:
    """Generate a greedy completion with llama.cpp."""
    from .run import complete

    c = complete(path, prompt, n, chat)
    out.print(f"[dim]{c.prompt}[/]{c.text}")
    out.print(f"[dim]({c.n_prompt_tokens} prompt tokens, {c.n_tokens} generated)[/]")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: bad input becomes one line on stderr and a non-zero exit, never a traceback."""
    warnings.showwarning = _show_warning
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except GgtoolError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing was written", soft_wrap=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, EOFError):
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: still one line unless debugging
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("GGTOOL_DEBUG"):
            raise
        err.print(f"[red]internal error:[/] {type(e).__name__}: {e} (re-run with GGTOOL_DEBUG=1 for a traceback)",
                  highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
