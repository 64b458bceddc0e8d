"""The `ggtool` command line: parses arguments, calls one library function per command, renders with rich."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import GgtoolError
from .limits import check
from .outputs import refuse_inputs
from .units import size_text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Small Mixture-of-Experts checkpoints to GGUF files that run well in llama.cpp.")
out = Console()
err = Console(stderr=True)


@app.command()
def convert(src: Path = typer.Argument(..., help="checkpoint folder (config.json + *.safetensors), or a Hub "
                                       "repo id org/name[@revision] (only the needed files are downloaded)"),
            output: Path = typer.Option(..., "-o", "--output", help="GGUF file to write"),
            outtype: str = typer.Option("f16", "--outtype", help="f32 | f16 | bf16 | q8_0"),
            lossless: bool = typer.Option(False, "--lossless", help="packed 1-/4-bit weights (SSMoELM) kept exact as "
                                          "TQ1_0/Q4_0 blocks, the rest f32; overrides --outtype")) -> None:
    """Convert a checkpoint folder to GGUF (metadata, tokenizer and chat template included)."""
    import contextlib

    from .convert import convert as run_convert

    with contextlib.ExitStack() as stack:
        if not src.exists() and str(src).count("/") == 1:  # org/name[@revision]: through the Hub cache
            from .hub_download import hub_source

            src = stack.enter_context(hub_source(str(src)))  # huggingface_hub shows its own download progress
        with Progress(TextColumn("[bold]convert[/] {task.description}"), BarColumn(), DownloadColumn(),
                      TimeRemainingColumn(), console=err, transient=True) as bar:
            task = bar.add_task("", total=None)

            def progress(name: str, n: int) -> None:
                bar.update(task, advance=n, description=name)

            result = run_convert(src, output, outtype, progress, lossless=lossless)
    out.print(f"[green]wrote[/] {result.dest}  ({result.family} → arch {result.arch}, {result.outtype}, "
              f"{result.n_tensors} tensors, {size_text(result.n_bytes)}, {result.n_params / 1e6:.1f}M params, "
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
            table.add_row(r.name, r.type, str(r.shape), size_text(r.n_bytes), r.group)
        out.print(table)
    groups = Table(title=f"bytes per group (file {size_text(info.file_bytes)})")
    groups.add_column("group")
    groups.add_column("bytes", justify="right")
    groups.add_column("share", justify="right")
    total = sum(info.groups.values()) or 1
    for g, n in sorted(info.groups.items(), key=lambda kv: -kv[1]):
        groups.add_row(g, size_text(n), f"{100 * n / total:.1f}%")
    out.print(groups)
    from .vocab import NORMALIZER_KEY

    if info.metadata.get(NORMALIZER_KEY) not in (None, "none"):
        form = info.metadata[NORMALIZER_KEY]
        out.print(f"[yellow]note:[/] the source tokenizer applies {form} ({NORMALIZER_KEY}); llama.cpp does not: same "
                  f"token ids on text already in {form}, possibly others on text that is not", soft_wrap=True,
                  highlight=False)


@app.command()
def verify(src: Path = typer.Argument(..., help="the checkpoint folder the GGUF was converted from"),
           path: Path = typer.Argument(..., help="GGUF file"),
           tokens: int = typer.Option(64, "--tokens", help="number of token positions to compare")) -> None:
    """Compare llama.cpp's logits on the GGUF with the source family's reference model."""
    from .verify import verify as run_verify

    check("--tokens", tokens)
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
    if r.tokenizer is not None:
        k = r.tokenizer
        how = f", probe {k.normal_form}-normalized as the tokenizer does (llama.cpp does not)" if k.normal_form else ""
        table.add_row("token ids vs tokenizer.json", f"{k.n_lines - k.mismatches}/{k.n_lines} lines same "
                      f"({k.n_tokens} tokens{how})", "all lines")
    out.print(table)
    if r.tokenizer is not None and r.tokenizer.known_difference:
        out.print(f"[yellow]known difference:[/] {r.tokenizer.known_difference}", soft_wrap=True, highlight=False)
    if not r.passed:
        err.print(f"[red]verify failed:[/] outside the tolerance ({r.compared})", soft_wrap=True)
        raise typer.Exit(1)
    out.print("[green]verify passed[/]")


@app.command()
def run(path: Path = typer.Argument(..., help="GGUF file"),
        prompt: str = typer.Option("Hello", "-p", "--prompt"),
        n: int = typer.Option(32, "-n", "--max-tokens", help="tokens to generate"),
        chat: bool = typer.Option(False, "--chat", help="render the prompt through the GGUF's chat template"),
        plan: Path = typer.Option(None, "--plan", help="plan JSON from `ggtool plan --json` (devices, layers, "
                                  "overrides, KV types)"),
        rpc: list[str] = typer.Option([], "--rpc", help="HOST:PORT of an RPC device (repeatable)"),
        temp: float = typer.Option(None, "--temp", help="temperature; 0 is greedy (default: the GGUF's "
                                   "general.sampling.temp, else 0.8 as llama-cli)"),
        top_k: int = typer.Option(None, "--top-k", help="default: the GGUF's, else 40"),
        top_p: float = typer.Option(None, "--top-p", help="default: the GGUF's, else 0.95"),
        min_p: float = typer.Option(None, "--min-p", help="default: the GGUF's, else 0.05"),
        repeat_penalty: float = typer.Option(None, "--repeat-penalty", help="over the last 64 tokens, prompt "
                                             "included (default: the GGUF's, else 1.0: off)"),
        seed: int = typer.Option(None, "--seed", help="sampler seed (default: random, printed at the end)"),
        greedy: bool = typer.Option(False, "--greedy", help="always the most likely token (as --temp 0)")) -> None:
    """Generate a completion with llama.cpp, streamed, with tokens/s at the end. Samples with the GGUF's
    recommended settings (general.sampling.*, from generation_config.json) unless told otherwise."""
    import random

    from .limits import check_sampling
    from .run import recommended_sampling, stream

    check("--max-tokens", n)
    check_sampling({"temperature": temp, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                    "repeat_penalty": repeat_penalty, "seed": seed})
    sampling = recommended_sampling(path, temperature=0.0 if greedy else temp, top_k=top_k, top_p=top_p,
                                    min_p=min_p, repeat_penalty=repeat_penalty,
                                    seed=seed if seed is not None else random.randrange(0xFFFFFFFF))
    plan_data = None
    if plan is not None:
        from .plan.export import load_plan

        plan_data = load_plan(plan)
    # a chat answer starts on its own line; a plain completion continues the prompt's text
    out.print(prompt, style="dim", end="\n" if chat else "", markup=False, highlight=False)
    r = stream(path, prompt, n, chat, plan_data, rpc, sampling=sampling,
               on_text=lambda t: out.print(t, end="", markup=False, highlight=False))
    out.print()
    c = r.completion
    out.print(f"[dim]({c.n_prompt_tokens} prompt tokens, {c.n_tokens} generated, {r.tokens_per_s:.1f} tokens/s; "
              f"{r.applied})[/]")


def _parse_size(text: str, option: str = "size") -> int:
    import re

    from .limits import check_size

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(i?B?)\s*", text, re.I)
    if not m:
        raise GgtoolError(f"{option} {text!r} is not a size", "e.g. 1GiB, 512MiB, 6G")
    unit = m.group(2).upper()
    base = 1024 if m.group(3).lower().startswith("i") or not m.group(3) else 1000
    return check_size(f"{option} {text!r}", float(m.group(1)) * base ** " KMGT".index(unit or " "))


@app.command("plan")
def plan_cmd(model: Path = typer.Argument(..., help="GGUF file, or a checkpoint folder / config.json with --type"),
             vram: str = typer.Option("0", "--vram", help="memory of the local GPU, e.g. 1GiB (0: none)"),
             ram: str = typer.Option(..., "--ram", help="system RAM for llama.cpp, e.g. 6GiB"),
             ctx: int = typer.Option(4096, "--ctx", help="context size wanted (halved only if nothing fits)"),
             qtype: str = typer.Option(None, "--type", help="quant type of the GGUF to be (config.json input)"),
             vram_bw: float = typer.Option(300.0, "--vram-bandwidth", help="GB/s"),
             ram_bw: float = typer.Option(50.0, "--ram-bandwidth", help="GB/s"),
             device: list[str] = typer.Option([], "--device", help="extra device NAME=SIZE[@GB/s] e.g. an RPC host "
                                              "192.168.1.5:50052=8GiB@20 (repeatable)"),
             margin: float = typer.Option(0.10, "--margin", help="fraction of each device kept free"),
             json_out: Path = typer.Option(None, "--json", "-o", help="write the plan JSON here ('-': to stdout)")
             ) -> None:
    """Fastest placement of a model on a machine's VRAM + RAM (+ RPC hosts), checked against llama.cpp's rules."""
    global out  # with --json - the tables go to stderr: stdout carries the JSON only
    if json_out is not None and str(json_out) == "-":
        out = err
    from .plan.export import llama_cpp_flags, llama_cpp_python_kwargs, ollama_setup, plan_json, write_plan
    from .plan.memory import Device, from_config, read_gguf
    from .plan.search import Budget, plan as run_plan

    check("--ctx", ctx)
    check("--margin", margin)
    check("--vram-bandwidth", vram_bw)
    check("--ram-bandwidth", ram_bw)
    if json_out is not None and str(json_out) != "-":
        refuse_inputs(json_out, [("the model", model), ("the model's config.json", model / "config.json")])
    if model.is_file() and model.suffix == ".gguf" or (model.is_file() and model.name != "config.json"):
        shape = read_gguf(model)
    else:
        if not qtype:
            raise GgtoolError(f"{model}: not a GGUF file", "give --type (e.g. IQ3_M) to plan from its config.json")
        shape = from_config(model, qtype)
    devices, rpc = [], []
    if _parse_size(vram, "--vram") > 0:
        devices.append(Device("GPU0", _parse_size(vram, "--vram"), vram_bw * 1e9, "gpu"))
    for spec in device:
        name, _, rest = spec.rpartition("=")
        size, _, bw = rest.partition("@")
        if not name:
            raise GgtoolError(f"--device {spec!r} is not NAME=SIZE[@GB/s]")
        is_rpc = ":" in name
        try:
            bandwidth = check("--device bandwidth", float(bw or 10))
        except ValueError:
            raise GgtoolError(f"--device {spec!r}: bandwidth {bw!r} is not a number of GB/s") from None
        devices.append(Device(name, _parse_size(size, "--device"), bandwidth * 1e9, "rpc" if is_rpc else "gpu",
                              32 if is_rpc else 128))
        if is_rpc:
            rpc.append(name)
    budget = Budget(devices, _parse_size(ram, "--ram"), ram_bw * 1e9, margin)
    r = run_plan(shape, budget, ctx)
    best = r.best
    p = best.placement
    weights = size_text(shape.weight_bytes)
    table = Table(title=f"plan for {shape.name} ({shape.file_type or '?'}, {weights} of weights): "
                  f"ngl {p.n_gpu_layers}/{shape.n_layer + 1}, ctx {p.n_ctx}, KV {p.type_k}/{p.type_v}, "
                  f"flash attention {'on' if p.flash_attn else 'off'}, ≈{best.tokens_per_s:.1f} tokens/s")
    for col in ("memory", "weights", "KV cache", "compute", "output", "total", "budget − margin"):
        table.add_column(col, justify="right" if col != "memory" else "left")
    for d in devices:
        u = best.prediction.devices[d.name]
        table.add_row(d.name, size_text(u.model), size_text(u.kv), size_text(u.compute), "", size_text(u.total),
                      size_text(d.budget * (1 - margin)))
    h = best.prediction.host
    table.add_row("host RAM", size_text(h.model), size_text(h.kv), size_text(h.compute), size_text(h.output),
                  size_text(h.total), size_text(budget.ram * (1 - budget.ram_margin)))
    out.print(table)
    if p.cpu_expert_layers:
        out.print(f"experts of layers {p.cpu_expert_layers[0]}–{p.cpu_expert_layers[-1]} in RAM (-ot overrides); "
                  f"attention, norms, router, output and KV on the device")
    if r.runners_up:
        ru = Table(title="runners-up")
        for col in ("ngl", "experts in RAM", "KV", "FA", "device total", "host total", "tokens/s"):
            ru.add_column(col)
        for c in r.runners_up:
            q = c.placement
            ru.add_row(str(q.n_gpu_layers), str(len(q.cpu_expert_layers)), q.type_k, "on" if q.flash_attn else "off",
                       size_text(max((u.total for u in c.prediction.devices.values()), default=0)),
                       size_text(c.prediction.host.total), f"{c.tokens_per_s:.1f}")
        out.print(ru)
    for g in r.given_up:
        out.print(f"[yellow]given up:[/] {g}")
    out.print(f"[bold]llama.cpp:[/] {llama_cpp_flags(p, rpc)}", soft_wrap=True, highlight=False)
    out.print(f"[bold]llama-cpp-python:[/] {llama_cpp_python_kwargs(p)}", soft_wrap=True, highlight=False)
    data = plan_json(r, str(model), rpc)
    _print_ollama(ollama_setup(data))
    if json_out is not None:
        _write_json(json_out, data, write_plan)


def _print_ollama(setup) -> None:  # noqa: ANN001
    from .plan.export import OLLAMA_TARGET

    params = "; ".join(f"PARAMETER {k} {v}" for k, v in setup.parameters.items())
    out.print(f"[bold]Ollama Modelfile ({OLLAMA_TARGET}):[/] {params}", highlight=False, soft_wrap=True)
    env = " ".join(f"{k}='{v}'" for k, v in setup.env.items())
    out.print(f"[bold]Ollama server environment (server-wide, `ggtool modelfile --plan` writes ollama.env):[/] {env}",
              highlight=False, soft_wrap=True)
    if setup.layers_only:
        lo = setup.layers_only
        out.print(f"[bold]Ollama without server environment:[/] whole layers only, PARAMETER num_gpu {lo['num_gpu']} "
                  f"≈{lo['tokens_per_s']:.1f} tokens/s (vs ≈{setup.tokens_per_s:.1f} with the plan)",
                  highlight=False, soft_wrap=True)


@app.command("rpc-server")
def rpc_server(host: str = typer.Option("127.0.0.1", "--host"),
               port: int = typer.Option(50052, "--port"),
               threads: int = typer.Option(0, "--threads", help="0: every core")) -> None:
    """Serve this machine's CPU as a llama.cpp RPC device (runs until interrupted)."""
    from .llama.rpc import serve

    check("--threads", threads)
    check("--port", port)
    if host not in ("127.0.0.1", "localhost"):
        err.print("[yellow]warning:[/] the RPC protocol has no authentication: serve only on trusted networks")
    serve(host, port, threads or os.cpu_count() or 1)


