"""Run: prompt and decode tokens/s of ggtool's run path vs llama-bench, same threads, batch, context, placement.

ggtool side: bench/run_speed.py drives ggtool.llama.model.LlamaModel (the code `ggtool run` uses: its context
creation, batch building and greedy stream). llama-bench side: -p/-n with the same sizes, -fa off (ggtool's
default), f16 KV cache, -ngl 0 (CPU; no GPU here). Both on an f16 and a Q4_K_M file of the bench model.
"""

from __future__ import annotations

import json
import statistics

from common import PY, REPO, Section, fmt_spread, spread, timed

TITLE = "Run: ggtool's run path vs llama-bench"
PROMPT, GEN, BATCH, UBATCH, REPS = 256, 128, 512, 512, 5


def _json_tail(text: str):
    """The JSON document a tool printed on stdout (the wrapper logs stdout before stderr)."""
    stdout = text.split("\n----stderr----\n")[0]
    start = min(i for i in (stdout.find("["), stdout.find("{")) if i >= 0)
    return json.loads(stdout[start:])


def quantized_model(ctx, qtype: str = "Q4_K_M"):  # noqa: ANN001
    """The small model quantized by llama-quantize (no imatrix needed for Q4_K_M)."""
    out = ctx.work / "run" / f"bench-{qtype}.gguf"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        timed([ctx.ref.tool("llama-quantize"), ctx.small_model(), out, qtype, ctx.threads],
              ctx.logs / f"run-quantize-{qtype}.log")
    return out


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    """Alternate llama-bench and ggtool's loop per model file; ratios per round."""
    sec = Section("run", TITLE)
    if "run" not in ctx.commands:
        return sec.skip("`ggtool run` does not exist")
    bench = ctx.ref.tool("llama-bench")
    if bench is None:
        return sec.skip("this llama.cpp has no llama-bench")
    files = {"medium f16": ctx.bench_model()}
    if ctx.ref.tool("llama-quantize"):
        files["small Q4_K_M"] = quantized_model(ctx)
    results, rows = {"model": ctx.bench_model_desc, "threads": ctx.threads, "prompt": PROMPT, "gen": GEN,
                     "batch": BATCH, "ubatch": UBATCH, "reps_per_round": REPS, "rounds": ctx.rounds,
                     "files": {}}, []
    for label, path in files.items():
        gg = [PY, REPO / "bench" / "run_speed.py", path, "--prompt", PROMPT, "--gen", GEN, "--threads", ctx.threads,
              "--batch", BATCH, "--ubatch", UBATCH, "--reps", REPS, "--ngl", 0]
        ref = [bench, "-m", path, "-p", PROMPT, "-n", GEN, "-t", ctx.threads, "-b", BATCH, "-ub", UBATCH,
               "-ngl", 0, "-fa", "off", "-ctk", "f16", "-ctv", "f16", "-r", REPS, "-o", "json"]
        per = {"ggtool": {"pp": [], "tg": []}, "llama.cpp": {"pp": [], "tg": []}}
        tg_tokens = []
        for i in range(ctx.rounds):
            for who in (["ggtool", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "ggtool"]):
                t = timed(gg if who == "ggtool" else ref, ctx.logs / f"run-{label.replace(' ', '-')}-{who}-{i}.log", cwd=REPO)
                doc = _json_tail(t.output)
                if who == "ggtool":
                    per[who]["pp"].append(statistics.median(doc["pp"]))
                    per[who]["tg"].append(statistics.median(doc["tg"]))
                    tg_tokens += doc["tg_tokens"]
                else:
                    for entry in doc:
                        key = "pp" if entry["n_gen"] == 0 else "tg"
                        per[who][key].append(entry["avg_ts"])
            ctx.say(f"run {label} round {i + 1}/{ctx.rounds}: pp {per['ggtool']['pp'][-1]:.0f} vs "
                    f"{per['llama.cpp']['pp'][-1]:.0f} t/s, tg {per['ggtool']['tg'][-1]:.1f} vs "
                    f"{per['llama.cpp']['tg'][-1]:.1f} t/s")
        ratios = {k: spread([g / r for g, r in zip(per["ggtool"][k], per["llama.cpp"][k])]) for k in ("pp", "tg")}
        results["files"][label] = {"tokens_per_s": per, "ratio": ratios, "ggtool_tg_tokens": tg_tokens}
        sec.target(f"run {label} decode tokens/s (ggtool / llama-bench)", "≥ 0.95×", ratios["tg"]["median"],
                   ratios["tg"]["median"] >= 0.95)
        med = {w: {k: statistics.median(v) for k, v in d.items()} for w, d in per.items()}
        rows.append(f"| {label} | {med['ggtool']['pp']:.0f} | {med['llama.cpp']['pp']:.0f} | "
                    f"{fmt_spread(ratios['pp'])} | {med['ggtool']['tg']:.1f} | {med['llama.cpp']['tg']:.1f} | "
                    f"{fmt_spread(ratios['tg'])} |")
        short = [n for n in tg_tokens if n < GEN]
        if short:
            rows.append(f"| | (greedy stream hit end-of-generation early in {len(short)} reps; "
                        f"rate over {min(short)}+ tokens) | | | | | |")
    sec.results = results
    sec.markdown = [f"Models: medium = {ctx.bench_model_desc}; small = {ctx.small_model_desc}, quantized to Q4_K_M "
                    f"by llama-quantize. pp{PROMPT} / tg{GEN}, {ctx.threads} threads, "
                    f"batch {BATCH}, ubatch {UBATCH}, context {PROMPT + GEN}, CPU only, f16 KV, no flash attention; "
                    f"llama-bench -r {REPS} per round, ggtool {REPS} reps after a warm-up.", "",
                    "| file | ggtool pp t/s | llama-bench pp t/s | pp ratio | ggtool tg t/s | llama-bench tg t/s "
                    "| tg ratio |", "|---|---|---|---|---|---|---|", *rows]
    return sec
