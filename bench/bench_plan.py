"""Plan: `ggtool plan`'s predicted buffers vs what llama.cpp allocates, and its placement vs llama-fit-params.

No GPU here: the reference ggml-rpc-server on 127.0.0.1 is the second device (llama.cpp's RPC backend gives it
its own model, KV and compute buffers). Per budget:
  1. `ggtool plan MODEL --device 127.0.0.1:PORT=BUDGET@300 --json` (the device treated as a GPU-speed one);
  2. llama-completion loads the model with the plan's own llama.cpp flags (-fit off) and its log's
     "model / KV / output / compute buffer size" lines are the allocation (MiB, 2 decimals);
  3. llama-fit-params --fit-print on with the same flags: llama.cpp's own estimate of that placement;
  4. llama-fit-params fitting to the same usable device memory (budget minus ggtool's margin, as the
     --fit-target margin below the RPC device's reported free memory), with the plan's context, batch,
     KV types and flash attention fixed, so only layers / expert overrides are chosen: compared to the plan's.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import time

from gguf import GGUFReader

from common import PY, REPO, Section, timed

TITLE = "Plan: ggtool plan vs llama.cpp's allocations and llama-fit-params"
MIB = 2**20
BUDGETS_MIB = [96, 256, 1024]   # partial layers, experts on the CPU, everything on the device (medium model)
BUF_RX = re.compile(r"(load_tensors|llama_kv_cache|llama_context|sched_reserve):\s+(\S+)\s+(model|KV|output|compute) "
                    r"buffer size =\s+([\d.]+) MiB")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"rpc server on port {port} did not start")


def allocations(log: str) -> dict:
    """{"host"|"device": {"model"|"kv"|"output"|"compute": bytes}} from llama.cpp's load log (the real load only)."""
    out = {"host": {}, "device": {}}
    for _stage, buf, kind, mib in BUF_RX.findall(log):
        side = "device" if buf.startswith("RPC") else "host"
        key = kind.lower()
        out[side][key] = out[side].get(key, 0) + round(float(mib) * MIB)
    return out


def buffer_pairs(plan: dict, alloc: dict):
    """(side, buffer, predicted, allocated) for every buffer the plan JSON predicts or llama.cpp's log shows: the
    device (the plan's one device) and the host; the log's host model buffer is the mapped span of the file plus
    the repacked copy, which the plan reports as `logged_model`."""
    pred = plan["predicted"]
    dev_pred = next((v for k, v in pred.items() if k != "host"), {})
    for side, p in (("device", dev_pred), ("host", pred["host"])):
        for key in ("model", "kv", "compute", "output"):
            if key not in p and key not in alloc[side]:
                continue
            q = p.get("logged_model", 0) if side == "host" and key == "model" else p.get(key, 0)
            yield side, key, q, alloc[side].get(key, 0)


def fit_print(log: str) -> dict:
    """llama-fit-params --fit-print: lines "<device> model context compute" in MiB."""
    out = {}
    for line in log.split("\n----stderr----\n")[0].splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            side = "host" if parts[0] == "Host" else "device"
            out[side] = {"model": int(parts[1]) * MIB, "context": int(parts[2]) * MIB, "compute": int(parts[3]) * MIB}
    return out


def fitted_args(log: str) -> dict:
    """llama-fit-params' printed CLI arguments: n_gpu_layers and override patterns."""
    stdout = log.split("\n----stderr----\n")[0]
    line = next((ln for ln in stdout.splitlines() if ln.startswith("-c ")), "")
    args = shlex.split(line)
    ngl = int(args[args.index("-ngl") + 1]) if "-ngl" in args else None
    ot = args[args.index("-ot") + 1].split(",") if "-ot" in args else []
    return {"line": line, "n_gpu_layers": ngl, "overrides": [o.rsplit("=", 1)[0] for o in ot if o]}


def cpu_tensors(names: list[str], patterns: list[str]) -> list[str]:
    return sorted(n for n in names if any(re.search(p, n) for p in patterns))


def layers_of(tensors: list[str]) -> str:
    """'0,1,2' for the blocks whose tensors these are."""
    return ",".join(sorted({n.split(".")[1] for n in tensors if n.startswith("blk.")}, key=int)) or "none"


def all_layers(ngl: int | None, n_layer: int) -> int | None:
    """llama.cpp's -ngl -1 and anything above n_layer + 1 mean every layer and the output: n_layer + 1."""
    return None if ngl is None else (n_layer + 1 if ngl < 0 or ngl > n_layer else ngl)


