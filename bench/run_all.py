"""`make bench`: ggtool side by side with llama.cpp's own tools, written to bench/RESULTS.md and bench/results.json.

Usage: python bench/run_all.py [--only convert,imatrix,...] [--rounds N] [--work DIR] [--keep]

Builds (once, cached outside the repo) llama.cpp's programs from the source the pinned llama-cpp-python vendors,
then runs one section per comparison. A section whose ggtool command does not exist yet is reported as
"not available: <reason>" instead of failing the whole run. Ratios are ggtool / llama.cpp per round, reported as
min / median / max; targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference  # noqa: E402
from common import PY, REPO, Section, ggtool_commands, machine, timed  # noqa: E402

SECTIONS = ["convert", "imatrix", "quantize", "families", "run", "plan", "mix"]

# The model the imatrix / quantize / run / plan sections share: the convert generator's OLMoE shape with fewer
# layers, so four quantizations by two tools fit the time budget while each step still takes seconds.
BENCH_LAYERS = 4
SMALL = dict(layers=4, hidden_size=512, experts=8, top_k=2, intermediate_size=256, heads=8)


@dataclass
class Context:
    """Shared state of one bench run: reference build, work folder, artifacts built once and reused."""

    ref: reference.Reference
    work: Path
    logs: Path
    commands: set[str]
    rounds: int
    quant_rounds: int
    threads: int
    convert_layers: int = 10
    startup: dict = field(default_factory=dict)  # ggtool's CLI start-up: {"seconds", "cpu_seconds"} medians
    cache: dict = field(default_factory=dict)

    def say(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def _tokenizer(self) -> Path:
        if "tok" not in self.cache:
            from ggtool import fixtures

            self.cache["tok"] = fixtures.train_bpe_tokenizer(self.work / "tokenizer")
        return self.cache["tok"]

    def _checkpoint(self, layers: int) -> Path:
        key = f"ckpt{layers}"
        if key not in self.cache:
            import convert_memory
            from ggtool import fixtures

            folder = self.work / f"olmoe-{layers}l"
            self.say(f"writing synthetic bf16 OLMoE checkpoint, {layers} layers ...")
            convert_memory.write_checkpoint(folder, layers)
            fixtures.copy_tokenizer(self._tokenizer(), folder)
            self.cache[key] = folder
        return self.cache[key]

    @property
    def big_checkpoint_desc(self) -> str:
        import convert_memory as cm

        return (f"synthetic OlmoeForCausalLM, {self.convert_layers} layers, hidden {cm.HIDDEN}, {cm.EXPERTS} experts (top-{cm.TOP_K}), "
                f"expert FF {cm.FF}, vocab {cm.VOCAB}")

    def big_checkpoint(self) -> Path:
        """The >= 1 GB checkpoint the convert section uses."""
        return self._checkpoint(self.convert_layers)

    @property
    def bench_model_desc(self) -> str:
        import convert_memory as cm

        return (f"synthetic OLMoE (random weights), {BENCH_LAYERS} layers, hidden {cm.HIDDEN}, {cm.EXPERTS} experts "
                f"(top-{cm.TOP_K}), expert FF {cm.FF}, vocab {cm.VOCAB}, f16 GGUF")

    def bench_model(self) -> Path:
        """An f16 GGUF of the smaller checkpoint, written by ggtool convert (input of imatrix/quantize/run/plan)."""
        if "model" not in self.cache:
            out = self.work / f"olmoe-{BENCH_LAYERS}l-f16.gguf"
            timed([PY, "-m", "ggtool.cli", "convert", self._checkpoint(BENCH_LAYERS), "-o", out, "--outtype", "f16"],
                  self.logs / "bench-model-convert.log", cwd=REPO)
            self.cache["model"] = out
        return self.cache["model"]

    @property
    def small_model_desc(self) -> str:
        return (f"fixture OLMoE (transformers-initialised random weights), {SMALL['layers']} layers, hidden "
                f"{SMALL['hidden_size']}, {SMALL['experts']} experts (top-{SMALL['top_k']}), expert FF "
                f"{SMALL['intermediate_size']}, vocab 4160, f16 GGUF")

    def small_model(self) -> Path:
        """A small f16 OLMoE GGUF (ggtool.fixtures.make_olmoe, converted by ggtool): input of quantize and plan,
        small enough that four quantizations by two tools fit the time budget."""
        if "small" not in self.cache:
            from ggtool import fixtures

            folder = self.work / "olmoe-small"
            fixtures.make_olmoe(folder, self._tokenizer(), **SMALL)
            out = self.work / "olmoe-small-f16.gguf"
            timed([PY, "-m", "ggtool.cli", "convert", folder, "-o", out, "--outtype", "f16"],
                  self.logs / "small-model-convert.log", cwd=REPO)
            self.cache["small"] = out
        return self.cache["small"]

    def calibration_text(self, n_chars: int = 60_000) -> Path:
        """Plain text for imatrix (Python standard-library sources: present on every machine)."""
        path = self.work / f"calibration-{n_chars}.txt"
        if not path.exists():
            from ggtool import fixtures

            path.write_text(fixtures.stdlib_text(40, n_chars))
        return path


def measure_startup(ctx: Context) -> dict:
    """Median wall and CPU seconds of importing what ggtool's commands import (CLI, numpy, llama-cpp-python):
    the fixed cost every ggtool invocation pays before any work, which llama.cpp's programs do not."""
    code = ("import ggtool.cli, ggtool.convert, ggtool.imatrix, ggtool.quantize, ggtool.run, ggtool.plan, "
            "ggtool.llama.model")
    runs = [timed([PY, "-c", code], ctx.logs / f"startup-{i}.log", cwd=REPO) for i in range(3)]
    import statistics

    return {"seconds": statistics.median(t.seconds for t in runs),
            "cpu_seconds": statistics.median(t.cpu_seconds for t in runs)}


