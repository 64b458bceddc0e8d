"""Mixed files (issue 16) in the reference llama.cpp: ggtool's mixes load and generate in llama-completion, and
`ggtool plan`'s predicted buffers for them match what llama.cpp allocates.

Files: `ladder --mix` on the default model (four mixes at the stock sizes) and on the second model of
tests/test_mix_second_model.py (a neo-3 trained there). For each mixed file:
  1. llama-completion -m FILE -p PROMPT -n 16 --ignore-eos (CPU): exit status 0 and 16 tokens decoded;
  2. per device budget, `ggtool plan FILE --device 127.0.0.1:PORT=BUDGET@300 --ctx 512 --json` and llama-completion
     loading with the plan's flags (-fit off, -v) beside a loopback ggml-rpc-server: every buffer llama.cpp logs
     (device and host: model, KV, compute, output) against the prediction, within 5% (or below the log's
     0.01 MiB resolution).

    python bench/bench_mix.py [WORK_DIR]       (standalone; `make bench` runs it as the "mix" section)
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from bench_plan import MIB, allocations, buffer_pairs, free_port, pct, wait_port
from common import PY, REPO, Section, timed

TITLE = "Mixed files: llama-completion loads and generates them; ggtool plan's buffers vs llama.cpp's"
BUDGETS_MIB = [6, 1024]  # part of the layers on the device / everything on it
PROMPT = "The refrigerator"
N_PREDICT = 16


def mixed_files(ctx) -> dict[str, list[Path]]:  # noqa: ANN001
    sys.path.insert(0, str(REPO))
    from ggtool import DEFAULT_MODEL
    from ggtool.ladder import ladder
    from tests.test_mix_second_model import build

    out = {}
    r = ladder(DEFAULT_MODEL, ctx.work / "mix-default", mix=True)
    out["default model (OLMoE)"] = [Path(v.file) for v in r.report.variants if v.type.endswith("-mix")]
    _, r2 = build(ctx.work / "mix-neo3")
    out["second model (neo-3)"] = [Path(v.file) for v in r2.report.variants if v.type.endswith("-mix")]
    return out


def within(pred: int, actual: int) -> bool:
    return abs(pred - actual) <= max(0.05 * actual, 0.01 * MIB)


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    sec = Section("mix", TITLE)
    server, completion = ctx.ref.tool("ggml-rpc-server"), ctx.ref.tool("llama-completion")
    if not (server and completion):
        return sec.skip("this llama.cpp build lacks ggml-rpc-server or llama-completion")
    files = mixed_files(ctx)
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port), "-t", str(ctx.threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gen_rows, buf_rows, results = [], [], {}
    try:
        wait_port(port)
        for model, paths in files.items():
            for f in paths:
                name = f.name
                # --ignore-eos: a barely trained model may end its text at once; the check is that the file decodes.
                # llama-completion prints through an asynchronous logger that it never flushes at exit, so now and
                # then its last lines (the text and the timings) are lost although it ran (llama.cpp issue 22142,
                # seen here in about 1 run of 12): such a run is repeated, up to 3 times, and counted
                for attempt in range(1, 4):
                    gen = timed([completion, "-m", f, "-p", PROMPT, "-n", N_PREDICT, "-no-cnv", "--no-warmup", "-t",
                                 ctx.threads, "--temp", 0, "--ignore-eos"], ctx.logs / f"mix-{name}-generate.log")
                    # tokens decoded after the prompt's: "eval time = ... / N runs" (+1, sampled from the prompt's
                    # logits); timed() raises on a non-zero exit
                    runs = re.search(r"\beval time =\s+[\d.]+ ms /\s+(\d+) runs", gen.output)
                    if runs:
                        break
                text = gen.output.split("\n----stderr----\n")[0]
                generated = text[text.find(PROMPT) + len(PROMPT):] if PROMPT in text else text
                n_generated = int(runs.group(1)) + 1 if runs else 0
                ok = n_generated == N_PREDICT
                gen_rows.append(f"| {model} | {name} | {f.stat().st_size:,} | {n_generated} | {attempt} | "
                                f"`{json.dumps(generated[:60])[1:-1]}` |")
                entry = {"generated": ok, "n_generated": n_generated, "attempts": attempt, "text": generated[:200],
                         "budgets": {}}
                for budget in BUDGETS_MIB:
                    plan_file = ctx.work / f"plan-{name}-{budget}.json"
                    timed([PY, "-m", "ggtool.cli", "plan", f, "--ram", "6GiB", "--device",
                           f"{endpoint}={budget}MiB@300", "--ctx", 512, "--json", plan_file],
                          ctx.logs / f"mix-{name}-plan-{budget}.log", cwd=REPO)
                    plan = json.loads(plan_file.read_text())
                    flags = shlex.split(plan["llama_cpp_flags"])
                    real = timed([completion, "-m", f, *flags, "-fit", "off", "-n", 1, "-p", "Hello", "-t",
                                  ctx.threads, "--no-warmup", "-no-cnv", "-v"],
                                 ctx.logs / f"mix-{name}-load-{budget}.log")
                    alloc = allocations(real.output)
                    comp = {}
                    for side, key, q, a in buffer_pairs(plan, alloc):
                        comp[f"{side} {key}"] = {"predicted": q, "allocated": a, "within_5pct": within(q, a)}
                        buf_rows.append(f"| {name} | {budget} MiB (ngl {plan['n_gpu_layers']}) | {side} {key} | "
                                        f"{q / MIB:.2f} | {a / MIB:.2f} | {pct(q, a)} |")
                    entry["budgets"][budget] = {"flags": plan["llama_cpp_flags"], "comparisons": comp,
                                                "load_ok": True}  # timed() raises on a failed load
                    ctx.say(f"mix {name} {budget} MiB: {sum(c['within_5pct'] for c in comp.values())}/{len(comp)} "
                            f"buffers within 5%")
                results[name] = entry
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    sec.results = results
    all_ok = all(e["generated"] and all(b["load_ok"] and all(c["within_5pct"] for c in b["comparisons"].values())
                                        for b in e["budgets"].values()) for e in results.values())
    sec.target("mixed files load, generate, and every buffer within 5% of the plan", "all", None, all_ok)
    sec.markdown = [
        f"llama-completion ({ctx.ref.version}, CPU) on each mixed file, prompt `{PROMPT}`, {N_PREDICT} tokens greedy "
        "(`--ignore-eos`):", "",
        "| model | file | bytes | tokens generated | runs (lost logs repeated) | text |", "|---|---|---|---|---|---|",
        *gen_rows, "",
        "`ggtool plan --ctx 512` beside a loopback ggml-rpc-server, loaded by llama-completion with the plan's flags:",
        "", "| file | device budget | buffer | predicted MiB | llama.cpp MiB | error |", "|---|---|---|---|---|---|",
        *buf_rows,
    ]
    return sec


def main() -> None:
    import tempfile
    import time

    import reference
    from run_all import Context

    from common import ggtool_commands

    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ggtool-bench-mix-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(reference.ensure(2), work, work / "logs", ggtool_commands(), 1, 1, 1)
    ctx.logs.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    sec = run(ctx)
    print("\n".join(sec.markdown))
    print(f"\n{sec.status}; {time.perf_counter() - t0:.0f} s; work folder {work}")


if __name__ == "__main__":
    main()
