"""Quantize: `ggtool quantize` vs llama-quantize with the same importance matrix, for the four ladder types.

The importance matrix is llama-imatrix's (from the imatrix section, or made here), passed to both tools under
the same path string, since llama-quantize records that path in the output's metadata. Byte identity is checked
on the whole file (sha256) and, if that differs, tensor by tensor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from common import PY, Section, fmt_spread, spread, timed
from compare_gguf import compare

TITLE = "Quantize: ggtool quantize vs llama-quantize"
TYPES = ["IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def reference_imatrix(ctx) -> Path:  # noqa: ANN001
    """llama-imatrix's matrix of the bench model (made once per bench run)."""
    out = ctx.work / "quantize" / "llama.imatrix.gguf"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        timed([ctx.ref.tool("llama-imatrix"), "-m", ctx.small_model(), "-f", ctx.calibration_text(), "-c", 256,
               "-b", 256, "--chunks", 8, "-t", ctx.threads, "--no-ppl", "-o", out, "-ofreq", 1000],
              ctx.logs / "quantize-imatrix.log", cwd=ctx.work)
    return out


def ggtool_output(folder: Path, qtype: str) -> Path:
    """The file ggtool quantize wrote for `qtype` (llama.cpp naming: <Basename>-<SizeLabel>-<TYPE>.gguf)."""
    found = [p for p in folder.glob("*.gguf") if p.stem.upper().endswith(qtype.upper())]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one *{qtype}.gguf in {folder}, found {[p.name for p in found]}")
    return found[0]


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    """Time both tools per type; compare outputs byte for byte."""
    sec = Section("quantize", TITLE)
    if "quantize" not in ctx.commands:
        return sec.skip("`ggtool quantize` does not exist yet")
    tool = ctx.ref.tool("llama-quantize")
    if tool is None or ctx.ref.tool("llama-imatrix") is None:
        return sec.skip("this llama.cpp has no llama-quantize / llama-imatrix")
    model = ctx.small_model()
    imatrix = reference_imatrix(ctx)
    rel_imatrix = imatrix.relative_to(ctx.work)  # same string for both tools (it is written into the file)
    work = ctx.work / "quantize"
    results, rows = {"model": ctx.small_model_desc, "threads": ctx.threads, "rounds": ctx.quant_rounds,
                     "types": {}}, []
    for qtype in TYPES:
        gg_dir, ref_out = work / f"ggtool-{qtype}", work / f"llama-{qtype}.gguf"
        cmds = {"ggtool": [PY, "-m", "ggtool.cli", "quantize", model, "--types", qtype, "--imatrix", rel_imatrix,
                           "--threads", ctx.threads, "-o", gg_dir],
                "llama.cpp": [tool, "--imatrix", rel_imatrix, model, ref_out, qtype, ctx.threads]}
        runs = {"ggtool": [], "llama.cpp": []}
        for i in range(ctx.quant_rounds):
            for who in (["ggtool", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "ggtool"]):
                if who == "ggtool":
                    for p in gg_dir.glob("*.gguf") if gg_dir.exists() else []:
                        p.unlink()
                else:
                    ref_out.unlink(missing_ok=True)
                runs[who].append(timed(cmds[who], ctx.logs / f"quantize-{qtype}-{who}-{i}.log", cwd=ctx.work))
                ctx.say(f"quantize {qtype} round {i + 1}/{ctx.quant_rounds}: {who} {runs[who][-1].seconds:.1f} s")
        gg_out = ggtool_output(gg_dir, qtype)
        identical = sha256(gg_out) == sha256(ref_out)
        diff = None if identical else compare(gg_out, ref_out)
        wall = spread([g.seconds / r.seconds for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
        cpu = spread([g.cpu_seconds / r.cpu_seconds for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
        s0 = ctx.startup.get("cpu_seconds", 0.0)
        cpu_net = spread([(g.cpu_seconds - s0) / r.cpu_seconds for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
        results["types"][qtype] = {"seconds": {k: [t.seconds for t in v] for k, v in runs.items()},
                                   "cpu_seconds": {k: [t.cpu_seconds for t in v] for k, v in runs.items()},
                                   "wall_ratio": wall, "cpu_ratio": cpu,
                                   "cpu_ratio_without_ggtool_startup": cpu_net, "byte_identical": identical,
                                   "bytes": {"ggtool": gg_out.stat().st_size, "llama.cpp": ref_out.stat().st_size},
                                   "diff": diff.to_json() if diff else None}
        sec.target(f"quantize {qtype} wall (ggtool / llama-quantize)", "≤ 1.05×", wall["median"],
                   wall["median"] <= 1.05)
        sec.target(f"quantize {qtype} byte-identical", "yes", None, identical)
        detail = "yes" if identical else (
            f"no: {diff.identical_tensors}/{diff.n_tensors[1]} tensors identical, keys only in ggtool "
            f"{diff.keys_only_in_a or '–'}, only in llama.cpp {diff.keys_only_in_b or '–'}, differing values "
            f"{diff.keys_with_different_values or '–'}")
        med = {k: spread([t.seconds for t in v])["median"] for k, v in runs.items()}
        rows.append(f"| {qtype} | {med['ggtool']:.1f} s | {med['llama.cpp']:.1f} s | {fmt_spread(wall)} | "
                    f"{fmt_spread(cpu)} | {fmt_spread(cpu_net)} | "
                    f"{gg_out.stat().st_size / 2**20:.1f} MiB | {detail} |")
        for p in (gg_out, ref_out):
            p.unlink()
    sec.results = results
    sec.markdown = [f"Model: {ctx.small_model_desc}. Importance matrix: llama-imatrix's, same file for both; "
                    f"{ctx.threads} threads; {ctx.quant_rounds} alternating rounds per type.", "",
                    "| type | ggtool wall | llama-quantize wall | wall ratio | CPU-time ratio | CPU-time ratio without "
                    "ggtool's start-up | size | byte-identical |",
                    "|---|---|---|---|---|---|---|---|", *rows, "",
                    "Byte-identical files mean both ran the same llama_model_quantize work; what remains is ggtool's "
                    "fixed Python start-up (machine section), a large share of a job this small and nothing on a "
                    "real model (minutes per type). CPU time (user + system of the whole process) is the steadier "
                    "figure on a shared machine."]
    return sec
