"""Quantize, every stock family: `ggtool quantize` and llama-quantize give the same bytes for OLMoE, neo-3 /
Mixtral and SSMoELM fixtures at the four ladder types, with llama-imatrix's importance matrix.

The quantize section times one model; this one checks byte identity across the families ggtool converts for
stock llama.cpp (Metis needs ggtool's patched llama.cpp, which the reference build does not carry). Each fixture is
converted to f16 by ggtool; both tools get the same importance matrix under the same path string (llama-quantize
records it in the file).
"""

from __future__ import annotations

from pathlib import Path

from bench_quantize import TYPES, ggtool_output, sha256
from common import PY, Section, timed
from compare_gguf import compare

TITLE = "Quantize, every stock family: byte identity with llama-quantize"


def fixtures(ctx) -> dict[str, tuple[str, Path]]:  # noqa: ANN001 - ctx: run_all.Context
    """family → (description, checkpoint folder): small fixtures whose rows fill whole 256-blocks."""
    from ggtool import fixtures as fx

    work = ctx.work / "families"
    work.mkdir(exist_ok=True)
    olmoe = fx.make_olmoe(work / "olmoe", fx.train_bpe_tokenizer(work / "bpe"), layers=2, hidden_size=512,
                          intermediate_size=256)
    mixtral = fx.make_mixtral(work / "neo3", fx.train_spm_tokenizer(work / "spm"), layers=2, hidden_size=512,
                              intermediate_size=256)
    ssmoelm = fx.make_ssmoelm(work / "ssmoelm", fx.train_byte_fallback_bpe(work / "bbpe"), layers=2, d_model=512,
                              heads=8, kv_heads=2)
    return {"OLMoE": ("OlmoeForCausalLM, 2 layers, hidden 512, 8 experts top-2, expert FF 256", olmoe),
            "neo-3 / Mixtral": ("MixtralForCausalLM, 2 layers, hidden 512, 8/2 GQA heads, 8 experts top-2, "
                                "expert FF 256", mixtral),
            "SSMoELM": ("packed SSMoELM, 2 layers, d_model 512, 8/2 GQA heads, 8 experts, FF 256 + shared 256",
                        ssmoelm)}


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    sec = Section("families", TITLE)
    if "quantize" not in ctx.commands:
        return sec.skip("`ggtool quantize` does not exist yet")
    tool, imatrix_tool = ctx.ref.tool("llama-quantize"), ctx.ref.tool("llama-imatrix")
    if tool is None or imatrix_tool is None:
        return sec.skip("this llama.cpp has no llama-quantize / llama-imatrix")
    results, rows = {}, []
    for family, (desc, ckpt) in fixtures(ctx).items():
        slug = ckpt.name
        work = ctx.work / "families" / f"{slug}-out"
        work.mkdir(exist_ok=True)
        f16 = work / f"{slug}-f16.gguf"
        timed([PY, "-m", "ggtool.cli", "convert", ckpt, "-o", f16, "--outtype", "f16"],
              ctx.logs / f"families-{slug}-convert.log", cwd=ctx.work)
        imatrix = work / "llama.imatrix.gguf"
        timed([imatrix_tool, "-m", f16, "-f", ctx.calibration_text(), "-c", 128, "-b", 128, "--chunks", 4,
               "-t", ctx.threads, "--no-ppl", "-o", imatrix, "-ofreq", 1000], ctx.logs / f"families-{slug}-imatrix.log",
              cwd=ctx.work)
        rel = imatrix.relative_to(ctx.work)
        results[family] = {"model": desc, "types": {}}
        cells = []
        for qtype in TYPES:
            gg_dir, ref_out = work / f"ggtool-{qtype}", work / f"llama-{qtype}.gguf"
            timed([PY, "-m", "ggtool.cli", "quantize", f16, "--types", qtype, "--imatrix", rel, "--threads",
                   ctx.threads, "-o", gg_dir], ctx.logs / f"families-{slug}-{qtype}-ggtool.log", cwd=ctx.work)
            timed([tool, "--imatrix", rel, f16, ref_out, qtype, ctx.threads],
                  ctx.logs / f"families-{slug}-{qtype}-llama.log", cwd=ctx.work)
            gg_out = ggtool_output(gg_dir, qtype)
            identical = sha256(gg_out) == sha256(ref_out)
            diff = None if identical else compare(gg_out, ref_out)
            results[family]["types"][qtype] = {"byte_identical": identical, "bytes": gg_out.stat().st_size,
                                               "diff": diff.to_json() if diff else None}
            sec.target(f"quantize {family} {qtype} byte-identical", "yes", None, identical)
            cells.append("yes" if identical else
                         f"no ({diff.identical_tensors}/{diff.n_tensors[1]} tensors identical)")
            ctx.say(f"families {family} {qtype}: {'identical' if identical else 'DIFFERENT'}")
            for p in (gg_out, ref_out):
                p.unlink()
        rows.append(f"| {family} | {desc} | " + " | ".join(cells) + " |")
    sec.results = results
    sec.markdown = ["Fixtures converted to f16 by ggtool; importance matrix from llama-imatrix (4 chunks of 128 "
                    "tokens), the same file and path string for both tools; whole files compared by sha256.", "",
                    "| family | fixture | " + " | ".join(TYPES) + " |", "|---|---|" + "---|" * len(TYPES), *rows]
    return sec
