"""Plans that take effect in Ollama >= 0.30: the Modelfile and the server environment, applied the way Ollama starts
llama-server and read back by llama.cpp's own argument parser (common/arg.cpp, built into tests/llama_args)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ggtool.plan.memory import Device, from_config
from ggtool.plan.search import Budget, check_fit, plan
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "build" / "llama_args" / "llama-args"
OLMOE_1B_7B = {"model_type": "olmoe", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
               "num_key_value_heads": 16, "intermediate_size": 1024, "num_experts": 64, "num_experts_per_tok": 8,
               "vocab_size": 50304, "max_position_embeddings": 4096, "tie_word_embeddings": False}
BUDGET = ("--vram", "1GiB", "--ram", "6GiB")


@pytest.fixture(scope="session")
def llama_args() -> Path:
    """The argument harness `make install` builds (built here too if missing, e.g. after `make clean`)."""
    if not HARNESS.is_file():
        subprocess.run([str(ROOT / "tests" / "llama_args" / "build.sh"), sys.executable, str(HARNESS)], check=True)
    return HARNESS


@pytest.fixture(scope="module")
def olmoe_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("olmoe-1b-7b")
    (folder / "config.json").write_text(json.dumps(OLMOE_1B_7B))
    return folder


def sourced_env(path: Path) -> dict[str, str]:
    """The variables a shell gets from `set -a; . FILE` (as the file's header tells users to run it)."""
    out = subprocess.run(["env", "-i", "bash", "-c", 'set -a; . "$1"; env -0', "_", str(path)], capture_output=True,
                         check=True).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in env.items() if k.startswith(("LLAMA_ARG_", "OLLAMA_"))}


def parse_bool(s: str) -> bool | None:
    """Go's strconv.ParseBool (envconfig.BoolWithDefault); None when unset."""
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None if s == "" else True  # envconfig: an unparsable value counts as true


def ollama_server_args(params: dict[str, list[str]], env: dict[str, str]) -> list[str]:
    """llama-server's arguments as Ollama >= 0.30 builds them (ollama/ollama llm/llama_server.go startLlamaServer,
    appendFlashAttentionArgs, appendBatchArgs; llm/server.go NewLlamaServer for OLLAMA_KV_CACHE_TYPE), for the
    options that decide placement and memory. Modelfile PARAMETERs are the last value given."""
    par = {k: v[-1] for k, v in params.items()}
    parallel = int(env.get("OLLAMA_NUM_PARALLEL", "1"))
    args = ["-c", str(int(par.get("num_ctx", 4096)) * parallel), "-np", str(parallel)]
    kv = env.get("OLLAMA_KV_CACHE_TYPE", "").lower()
    if kv:
        args += ["--cache-type-k", kv, "--cache-type-v", kv]
    fa = parse_bool(env.get("OLLAMA_FLASH_ATTENTION", ""))
    args += ["--flash-attn", "auto" if fa is None else "on" if fa else "off"]  # (auto: a GPU that supports it)
    if int(par.get("num_batch", 0)) > 0:
        args += ["-b", par["num_batch"], "-ub", par["num_batch"]]
    if "num_gpu" in par and int(par["num_gpu"]) >= 0:
        args += ["-ngl", par["num_gpu"]]
    return args


def run_llama_args(binary: Path, args: list[str], env: dict[str, str], tmp_path: Path) -> dict:
    """What llama.cpp's common_params_parse makes of the arguments and environment (no config.ini read)."""
    (tmp_path / "xdg").mkdir(exist_ok=True)
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
                               "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def modelfile_params(text: str) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in re.findall(r"^PARAMETER (\S+) (.*)$", text, re.M):
        params.setdefault(key, []).append(value)
    return params


@pytest.mark.parametrize("qtype", ["IQ2_M", "IQ3_M", "Q4_K_M"])
def test_olmoe_plan_takes_effect_through_ollama(olmoe_config, olmoe_gguf, llama_args, tmp_path, qtype):
    """1 GiB VRAM + 6 GiB RAM, OLMoE-1B-7B from its config.json: the Modelfile has no num_gpu, and the server
    environment, applied as Ollama starts llama-server, gives llama.cpp exactly the plan's overrides, KV types,
    flash attention, context and batch."""
    plan_path = tmp_path / "plan.json"
    r = run_cli("plan", olmoe_config, "--type", qtype, *BUDGET, "--json", plan_path)
    assert r.returncode == 0, r.stderr
    assert "server-wide" in r.stdout and "whole layers only, PARAMETER num_gpu" in r.stdout
    data = json.loads(plan_path.read_text())
    assert data["overrides"] and data["n_gpu_layers"] == OLMOE_1B_7B["num_hidden_layers"] + 1  # experts in RAM
    # the Modelfile for a GGUF (the tiny fixture stands in for the model file) with this plan
    (tmp_path / "ollama").mkdir()
    dest = tmp_path / "ollama" / "Modelfile"
    r = run_cli("modelfile", olmoe_gguf, "--plan", plan_path, "-o", dest)
    assert r.returncode == 0, r.stderr
    text = dest.read_text()
    params = modelfile_params(text)
    assert "num_gpu" not in params  # Ollama would pass -ngl: every offloaded layer's experts on the GPU
    assert params["num_ctx"] == [str(data["n_ctx"])] and params["num_batch"] == [str(data["n_batch"])]
    assert "Ollama >= 0.30" in text and "older ollama (its own runner)" in text.lower()
    lo = re.search(r"^# without ollama\.env .*PARAMETER num_gpu (\d+)", text, re.M)
    assert lo and int(lo.group(1)) == data["layers_only"]["n_gpu_layers"]
    env_file = dest.parent / "ollama.env"
    assert "server-wide" in r.stdout.lower() and str(env_file) in r.stdout
    env = sourced_env(env_file)
    assert env == data["ollama_env"]
    got = run_llama_args(llama_args, ollama_server_args(params, env), env, tmp_path)
    assert got["overrides"] == data["overrides"]  # same patterns, same order, CPU buffer
    assert (got["cache_type_k"], got["cache_type_v"]) == (data["type_k"], data["type_v"])
    assert got["flash_attn"] == ("enabled" if data["flash_attn"] else "disabled")
    assert (got["n_ctx"], got["n_batch"], got["n_ubatch"], got["n_parallel"]) == \
        (data["n_ctx"], data["n_batch"], data["n_ubatch"], 1)
    # no -ngl: n_gpu_layers stays -1, which llama_model::n_gpu_layers() takes as every layer: the plan's
    assert got["n_gpu_layers"] == -1 and not got["fit"]