def _coverage_table(rows, title: str) -> None:
    from .imatrix_file import UNROUTED_NOTE

    gaps = [r for r in rows if r.unrouted]
    if not rows:
        return
    if not gaps:
        low = min(r.min_count for r in rows)
        out.print(f"expert coverage: every expert of {len(rows)} expert tensors was routed to (fewest tokens: {low})")
        return
    table = Table(title=f"{title}: {len(gaps)} of {len(rows)} expert tensors have experts never routed to")
    for col in ("tensor", "experts", "never routed", "tokens per expert (min–max)"):
        table.add_column(col)
    for r in gaps:
        table.add_row(r.tensor, str(r.n_experts), ", ".join(map(str, r.unrouted)), f"{r.min_count}–{r.max_count}")
    out.print(table)
    out.print(f"[yellow]note:[/] {UNROUTED_NOTE}", soft_wrap=True)


@app.command()
def imatrix(model: Path = typer.Argument(..., help="GGUF model to calibrate"),
            files: list[Path] = typer.Option([], "-f", "--file", help="calibration text (repeatable)"),
            output: Path = typer.Option(..., "-o", "--output", help="importance matrix to write (imatrix.gguf)"),
            chat: bool = typer.Option(False, "--chat", help="files are jsonl conversations ({\"messages\": [...]} per "
                                      "line), rendered through the model's chat template"),
            chunk_size: int = typer.Option(512, "--chunk-size", help="tokens per chunk (BOS first)"),
            chunks: int = typer.Option(0, "--chunks", help="use at most this many chunks (0: all)"),
            in_files: list[Path] = typer.Option([], "--in-file", help="earlier importance matrices to add to "
                                                "(GGUF or legacy .dat; repeatable)"),
            legacy: bool = typer.Option(False, "--dat", help="write the legacy .dat format instead of GGUF"),
            threads: int = typer.Option(0, "--threads", help="CPU threads (0: all)")) -> None:
    """Collect an importance matrix (llama-imatrix's GGUF format) by running calibration text through llama.cpp."""
    from .imatrix import collect

    check("--chunk-size", chunk_size)
    check("--chunks", chunks)
    check("--threads", threads)
    with Progress(TextColumn("[bold]imatrix[/] chunk {task.completed}/{task.total}"), BarColumn(),
                  TimeRemainingColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        r = collect(model, files, output, chunk_size, chat, chunks or None, in_files, legacy, threads, progress)
    collected = f"{r.n_chunks} chunks × {r.chunk_size} tokens" if r.n_chunks else "no new text"
    merged = f", added to {len(in_files)} earlier file(s)" if in_files else ""
    out.print(f"[green]wrote[/] {r.dest}  ({r.n_entries} weights, {collected}{merged}, {r.seconds:.1f} s)")
    _coverage_table(r.coverage, "expert coverage")


@app.command("imatrix-merge")
def imatrix_merge(inputs: list[Path] = typer.Argument(..., help="importance matrices (GGUF or legacy .dat)"),
                  output: Path = typer.Option(..., "-o", "--output", help="merged importance matrix (GGUF)"),
                  chunk_size: int = typer.Option(0, "--chunk-size", help="chunk size for legacy inputs (0: from "
                                                 "the GGUF inputs, else 512)")) -> None:
    """Add several importance matrices into one, as llama-imatrix --in-file does."""
    from .imatrix_file import coverage, merge, read_imatrix, write_imatrix

    if chunk_size:
        check("--chunk-size", chunk_size)
    refuse_inputs(output, inputs)
    merged = merge([read_imatrix(p) for p in inputs], chunk_size or None)
    write_imatrix(merged, output)
    out.print(f"[green]wrote[/] {output}  ({len(merged.entries)} weights from {len(inputs)} files, "
              f"{merged.chunk_count} chunks of {merged.chunk_size})")
    _coverage_table(coverage(merged), "expert coverage")


@app.command("imatrix-coverage")
def imatrix_coverage(path: Path = typer.Argument(..., help="importance matrix (GGUF or legacy .dat)")) -> None:
    """Report which experts an importance matrix never saw, per tensor."""
    from .imatrix_file import coverage, read_imatrix

    im = read_imatrix(path)
    out.print(f"{path}: {len(im.entries)} weights, {im.chunk_count} chunks of {im.chunk_size or '?'}, "
              f"datasets {', '.join(im.datasets) or '-'}")
    if im.legacy:
        out.print("[yellow]note:[/] a legacy .dat file keeps no per-expert counts: coverage unknown")
        return
    _coverage_table(coverage(im), "expert coverage")


@app.command()
def quantize(model: Path = typer.Argument(..., help="GGUF model (F16/BF16/F32)"),
             types: str = typer.Option("IQ2_M,IQ3_M,Q3_K_M,Q4_K_M", "--types", help="comma-separated llama-quantize "
                                       "types"),
             imatrix_file: Path = typer.Option(None, "--imatrix", help="importance matrix (GGUF or legacy .dat)"),
             tensor_types: list[str] = typer.Option([], "--tensor-type", help="REGEX=TYPE override (repeatable)"),
             output: Path = typer.Option(..., "-o", "--output", help="folder for <Basename>-<SizeLabel>-<TYPE>.gguf"),
             threads: int = typer.Option(0, "--threads", help="CPU threads (0: all)"),
             target_bpw: float = typer.Option(None, "--target-bpw", help="ggtool's own mix at these bits per "
                                              "weight instead of --types: a type per tensor group, by measured KL"),
             target_size: str = typer.Option(None, "--target-size", help="ggtool's own mix at this file size "
                                             "(bytes, or e.g. 3.7MiB, 4G)"),
             calibration: list[Path] = typer.Option(None, "--calibration", help="text the mix's sensitivities are "
                                                    "measured on (default imatrix_data/calibration.txt)"),
             candidates: str = typer.Option(None, "--mix-types", help="the tensor types a mix may use, comma-"
                                            "separated (default IQ2_XXS,IQ2_XS,IQ2_S,IQ3_XXS,IQ3_S,IQ4_XS,Q4_K,Q5_K,"
                                            "Q6_K,Q8_0)")) -> None:
    """Quantize with llama.cpp's recipes, calibrated with an importance matrix (or with ggtool's own mix)."""
    from .quantize import quantize as run_quantize

    check("--threads", threads)
    if target_bpw is not None or target_size is not None:
        _quantize_mix(model, output, imatrix_file, tensor_types, threads, target_bpw, target_size, calibration,
                      [c for c in (candidates or "").split(",") if c.strip()])
        return

    with Progress(TextColumn("[bold]quantize[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), console=err, transient=True,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def progress(name: str, i: int, n: int, variant) -> None:  # noqa: ANN001
            bar.update(task, completed=i + (variant is not None), total=n, description=name)
            if variant is not None:
                out.print(f"[green]wrote[/] {variant.path}  ({size_text(variant.size_bytes)}, "
                                  f"{variant.seconds:.1f} s)", soft_wrap=True)
                if variant.fallbacks:  # llama.cpp's shape fallback: row length not a multiple of the block
                    from collections import Counter

                    pairs = Counter(f"{w}→{u}" for _, w, u in variant.fallbacks)
                    out.print(f"  {len(variant.fallbacks)} tensors fell back to another type (row length not a "
                              f"multiple of the block): " + ", ".join(f"{p} ×{n}" for p, n in sorted(pairs.items())),
                              soft_wrap=True)

        done = run_quantize(model, output, [t for t in types.split(",") if t.strip()], imatrix_file, tensor_types,
                            threads, progress)
    table = Table(title=f"quantized {model.name}" + (f" with {imatrix_file.name}" if imatrix_file else ""))
    for col in ("type", "file", "size", "seconds"):
        table.add_column(col)
    for v in done:
        table.add_row(v.type, str(v.path), size_text(v.size_bytes), f"{v.seconds:.1f}")
    out.print(table)


def _quantize_mix(model: Path, output: Path, imatrix_file: Path | None, tensor_types: list[str], threads: int,
                  target_bpw: float | None, target_size: str | None, calibration: list[Path] | None,
                  candidates: list[str]) -> None:
    from .quantize import quantize_to_size

    if target_bpw is not None and target_size is not None:
        raise typer.BadParameter("give --target-bpw or --target-size, not both")
    if target_bpw is not None and not 1.0 <= target_bpw <= 16.0:
        raise typer.BadParameter(f"--target-bpw {target_bpw}: choose between 1 and 16")
    size = _parse_size(target_size) if target_size is not None else None
    with Progress(TextColumn("[bold]mix[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)
        r = quantize_to_size(model, output, target_bytes=size, target_bpw=target_bpw, imatrix=imatrix_file,
                             tensor_types=tensor_types, calibration=calibration or None, nthread=threads,
                             candidates=candidates or None,
                             progress=lambda what, d, n: bar.update(task, completed=d, total=n, description=what))
    table = Table(title=f"{r.label}: a type per tensor group, chosen by KL on {r.sensitivities.n_tokens} "
                        "calibration tokens")
    for col, just in (("group", "left"), ("params", "right"), ("type", "left"), ("KL alone", "right")):
        table.add_column(col, justify=just)
    for g, n, t, kl in r.rows:
        table.add_row(g, f"{n:,}", t, f"{kl:.5f}")
    out.print(table)
    target = f"target {size_text(r.target_bytes)}" if size is not None else f"target {target_bpw:.2f} bpw"
    out.print(f"[green]wrote[/] {r.path}  ({size_text(r.size_bytes)}, {r.bpw:.2f} bpw, {target}; calibration KL "
              f"{r.confirmed_kl:.5f} measured, {r.predicted_kl:.5f} predicted; {r.sensitivities.passes} sensitivity "
              f"passes, {r.seconds_total:.1f} s)", soft_wrap=True)


def _quality_table(r, ctx: int) -> Table:
    """The quality table of an EvalReport: the base first, then each variant."""
    table = Table(title=f"quality vs {Path(r.base).name} on {Path(r.text).name} ({r.n_tokens} scored tokens, ctx {ctx})")
    for col, just in (("file", "left"), ("type", "left"), ("size", "right"), ("bpw", "right"), ("PPL", "right"),
                      ("KL mean", "right"), ("±", "right"), ("KL p99", "right"), ("top-1", "right")):
        table.add_column(col, justify=just)
    table.add_row(Path(r.base).name, r.base_type, size_text(r.base_size_bytes), f"{r.base_bpw:.2f}", f"{r.base_ppl:.4g}",
                  "0", "", "0", "100.0%")
    for v in r.variants:
        table.add_row(Path(v.file).name, v.type, size_text(v.size_bytes), f"{v.bpw:.2f}", f"{v.ppl:.4g}",
                      f"{v.kl_mean:.4f}", f"{v.kl_stderr:.4f}" if v.kl_stderr is not None else "",
                      f"{v.kl_p99:.4f}", f"{100 * v.top1:.1f}%")
    return table


@app.command("eval")
def eval_(base: Path = typer.Argument(..., help="the base GGUF (e.g. F16) the variants are compared with"),
          variants: list[Path] = typer.Argument(..., help="quantized GGUF files"),
          text: Path = typer.Option(None, "-f", "--file", help="held-out text (default imatrix_data/heldout.txt)"),
          json_file: Path = typer.Option(None, "--json", help="also write the results as JSON ('-': to stdout)"),
          ctx: int = typer.Option(512, "--ctx", help="tokens per chunk; the second half of each chunk is scored"),
          chunks: int = typer.Option(0, "--chunks", help="use at most this many chunks (0: all)"),
          threads: int = typer.Option(0, "--threads", help="CPU threads (0: all)")) -> None:
    """Perplexity, KL divergence from BASE and top-1 agreement of quantized variants, by llama.cpp."""
    from .quality import DEFAULT_HELDOUT, evaluate

    global out  # with --json - the table goes to stderr: stdout carries the JSON only
    check("--ctx", ctx)
    check("--chunks", chunks)
    check("--threads", threads)
    if json_file is not None and str(json_file) == "-":
        out = err
    elif json_file is not None:
        refuse_inputs(json_file, [("the base model", base), *[("a variant", v) for v in variants],
                                  ("the held-out text", text or DEFAULT_HELDOUT)])
    with Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), console=err, transient=True,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=name)

        r = evaluate(base, variants, text, ctx, chunks or None, threads, progress)
    out.print(_quality_table(r, ctx))
    if json_file is not None:
        _write_json(json_file, r.to_json(), lambda dest, data: r.write_json(dest))


@app.command()
def ladder(src: Path = typer.Argument(None, help="checkpoint folder or base GGUF (default: the embedded default model)"),
           output: Path = typer.Option(..., "-o", "--output", help="folder for the ladder (created if missing)"),
           types: str = typer.Option(",".join(["IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M"]), "--types",
                                     help="comma-separated llama.cpp quantization types"),
           calibration: list[Path] = typer.Option(None, "--calibration",
                                                  help="calibration text (default imatrix_data/calibration.txt)"),
           heldout: Path = typer.Option(None, "--heldout", help="held-out text (default imatrix_data/heldout.txt)"),
           outtype: str = typer.Option("f16", "--outtype", help="base GGUF type: f16 | bf16 | f32"),
           ctx: int = typer.Option(512, "--ctx", help="tokens per chunk for calibration and evaluation"),
           mix: bool = typer.Option(False, "--mix", help="beside each type, ggtool's own mix at that file's size "
                                    "(<...>-<TYPE>-MIX.gguf)")) -> None:
    """Convert → importance matrix → the quantization ladder → quality table; finished steps are skipped."""
    from . import DEFAULT_MODEL
    from .ladder import ladder as run_ladder

    check("--ctx", ctx)
    with Progress(TextColumn("[bold]ladder[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None, description=what)

        def on_step(step) -> None:  # noqa: ANN001
            state = f"[green]made[/] in {step.seconds:.1f} s" if step.made else "[dim]up to date, skipped[/]"
            bar.console.print(f"{step.name:<16} {state}  {step.path}")

        r = run_ladder(src or DEFAULT_MODEL, output, [t for t in types.split(",") if t.strip()],
                       calibration=calibration or None, heldout=heldout, outtype=outtype, chunk_size=ctx,
                       eval_ctx=ctx, mix=mix, progress=progress, on_step=on_step)
    out.print(_quality_table(r.report, ctx))
    out.print(f"[green]ladder in[/] {r.out_dir}  (importance matrix {r.imatrix.name}, quality.json)")


@app.command()
def modelfile(model: Path = typer.Argument(..., help="GGUF file"),
              output: Path = typer.Option(..., "-o", "--output", help="Modelfile to write"),
              plan: Path = typer.Option(None, "--plan", help="plan JSON from `ggtool plan` (also writes ollama.env: "
                                        "the server environment that realises it)"),
              strict: bool = typer.Option(False, "--strict", help="also refuse templates that trim message content"),
              force: bool = typer.Option(False, "--force", help="write it even if llama.cpp's template engine "
                                         "renders the template unlike jinja2"),
              template: str = typer.Option("auto", "--template", help="auto | go | jinja: a Go TEMPLATE, or none "
                                           "(Ollama >= 0.30 renders the GGUF's Jinja); auto: jinja when the chat "
                                           "template has tools or thinking")
              ) -> None:
    """Write an Ollama Modelfile (for Ollama >= 0.30) whose TEMPLATE reproduces the GGUF's chat template exactly."""
    from .ollama import write_modelfile

    refuse_inputs(output, [("the model", model), ("the plan", plan)])
    r = write_modelfile(model, output, plan, strict, force, template)
    for note in r.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if r.template is not None:
        out.print(f"template: {r.template.describe()}", highlight=False, soft_wrap=True)
    if r.env_path is not None:
        out.print(f"[bold]server environment (server-wide: every model `ollama serve` loads)[/] {r.env_path}:",
                  highlight=False)
        out.print(r.env_text, end="", markup=False, highlight=False, soft_wrap=True)
    out.print(f"[green]wrote[/] {r.dest}  (ollama create NAME -f {r.dest})")


export_app = typer.Typer(no_args_is_help=True, help="Lay out GGUF files for other applications.")
app.add_typer(export_app, name="export")


@export_app.command("lmstudio")
def export_lmstudio(models: list[Path] = typer.Argument(..., help="GGUF files (variants of one model)"),
                    publisher: str = typer.Option(..., "--publisher", help="LM Studio publisher folder"),
                    model: str = typer.Option(..., "--model", help="LM Studio model folder"),
                    root: Path = typer.Option(None, "--root", help="models folder (default ~/.lmstudio/models)"),
                    link: bool = typer.Option(True, "--link/--copy", help="hard-link the files (else copy them)"),
                    force: bool = typer.Option(False, "--force", help="export even if @huggingface/jinja or "
                                               "llama.cpp renders the chat template unlike jinja2"),
                    hub_repo: str = typer.Option(None, "--hub-repo", help="org/name the files are published in "
                                                 "(`ggtool publish`): also write a model.yaml pointing at it"),
                    replace: bool = typer.Option(False, "--replace", help="write into a folder that holds files "
                                                 "ggtool did not place there (they are left alone; same-named ones "
                                                 "are replaced)")) -> None:
    """Place GGUF variants where LM Studio finds them (<root>/PUBLISHER/MODEL/); model.yaml only for a Hub repo."""
    from .lmstudio import export

    r = export(models, publisher, model, root, link, force, hub_repo, replace=replace)
    for w in r.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    for note in r.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for f in r.files:
        out.print(f"[green]placed[/] {f}")
    if r.model_yaml is not None:
        out.print(f"[green]wrote[/] {r.model_yaml}")
    else:
        out.print("no model.yaml: LM Studio finds local files by the folder layout, and its model.yaml can only "
                  "point at a Hub repo (--hub-repo); sampling and context travel in the GGUF", highlight=False)


@app.command()
def publish(folder: Path = typer.Argument(..., help="ladder folder (*.gguf, quality.json, Modelfile...)"),
            repo: str = typer.Option(..., "--repo", help="Hugging Face repo id, org/name"),
            private: bool = typer.Option(False, "--private", help="create the repo private"),
            dry_run: bool = typer.Option(False, "--dry-run", help="write README.md (the model card) only"),
            recommend: list[str] = typer.Option([], "--recommend", help="BUDGET=FILE for the card's 'which file "
                                                "for your memory' table, e.g. '1 GiB VRAM + 6 GiB RAM=M-IQ3_M.gguf'"),
            force: bool = typer.Option(False, "--force", help="publish even if an engine users run (llama.cpp, "
                                       "@huggingface/jinja) renders a chat template unlike jinja2"),
            base_model: str = typer.Option(None, "--base-model", help="the Hub repo the files were converted from "
                                           "(card's base_model; default: the source repo the GGUF records)"),
            quantized_by: str = typer.Option(None, "--quantized-by", help="card's quantized_by (default: the "
                                             "repo's owner)")
            ) -> None:
    """Upload a ladder folder to the Hugging Face Hub with a generated model card."""
    from .hub import publish as run_publish

    pairs = [tuple(r.rsplit("=", 1)) for r in recommend]
    if any(len(p) != 2 for p in pairs):
        raise GgtoolError("--recommend takes BUDGET=FILE")
    r = run_publish(folder, repo, private=private, dry_run=dry_run, recommendations=pairs or None, force=force,
                    base_model=base_model, quantized_by=quantized_by)
    for w in r.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    out.print(f"[green]{'card written' if dry_run else 'uploaded'}[/] {r.repo}: {len(r.files)} files "
              f"(model card {r.card})")


def _write_json(dest: Path, data: dict, write) -> None:  # noqa: ANN001 (write: (dest, data) -> None)
    """`--json FILE` through the command's own atomic writer; `--json -` to stdout (the tables went to stderr)."""
    import json

    if str(dest) == "-":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        sys.stdout.flush()
        return
    write(dest, data)
    out.print(f"[green]wrote[/] {dest}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


EXIT_ERROR = 1  # bad input or environment: one "error:" line
EXIT_USAGE = 2  # a command-line mistake: click's usage message (as click and typer exit)
EXIT_INTERNAL = 70  # a bug in ggtool (EX_SOFTWARE)


def main() -> None:
    """Entry point: bad input becomes one line on stderr and a non-zero exit, never a traceback."""
    from .outputs import os_error

    usage_errors = _click_exceptions()

    warnings.showwarning = _show_warning
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # typer's answer to KeyboardInterrupt: temporary files are gone, finished files complete
            err.print("[red]interrupted[/]", soft_wrap=True)
        sys.exit(rc if isinstance(rc, int) else 0)
    except GgtoolError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)  # hints: [verify]
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing was written", soft_wrap=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, EOFError):
        sys.exit(1)
    except usage_errors as e:  # usage mistakes: click's message with the usage line, exit 2
        if not hasattr(e, "show"):
            _internal(e)
        _show_usage_error(e)
        sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    except OSError as e:  # the environment's (full disk, read-only, permissions): one line with the path
        if e.errno is None:
            _internal(e)
        err.print(f"[red]error:[/] {os_error(e)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: still one line unless debugging
        _internal(e)


def _click_exceptions() -> tuple[type[Exception], ...]:
    """click's exception base classes: typer >= 0.29 vendors its own click (typer.TyperException), older typer
    uses click's."""
    found = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


def _show_usage_error(e: Exception) -> None:
    """click's message for a usage mistake, with the command's usage line even where the parser raised it without
    a context (an option missing its value)."""
    if getattr(e, "ctx", None) is None and hasattr(e, "ctx"):
        try:
            root = typer.main.get_command(app)
            ctx = root.context_class(root, info_name="ggtool")
            words = [a for a in sys.argv[1:] if not a.startswith("-")]
            while words and hasattr(ctx.command, "get_command"):
                sub = ctx.command.get_command(ctx, words[0])
                if sub is None:
                    break
                ctx = sub.context_class(sub, info_name=words.pop(0), parent=ctx)
            e.ctx = ctx
        except Exception:  # noqa: BLE001 - the message alone still says what is wrong
            pass
    e.show()


def _internal(e: BaseException) -> None:
    if os.environ.get("GGTOOL_DEBUG"):
        raise e
    err.print(f"[red]internal error:[/] {type(e).__name__}: {escape(str(e))} (a bug in ggtool; re-run with GGTOOL_DEBUG=1 for "
              "a traceback)", highlight=False, soft_wrap=True)
    sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
