"""imatrix: `ggtool imatrix` vs llama-imatrix on the same model, text and chunk size.

Both run one chunk per batch (llama-imatrix -b = chunk size, the way ggtool decodes), without perplexity
(--no-ppl), on the same threads. Tokens/s is tokens collected over the whole process's wall time (model load
included for both). Agreement: per tensor, max |Δ in_sum2| / max |in_sum2| and whether the counts are equal,
read straight from the two GGUF files with gguf-py.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from common import PY, REPO, Section, fmt_spread, spread, timed

TITLE = "imatrix: ggtool imatrix vs llama-imatrix"
CHUNK, N_CHUNKS = 256, 16


def read_imatrix_gguf(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{weight name: (in_sum2 as float64 [n_mat, ne0], counts [n_mat])} of a GGUF imatrix file."""
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in GGUFReader(path).tensors}
    out = {}
    for name, data in tensors.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            counts = tensors[base + ".counts"].reshape(-1)
            out[base] = (data.reshape(len(counts), -1), counts)
    return out


def agreement(a: dict, b: dict) -> dict:
    """Per-tensor relative error of the sums (scaled by b's largest value) and count equality."""
    common = sorted(set(a) & set(b))
    rel, count_equal, worst = {}, 0, ("", 0.0)
    for name in common:
        (sa, ca), (sb, cb) = a[name], b[name]
        if sa.shape != sb.shape:
            rel[name] = float("inf")
            continue
        rel[name] = float(np.max(np.abs(sa - sb)) / max(np.max(np.abs(sb)), 1e-30))
        count_equal += bool(np.array_equal(ca, cb))
        if rel[name] > worst[1]:
            worst = (name, rel[name])
    vals = list(rel.values())
    return {"tensors_only_in_ggtool": sorted(set(a) - set(b)), "tensors_only_in_llamacpp": sorted(set(b) - set(a)),
            "n_common": len(common), "counts_equal": count_equal,
            "rel_err_sums": spread(vals) if vals else None, "worst_tensor": worst[0],
            "per_tensor_rel_err": rel}


