"""A plan as llama.cpp flags, llama-cpp-python arguments, Ollama PARAMETERs and the shared plan JSON."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..errors import GgtoolError
from ..limits import check_plan
from ..outputs import atomic_output
from .memory import Placement
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
        args += ["-ot", rf"blk\.({layers})\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"]
    if rpc:
        args += ["--rpc", ",".join(rpc)]
    return " ".join(shlex.quote(a) for a in args)


def llama_cpp_python_kwargs(p: Placement) -> dict:
    """Arguments of llama_cpp.Llama (it has no tensor-override or RPC argument: `ggtool run --plan` applies those)."""
    return {"n_gpu_layers": p.n_gpu_layers, "n_ctx": p.n_ctx, "n_batch": p.n_batch, "n_ubatch": p.n_ubatch,
            "type_k": {"f16": 1, "q8_0": 8, "q4_0": 2}[p.type_k], "type_v": {"f16": 1, "q8_0": 8, "q4_0": 2}[p.type_v],
            "flash_attn": p.flash_attn, **({"tensor_split": list(p.tensor_split)} if p.tensor_split else {})}


def ollama_parameters(p: Placement) -> str:
    """Modelfile PARAMETER lines (Ollama has no per-tensor overrides or KV type per model: see notes)."""
    return f"PARAMETER num_gpu {p.n_gpu_layers}\nPARAMETER num_ctx {p.n_ctx}\nPARAMETER num_batch {p.n_batch}"


def plan_json(result: PlanResult, model: str, rpc: list[str]) -> dict:
    """The shared plan contract (see the helper brief) plus the per-device breakdown."""
    c: Candidate = result.best
    p = c.placement
    pred = c.prediction
    predicted = {"host": {"model": pred.host.model, "kv": pred.host.kv, "compute": pred.host.compute,
                          "output": pred.host.output, "total": pred.host.total}}
    for name, u in pred.devices.items():
        predicted[name] = {"model": u.model, "kv": u.kv, "compute": u.compute, "total": u.total}
    return {"model": str(model), "n_gpu_layers": p.n_gpu_layers, "n_ctx": p.n_ctx, "type_k": p.type_k,
            "type_v": p.type_v, "flash_attn": p.flash_attn, "overrides": overrides(p), "rpc": list(rpc),
            "n_batch": p.n_batch, "n_ubatch": p.n_ubatch, "tensor_split": list(p.tensor_split),
            "predicted": predicted, "tokens_per_s": round(c.tokens_per_s, 2),
            "devices": [{"name": d.name, "budget": d.budget, "bandwidth": d.bandwidth} for d in result.budget.devices],
            "ram": result.budget.ram, "margin": result.budget.margin,
            "llama_cpp_flags": llama_cpp_flags(p, rpc), "ollama": ollama_parameters(p)}


def load_plan(path: Path) -> dict:
    """Read a plan JSON written by `ggtool plan --json`, checking the contract's keys."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GgtoolError(f"{path}: not a readable plan JSON ({e})") from None
    missing = [k for k in PLAN_KEYS if k not in data] if isinstance(data, dict) else list(PLAN_KEYS)
    if missing:
        raise GgtoolError(f"{path}: plan lacks {', '.join(missing)}", "write one with `ggtool plan MODEL --json FILE`")
    check_plan(data, str(path))
    return data


def write_plan(dest: Path, data: dict) -> None:
    """Write the plan JSON through a temporary file beside `dest`, renamed when complete."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise GgtoolError(f"{dest.parent}: no such folder")
    with atomic_output(dest) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