def pct(pred: int, actual: int) -> str:
    if 0 < actual < 0.1 * MIB:
        return "below the log's 0.01 MiB resolution"
    if not actual:
        return "exact" if not pred else "–"
    return f"{(pred - actual) / actual:+.1%}"


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    """Predicted vs allocated per budget; placement vs llama-fit-params."""
    sec = Section("plan", TITLE)
    if "plan" not in ctx.commands:
        return sec.skip("`ggtool plan` does not exist yet")
    server, completion, fit = (ctx.ref.tool(t) for t in ("ggml-rpc-server", "llama-completion", "llama-fit-params"))
    if not (server and completion and fit):
        return sec.skip("this llama.cpp build lacks ggml-rpc-server, llama-completion or llama-fit-params")
    model = ctx.bench_model()
    reader = GGUFReader(model)
    names = [t.name for t in reader.tensors]
    n_layer = int(reader.fields[f"{reader.fields['general.architecture'].contents()}.block_count"].contents())
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port), "-t", str(ctx.threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = ctx.work / "plan"
    work.mkdir(exist_ok=True)
    results, rows, place_rows = {"model": ctx.bench_model_desc, "endpoint": "loopback ggml-rpc-server",
                                 "budgets": {}}, [], []
    try:
        wait_port(port)
        listing = subprocess.run([completion, "--rpc", endpoint, "--list-devices"], capture_output=True, text=True)
        free = int(re.search(r"RPC0: \S+ \((\d+) MiB, (\d+) MiB free\)", listing.stdout + listing.stderr).group(2))
        for budget in BUDGETS_MIB:
            plan_file = work / f"plan-{budget}.json"
            timed([PY, "-m", "ggtool.cli", "plan", model, "--ram", "6GiB", "--device", f"{endpoint}={budget}MiB@300",
                   "--ctx", 4096, "--json", plan_file], ctx.logs / f"plan-{budget}-ggtool.log", cwd=REPO)
            plan = json.loads(plan_file.read_text())
            flags = shlex.split(plan["llama_cpp_flags"])
            real = timed([completion, "-m", model, *flags, "-fit", "off", "-n", 1, "-p", "Hello", "-t", ctx.threads,
                          "--no-warmup", "-no-cnv", "-v"], ctx.logs / f"plan-{budget}-llama-load.log")
            alloc = allocations(real.output)
            est = fit_print(timed([fit, "-m", model, *flags, "--fit-print", "on"],
                                  ctx.logs / f"plan-{budget}-fit-print.log").output)
            comparisons = {}
            for side, key, q, a in buffer_pairs(plan, alloc):
                e = est.get(side, {}).get({"kv": "context"}.get(key, key)) if key != "output" else None
                comparisons[f"{side} {key}"] = {"predicted": q, "allocated": a, "fit_print": e}
            # placement vs llama-fit-params for the same usable device memory and the plan's other settings
            usable = int(budget * (1 - plan.get("margin", 0.1)))
            keep = [f for f in flags if f not in ("--rpc",)]
            fixed = []
            for opt in ("-c", "-b", "-ub", "-ctk", "-ctv", "-fa"):
                if opt in keep:
                    fixed += [opt, keep[keep.index(opt) + 1]]
            fitted = fitted_args(timed([fit, "-m", model, "--rpc", endpoint, *fixed, "-fitc", plan["n_ctx"],
                                        "-fitt", free - usable], ctx.logs / f"plan-{budget}-fit.log").output)
            g_cpu = cpu_tensors(names, [o["pattern"] for o in plan["overrides"]])
            f_cpu = cpu_tensors(names, fitted["overrides"])
            g_ngl, f_ngl = all_layers(plan["n_gpu_layers"], n_layer), all_layers(fitted["n_gpu_layers"], n_layer)
            same = g_ngl == f_ngl and g_cpu == f_cpu
            results["budgets"][budget] = {"plan": {k: plan[k] for k in ("n_gpu_layers", "n_ctx", "type_k", "type_v",
                                                                         "flash_attn", "overrides", "predicted")},
                                          "llama_cpp_flags": plan["llama_cpp_flags"], "allocated": alloc,
                                          "fit_print": est, "comparisons": comparisons,
                                          "fit_params": fitted, "same_placement": same,
                                          "cpu_expert_tensors": {"ggtool": len(g_cpu), "fit_params": len(f_cpu)}}
            for what, c in comparisons.items():
                fp = "–" if c["fit_print"] is None else f"{c['fit_print'] / MIB:.0f}"
                rows.append(f"| {budget} MiB | {what} | {c['predicted'] / MIB:.2f} | {c['allocated'] / MIB:.2f} | "
                            f"{pct(c['predicted'], c['allocated'])} | {fp} |")
            place_rows.append(f"| {budget} MiB (usable {usable}) | ngl {g_ngl}/{n_layer + 1}, experts of layers "
                              f"{layers_of(g_cpu)} on CPU (KV {plan['type_k']}, fa {'on' if plan['flash_attn'] else 'off'}) "
                              f"| ngl {f_ngl}/{n_layer + 1}, experts of layers {layers_of(f_cpu)} on CPU | "
                              f"{'same' if same else 'differs'} |")
            ctx.say(f"plan {budget} MiB: ngl {g_ngl} / fit {f_ngl}, "
                    f"{'same' if same else 'different'} placement")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    sec.results = results
    sec.markdown = [
        f"Model: {ctx.bench_model_desc}; the device is a loopback ggml-rpc-server (llama.cpp's RPC backend); "
        "context 4096; RAM budget 6 GiB. Allocations are llama.cpp's own log lines when loading with the plan's "
        "flags; fit-print is llama-fit-params' estimate (whole MiB) of the same placement.", "",
        "| device budget | buffer | ggtool predicted MiB | llama.cpp allocated MiB | error | fit-print MiB |",
        "|---|---|---|---|---|---|", *rows, "",
        "Host `model` is logged by llama.cpp as CPU_Mapped, the address span of the file from the first to the last "
        "CPU-resident tensor (plus any CPU_REPACK copy); ggtool's plan JSON reports the bytes of the CPU-resident "
        "tensors themselves.", "",
        "Placement for the same usable device memory (llama-fit-params given the plan's context, batch, KV types "
        "and flash attention; it chooses layers and expert overrides only):", "",
        "| device budget | ggtool plan | llama-fit-params | |", "|---|---|---|---|", *place_rows,
    ]
    return sec