def test_expert_overrides_off_layer_zero_travel_as_a_list(llama_args, tmp_path):
    """A plan whose experts in RAM do not start at layer 0 (partial offload) writes the layers and the override
    list itself; llama.cpp parses them back exactly."""
    from ggtool.plan.export import ollama_setup
    from ggtool.plan.search import expert_override_patterns

    plan_data = {"n_gpu_layers": 9, "n_ctx": 2048, "n_layer": 16, "type_k": "q4_0", "type_v": "q8_0",
                 "flash_attn": True, "n_batch": 256, "n_ubatch": 256,
                 "overrides": [{"pattern": p, "buffer": "CPU"} for p in expert_override_patterns((8, 9, 10))]}
    setup = ollama_setup(plan_data)
    assert "num_gpu" not in setup.parameters and setup.env["LLAMA_ARG_N_GPU_LAYERS"] == "9"
    assert "LLAMA_ARG_OVERRIDE_TENSOR" in setup.env and "LLAMA_ARG_N_CPU_MOE" not in setup.env
    from ggtool.plan.export import ollama_env_text

    (tmp_path / "ollama.env").write_text(ollama_env_text(setup, "m.gguf"))
    env = sourced_env(tmp_path / "ollama.env")
    params = {k: [str(v)] for k, v in setup.parameters.items()}
    got = run_llama_args(llama_args, ollama_server_args(params, env), env, tmp_path)
    assert got["overrides"] == plan_data["overrides"] and got["n_gpu_layers"] == 9
    assert (got["cache_type_k"], got["cache_type_v"], got["flash_attn"]) == ("q4_0", "q8_0", "enabled")
    assert (got["n_ctx"], got["n_batch"], got["n_ubatch"]) == (2048, 256, 256)


def test_plan_without_overrides_keeps_num_gpu(llama_args, tmp_path):
    """Every expert with its layer: num_gpu in the Modelfile (-ngl), no placement in the server environment."""
    from ggtool.plan.export import ollama_setup

    setup = ollama_setup({"n_gpu_layers": 5, "n_ctx": 1024, "n_layer": 16, "type_k": "f16", "type_v": "f16",
                          "flash_attn": False, "overrides": []})
    assert setup.parameters["num_gpu"] == 5
    assert not [k for k in setup.env if k.startswith("LLAMA_ARG_")]
    params = {k: [str(v)] for k, v in setup.parameters.items()}
    got = run_llama_args(llama_args, ollama_server_args(params, setup.env), setup.env, tmp_path)
    assert got["n_gpu_layers"] == 5 and got["overrides"] == [] and got["flash_attn"] == "disabled"


def test_layers_only_alternative_fits_and_is_slower(olmoe_config):
    """The plan without tensor overrides (whole layers, f16 KV: Ollama without server settings) fits the budget in
    the planner's model, and its predicted speed is given beside the expert plan's."""
    budget = Budget([Device("GPU0", 1 << 30, 300e9)], 6 << 30, 50e9, margin=0.10)
    r = plan(from_config(olmoe_config, "IQ3_M"), budget, 4096)
    lo = r.layers_only
    assert lo is not None and r.best.placement.cpu_expert_layers
    assert lo.fits and check_fit(lo.prediction, budget) == ""
    assert not lo.placement.cpu_expert_layers and (lo.placement.type_k, lo.placement.type_v) == ("f16", "f16")
    assert lo.placement.n_ctx == r.best.placement.n_ctx
    assert 0 < lo.tokens_per_s < r.best.tokens_per_s


def test_foreign_env_file_is_never_replaced(olmoe_config, olmoe_gguf, tmp_path):
    plan_path = tmp_path / "plan.json"
    assert run_cli("plan", olmoe_config, "--type", "IQ3_M", *BUDGET, "--json", plan_path).returncode == 0
    (tmp_path / "ollama.env").write_text("MY_SETTING=1\n")
    r = run_cli("modelfile", olmoe_gguf, "--plan", plan_path, "-o", tmp_path / "Modelfile")
    assert r.returncode == 1 and "not written by ggtool" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "ollama.env").read_text() == "MY_SETTING=1\n" and not (tmp_path / "Modelfile").exists()
    r = run_cli("modelfile", olmoe_gguf, "--plan", plan_path, "-o", tmp_path / "Modelfile", "--template", "go")
    assert r.returncode == 1  # still refused
