"""A plan as llama.cpp flags, llama-cpp-python arguments, Ollama PARAMETERs and the shared plan JSON."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GgtoolError
from ..limits import check_plan
from ..outputs import atomic_output, check_destination
from .memory import EXPERT_PATTERN, Placement
from .search import Candidate, PlanResult, expert_override_patterns

PLAN_KEYS = ("model", "n_gpu_layers", "n_ctx", "type_k", "type_v", "flash_attn", "overrides", "rpc", "predicted")


def overrides(p: Placement) -> list[dict]:
    return [{"pattern": pat, "buffer": "CPU"} for pat in expert_override_patterns(p.cpu_expert_layers)]


def llama_cpp_flags(p: Placement, rpc: list[str]) -> str:
    """llama-server / llama-cli flags applying the plan."""
    args = ["-ngl", str(p.n_gpu_layers), "-c", str(p.n_ctx), "-b", str(p.n_batch), "-ub", str(p.n_ubatch),
            "-ctk", p.type_k, "-ctv", p.type_v, "-fa", "on" if p.flash_attn else "off"]
    if p.tensor_split:
        args += ["-ts", ",".join(f"{x:g}" for x in p.tensor_split)]
    if p.cpu_expert_layers:  # one pattern for all the layers (the JSON keeps one per layer)
        layers = "|".join(str(il) for il in p.cpu_expert_layers)
        args += ["-ot", rf"blk\.({layers})\.{EXPERT_PATTERN}=CPU"]
    if rpc:
        args += ["--rpc", ",".join(rpc)]
    return " ".join(shlex.quote(a) for a in args)


def llama_cpp_python_kwargs(p: Placement) -> dict:
    """Arguments of llama_cpp.Llama (it has no tensor-override or RPC argument: `ggtool run --plan` applies those)."""
    return {"n_gpu_layers": p.n_gpu_layers, "n_ctx": p.n_ctx, "n_batch": p.n_batch, "n_ubatch": p.n_ubatch,
            "type_k": {"f16": 1, "q8_0": 8, "q4_0": 2}[p.type_k], "type_v": {"f16": 1, "q8_0": 8, "q4_0": 2}[p.type_v],
            "flash_attn": p.flash_attn, **({"tensor_split": list(p.tensor_split)} if p.tensor_split else {})}


# -- Ollama ------------------------------------------------------------------------------------------
# Ollama >= 0.30 runs llama-server (ollama/ollama llm/llama_server.go, startLlamaServer): it passes
# `-c num_ctx*OLLAMA_NUM_PARALLEL`, `-b/-ub num_batch`, `-ngl num_gpu` only when the Modelfile sets num_gpu,
# `--cache-type-k/-v OLLAMA_KV_CACHE_TYPE` only when that is set, and always `--flash-attn on|off|auto` (from
# OLLAMA_FLASH_ATTENTION); it passes no tensor overrides, and llama-server inherits Ollama's environment
# (SetupLlamaServerCommandEnv: cmd.Env = os.Environ()), so the LLAMA_ARG_* names of llama.cpp's common/arg.cpp reach it.
OLLAMA_TARGET = "Ollama >= 0.30 (llama-server runner)"
OLLAMA_OLDER = ("older Ollama (its own runner) ignores LLAMA_ARG_* and places whole layers by its own estimate: "
                "experts are not kept in RAM there")
ENV_HEADER = "# Ollama server environment written by ggtool"


@dataclass
class OllamaSetup:
    """A plan as Ollama can apply it: per-model Modelfile PARAMETERs and the server-wide environment."""

    parameters: dict[str, int]  # Modelfile PARAMETERs that hold per model
    env: dict[str, str]  # environment of `ollama serve` (server-wide: every model it loads)
    summary: str  # one line describing the placement
    layers_only: dict | None = None  # {"num_gpu", "tokens_per_s", "flash_attn"}: without server environment
    tokens_per_s: float | None = None
    notes: list[str] = field(default_factory=list)


def ollama_setup(plan: dict) -> OllamaSetup:
    """How a plan (the plan JSON contract) takes effect in Ollama >= 0.30. The Modelfile keeps num_ctx and
    num_batch; num_gpu only when every expert stays with its layer (num_gpu becomes `-ngl N`, which puts a layer's
    experts on the GPU with it, and switches llama.cpp's --fit off). Expert overrides, their layer count, KV cache
    type and flash attention go in the server environment."""
    ngl, n_ctx = int(plan["n_gpu_layers"]), int(plan["n_ctx"])
    n_batch, n_ubatch = int(plan.get("n_batch", 512)), int(plan.get("n_ubatch", plan.get("n_batch", 512)))
    n_layer = plan.get("n_layer")
    overrides = [(o["pattern"], o.get("buffer", "CPU")) for o in plan.get("overrides", [])]
    notes = []
    # Ollama passes num_batch as both -b and -ub: the compute buffers follow the micro-batch
    params = {"num_ctx": n_ctx, "num_batch": min(n_batch, n_ubatch)}
    if n_batch != n_ubatch:
        notes.append(f"num_batch {min(n_batch, n_ubatch)}: Ollama uses one value for the batch and micro-batch")
    env: dict[str, str] = {}
    if overrides:
        if n_layer is None or ngl < int(n_layer) + 1:  # all layers: leave -ngl unset (-1 is every layer)
            env["LLAMA_ARG_N_GPU_LAYERS"] = str(ngl)
        k = len(overrides)
        if all(b == "CPU" for _, b in overrides) and [pat for pat, _ in overrides] == \
                expert_override_patterns(tuple(range(k))):
            env["LLAMA_ARG_N_CPU_MOE"] = str(k)  # --n-cpu-moe k makes exactly these patterns
        else:
            for pat, buf in overrides:
                if "," in pat or "'" in pat or "=" in pat:
                    raise GgtoolError(f"override pattern {pat!r} cannot travel in LLAMA_ARG_OVERRIDE_TENSOR",
                                      "llama.cpp splits that list at commas and each item at '='")
            env["LLAMA_ARG_OVERRIDE_TENSOR"] = ",".join(f"{pat}={buf}" for pat, buf in overrides)
        env["LLAMA_ARG_FIT"] = "off"  # the plan is the fit: llama.cpp's --fit would abort on the overrides anyway
    else:
        params["num_gpu"] = ngl
    if plan.get("tensor_split"):
        env["LLAMA_ARG_TENSOR_SPLIT"] = ",".join(f"{float(x):g}" for x in plan["tensor_split"])
    if plan.get("rpc"):
        env["LLAMA_ARG_RPC"] = ",".join(plan["rpc"])
    type_k, type_v, fa = plan.get("type_k", "f16"), plan.get("type_v", "f16"), bool(plan.get("flash_attn", False))
    if type_k == type_v:
        env["OLLAMA_KV_CACHE_TYPE"] = type_k
    else:  # Ollama's one variable sets both; without it, llama-server reads its own
        env["LLAMA_ARG_CACHE_TYPE_K"], env["LLAMA_ARG_CACHE_TYPE_V"] = type_k, type_v
    env["OLLAMA_FLASH_ATTENTION"] = "1" if fa else "0"
    env["OLLAMA_NUM_PARALLEL"] = "1"  # the plan's context is one sequence; Ollama multiplies -c by this
    layers = f"{ngl}/{n_layer + 1}" if n_layer is not None else str(ngl)
    experts = f", experts of {len(overrides)} layers in RAM" if overrides else ""
    summary = (f"{layers} layers offloaded{experts}, context {n_ctx}, KV {type_k}/{type_v}, "
               f"flash attention {'on' if fa else 'off'}")
    lo = plan.get("layers_only")
    layers_only = ({"num_gpu": int(lo["n_gpu_layers"]), "tokens_per_s": lo.get("tokens_per_s"),
                    "flash_attn": lo.get("flash_attn")} if lo else None)
    return OllamaSetup(params, env, summary, layers_only, plan.get("tokens_per_s"), notes)


def ollama_parameters(p: Placement) -> str:
    """Modelfile PARAMETER lines that hold per model (see ollama_setup)."""
    setup = ollama_setup({"n_gpu_layers": p.n_gpu_layers, "n_ctx": p.n_ctx, "n_batch": p.n_batch,
                          "n_ubatch": p.n_ubatch, "type_k": p.type_k, "type_v": p.type_v,
                          "flash_attn": p.flash_attn, "overrides": overrides(p)})
    return "\n".join(f"PARAMETER {k} {v}" for k, v in setup.parameters.items())


def ollama_env_text(setup: OllamaSetup, model: str) -> str:
    """The server environment as a file both `sh` (`set -a; . FILE`) and systemd (EnvironmentFile=) read the
    same way: KEY='value', single quotes keeping backslashes and | literal."""
    lines = [f"{ENV_HEADER} for {model}: {setup.summary}",
             f"# for {OLLAMA_TARGET}. SERVER-WIDE: these apply to every model this `ollama serve` loads.",
             "# use:  set -a; . ./ollama.env; set +a; ollama serve",
             "#   or: systemctl edit ollama  ->  [Service]  EnvironmentFile=/absolute/path/to/ollama.env",
             f"# {OLLAMA_OLDER}; it does read OLLAMA_KV_CACHE_TYPE and OLLAMA_FLASH_ATTENTION."]
    for k, v in setup.env.items():
        if "'" in v or "\n" in v:
            raise GgtoolError(f"{k}={v!r} cannot be written to an environment file")
        lines.append(f"{k}='{v}'")
    return "\n".join(lines) + "\n"


def ollama_modelfile_comment(setup: OllamaSetup, env_name: str = "ollama.env") -> list[str]:
    """Modelfile comment lines saying where the plan's settings live and what the layers-only choice gives."""
    speed = f" (≈{setup.tokens_per_s:.1f} tokens/s predicted)" if setup.tokens_per_s else ""
    lines = [f"plan: {setup.summary}{speed}",
             f"for {OLLAMA_TARGET}: the placement, KV cache type and flash attention are server settings, in "
             f"{env_name} beside this file (server-wide: they apply to every model `ollama serve` loads)"]
    if "num_gpu" not in setup.parameters:
        lines.append("no num_gpu here: Ollama would pass it as -ngl, putting every offloaded layer's experts on the "
                     "GPU and turning llama.cpp's fit off")
    if setup.layers_only:
        lo = setup.layers_only
        lo_speed = f"≈{lo['tokens_per_s']:.1f} tokens/s" if lo.get("tokens_per_s") else "slower"
        lines.append(f"without {env_name} (no server settings): whole layers only, f16 KV cache: "
                     f"PARAMETER num_gpu {lo['num_gpu']}  ({lo_speed}{' vs ' + speed.strip(' ()') if speed else ''})")
    lines.append(OLLAMA_OLDER[0].upper() + OLLAMA_OLDER[1:])
    return lines


def write_ollama_env(dest: Path, text: str) -> None:
    """Write the environment file through a temporary file; never replace a file ggtool did not write."""
    dest = Path(dest)
    if dest.exists():
        try:
            ours = dest.read_text(encoding="utf-8", errors="replace")[:len(ENV_HEADER)] == ENV_HEADER
        except OSError:
            ours = False
        if not ours:
            raise GgtoolError(f"{dest}: exists and was not written by ggtool", "move it away or choose another -o")
    with atomic_output(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _predicted(c: Candidate) -> dict:
    pred = c.prediction
    # host "model" is what stays resident (the pages of the tensors the CPU uses, the repacked copies);
    # "logged_model" is what llama.cpp's load log reports (the mapped span of the file + CPU_REPACK)
    predicted = {"host": {"model": pred.host.model, "logged_model": pred.host.logged_model, "kv": pred.host.kv,
                          "compute": pred.host.compute, "output": pred.host.output, "total": pred.host.total}}
    for name, u in pred.devices.items():
        predicted[name] = {"model": u.model, "kv": u.kv, "compute": u.compute, "total": u.total}
    return predicted


def plan_json(result: PlanResult, model: str, rpc: list[str]) -> dict:
    """The shared plan contract (see the helper brief) plus the per-device breakdown."""
    c: Candidate = result.best
    p = c.placement
    predicted = _predicted(c)
    out = {"model": str(model), "n_gpu_layers": p.n_gpu_layers, "n_ctx": p.n_ctx, "type_k": p.type_k,
           "type_v": p.type_v, "flash_attn": p.flash_attn, "overrides": overrides(p), "rpc": list(rpc),
           "n_batch": p.n_batch, "n_ubatch": p.n_ubatch, "tensor_split": list(p.tensor_split),
           "predicted": predicted, "tokens_per_s": round(c.tokens_per_s, 2),
           "devices": [{"name": d.name, "budget": d.budget, "bandwidth": d.bandwidth} for d in result.budget.devices],
           "ram": result.budget.ram, "margin": result.budget.margin,
           "llama_cpp_flags": llama_cpp_flags(p, rpc), "n_layer": result.model.n_layer}
    lo = result.layers_only
    if lo is not None:
        q = lo.placement
        out["layers_only"] = {"n_gpu_layers": q.n_gpu_layers, "n_ctx": q.n_ctx, "type_k": q.type_k, "type_v": q.type_v,
                              "flash_attn": q.flash_attn, "tokens_per_s": round(lo.tokens_per_s, 2),
                              "predicted": _predicted(lo)}
    setup = ollama_setup(out)
    out["ollama"] = "\n".join(f"PARAMETER {k} {v}" for k, v in setup.parameters.items())
    out["ollama_env"] = setup.env
    return out


def load_plan(path: Path) -> dict:
    """Read a plan JSON written by `ggtool plan --json`, checking the contract's keys."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GgtoolError(f"{path}: no such plan file", "write one with `ggtool plan MODEL --json FILE`") from None
    except (OSError, ValueError) as e:
        raise GgtoolError(f"{path}: not a readable plan JSON ({e})") from None
    check_plan(data, str(path))  # its numbers first: a bad n_ctx is named even in an incomplete plan
    missing = [k for k in PLAN_KEYS if k not in data] if isinstance(data, dict) else list(PLAN_KEYS)
    if missing:
        raise GgtoolError(f"{path}: plan lacks {', '.join(missing)}", "write one with `ggtool plan MODEL --json FILE`")
    return data


def write_plan(dest: Path, data: dict) -> None:
    """Write the plan JSON through a temporary file beside `dest`, renamed when complete."""
    check_destination(dest, example="plan.json")
    with atomic_output(dest) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