def with_add_bos(model: Path, dest: Path) -> Path:
    """A copy of `model` whose tokenizer.ggml.add_bos_token is true (edited in place in the copy, same size)."""
    import shutil

    shutil.copyfile(model, dest)
    reader = GGUFReader(dest, "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = True
    del reader
    return dest


def same_tokens_agreement(ctx, tool: Path, model: Path, text: Path, work: Path) -> dict:  # noqa: ANN001
    """Both tools on one chunk of a copy of the model whose vocabulary adds BOS: checks the path where each
    chunk's first token is replaced by BOS (the timed runs use the model as converted, add_bos_token = false)."""
    bos_model = with_add_bos(model, work / "add-bos.gguf")
    gg, ref = work / "one-ggtool.imatrix.gguf", work / "one-llama.imatrix.gguf"
    timed([PY, "-m", "ggtool.cli", "imatrix", bos_model, "-f", text, "--chunk-size", CHUNK, "--chunks", 1,
           "--threads", ctx.threads, "-o", gg], ctx.logs / "imatrix-one-chunk-ggtool.log", cwd=REPO)
    timed([tool, "-m", bos_model, "-f", text, "-c", CHUNK, "-b", CHUNK, "--chunks", 1, "-t", ctx.threads,
           "--no-ppl", "-o", ref, "-ofreq", 1000], ctx.logs / "imatrix-one-chunk-llama.log", cwd=REPO)
    out = agreement(read_imatrix_gguf(gg), read_imatrix_gguf(ref))
    bos_model.unlink()
    return out


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    """Time both collectors; compare their matrices."""
    sec = Section("imatrix", TITLE)
    if "imatrix" not in ctx.commands:
        return sec.skip("`ggtool imatrix` does not exist yet")
    tool = ctx.ref.tool("llama-imatrix")
    if tool is None:
        return sec.skip("this llama.cpp has no llama-imatrix")
    model, text = ctx.bench_model(), ctx.calibration_text()
    work = ctx.work / "imatrix"
    work.mkdir(exist_ok=True)
    gg_out, ref_out = work / "ggtool.imatrix.gguf", work / "llama.imatrix.gguf"
    cmds = {
        "ggtool": [PY, "-m", "ggtool.cli", "imatrix", model, "-f", text, "--chunk-size", CHUNK,
                   "--chunks", N_CHUNKS, "--threads", ctx.threads, "-o", gg_out],
        "llama.cpp": [tool, "-m", model, "-f", text, "-c", CHUNK, "-b", CHUNK, "--chunks", N_CHUNKS,
                      "-t", ctx.threads, "--no-ppl", "-o", ref_out, "-ofreq", 1000],
    }
    runs = {"ggtool": [], "llama.cpp": []}
    for i in range(ctx.rounds):
        for who in (["ggtool", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "ggtool"]):
            (gg_out if who == "ggtool" else ref_out).unlink(missing_ok=True)
            runs[who].append(timed(cmds[who], ctx.logs / f"imatrix-{who}-{i}.log", cwd=REPO))
            ctx.say(f"imatrix round {i + 1}/{ctx.rounds}: {who} {runs[who][-1].seconds:.1f} s")
    n_tokens = CHUNK * N_CHUNKS
    tps = {k: [n_tokens / t.seconds for t in v] for k, v in runs.items()}
    ratio = spread([g / r for g, r in zip(tps["ggtool"], tps["llama.cpp"])])
    cpu_ratio = spread([r.cpu_seconds / g.cpu_seconds for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
    s0 = ctx.startup.get("cpu_seconds", 0.0)
    cpu_net = spread([r.cpu_seconds / (g.cpu_seconds - s0) for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
    agree = agreement(read_imatrix_gguf(gg_out), read_imatrix_gguf(ref_out))
    same = same_tokens_agreement(ctx, tool, model, text, work)
    sec.target("imatrix tokens/s (ggtool / llama-imatrix)", "≥ 0.8×", ratio["median"], ratio["median"] >= 0.8)
    sec.results = {"model": ctx.bench_model_desc, "chunk_size": CHUNK, "chunks": N_CHUNKS, "n_tokens": n_tokens,
                   "threads": ctx.threads, "tokens_per_s": tps, "seconds": {k: [t.seconds for t in v]
                                                                            for k, v in runs.items()},
                   "tokens_per_s_ratio": ratio, "tokens_per_cpu_s_ratio": cpu_ratio,
                   "tokens_per_cpu_s_ratio_without_ggtool_startup": cpu_net,
                   "cpu_seconds": {k: [t.cpu_seconds for t in v] for k, v in runs.items()}, "agreement_as_each_tool_chunks": agree,
                   "agreement_same_tokens": same}
    def line(a: dict, what: str) -> str:
        rel = a["rel_err_sums"]
        return (f"- {what}: over {a['n_common']} tensors, relative error of the sums (max |Δ| / max) "
                f"{fmt_spread(rel, 6) if rel else '–'} (worst: {a['worst_tensor'] or '–'}); counts equal in "
                f"{a['counts_equal']}/{a['n_common']}; tensors only in ggtool: {len(a['tensors_only_in_ggtool'])}, "
                f"only in llama-imatrix: {len(a['tensors_only_in_llamacpp'])}.")

    sec.markdown = [
        f"Model: {ctx.bench_model_desc}. Text: {N_CHUNKS} chunks of {CHUNK} tokens of Python standard-library "
        f"source; {ctx.threads} threads; one chunk per batch; llama-imatrix with --no-ppl.", "",
        "| | ggtool | llama-imatrix | ratio |", "|---|---|---|---|",
        f"| tokens/s (whole process) | {statistics.median(tps['ggtool']):.0f} | "
        f"{statistics.median(tps['llama.cpp']):.0f} | {fmt_spread(ratio)} |",
        f"| tokens per CPU-second | | | {fmt_spread(cpu_ratio)} |",
        f"| tokens per CPU-second, ggtool's start-up excluded | | | {fmt_spread(cpu_net)} |", "",
        line(agree, f"Timed runs ({N_CHUNKS} chunks, model as converted: no BOS added)"),
        line(same, f"One chunk of {CHUNK} on a copy of the model with add_bos_token = true (first token of the chunk "
                   "replaced by BOS, as llama-imatrix does)"),
        "- Whole-process figures include ggtool's Python start-up (see the machine section) and both tools' model "
        "load; counts are per expert for the 3-D expert tensors.",
    ]
    return sec