def _label(s: Section) -> str:
    return "not available" if s.status == "skipped" else "FAILED"


def write_reports(sections: list[Section], meta: dict, total_seconds: float) -> None:
    """bench/results.json (everything) and bench/RESULTS.md (the tables)."""
    data = {"machine": meta, "total_seconds": round(total_seconds, 1),
            "sections": {s.name: {"title": s.title, "status": s.status, "reason": s.reason, "targets": s.targets,
                                  "results": s.results} for s in sections}}
    (REPO / "bench" / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    m = meta
    lines = ["# ggtool vs llama.cpp's own tools", "",
             "Written by `make bench` (bench/run_all.py). Ratios are ggtool / llama.cpp measured in the same run on "
             "the same machine, per round, as median (min–max). Absolute times on a shared machine drift; the "
             "ratios are the result.", "",
             "## Machine", "",
             f"- CPU: {m['cpu']} — {m['cores']} logical cores visible ({', '.join(m['simd'])})",
             f"- RAM: {m['ram_bytes'] / 2**30:.1f} GiB; {m['os']}; load average at start "
             f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- Reference: llama.cpp vendored by llama-cpp-python {m['reference']['version']} "
             f"(build {m['reference']['build_info']}), tools built in {m['reference']['root']}",
             f"- Threads used for llama.cpp work: {m['threads']}; total bench time {total_seconds / 60:.1f} min",
             f"- ggtool start-up (importing its CLI, numpy and llama-cpp-python; paid by every ggtool run, included in "
             f"the whole-process figures below): {m['ggtool_startup']['seconds']:.2f} s wall, "
             f"{m['ggtool_startup']['cpu_seconds']:.2f} s CPU", "",
             "## Targets", "", "| comparison | target | measured (median) | met |", "|---|---|---|---|"]
    for s in sections:
        if s.status != "ok":
            lines.append(f"| {s.title} | – | {_label(s)}: {s.reason} | – |")
        for t in s.targets:
            val = "–" if t["measured"] is None else f"{t['measured']:.3f}×"
            met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
            lines.append(f"| {t['what']} | {t['target']} | {val} | {met} |")
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        if s.status != "ok":
            lines.append(f"{_label(s)}: {s.reason}")
        else:
            lines += s.markdown
    (REPO / "bench" / "RESULTS.md").write_text("\n".join(lines) + "\n")


def build_info(ref: reference.Reference) -> str:
    tool = ref.tool("llama-bench") or ref.tool("llama-quantize")
    if tool is None:
        return "?"
    out = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return "; ".join((out.stdout + out.stderr).strip().splitlines()[-2:]) or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quant-rounds", type=int, default=2, help="rounds per type in the quantize section")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--convert-layers", type=int, default=10, help="layers of the convert checkpoint (10: 1.1 GB)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel jobs of the one-time reference build")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ref = reference.ensure(args.jobs)
    work = args.work or Path(tempfile.mkdtemp(prefix="ggtool-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(ref, work, work / "logs", ggtool_commands(), args.rounds, args.quant_rounds,
                  args.threads, args.convert_layers)
    ctx.logs.mkdir(exist_ok=True)
    meta = {**machine(), "threads": args.threads,
            "reference": {"version": ref.version, "root": str(ref.root), "build_info": build_info(ref),
                          "tools": sorted(p.name for p in ref.bin.iterdir())}}
    ctx.startup = meta["ggtool_startup"] = measure_startup(ctx)
    ctx.say(f"ggtool commands: {', '.join(sorted(ctx.commands))}; work folder {work}")
    sections = []
    try:
        for name in args.only.split(","):
            mod = importlib.import_module(f"bench_{name}")
            ctx.say(f"section {name} ...")
            try:
                sec = mod.run(ctx)
            except Exception as e:  # noqa: BLE001 - one broken comparison must not hide the others
                traceback.print_exc()
                sec = Section(name, getattr(mod, "TITLE", name), "failed", f"{type(e).__name__}: {str(e)[:300]}")
                sec.results = {"traceback": traceback.format_exc()[-4000:]}
            if sec.status != "ok":
                ctx.say(f"{name}: not available: {sec.reason}")
            sections.append(sec)
            write_reports(sections, meta, time.perf_counter() - t0)  # partial results survive an interruption
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    ctx.say(f"wrote bench/RESULTS.md and bench/results.json in {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
