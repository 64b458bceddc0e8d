"""The placement planner against llama.cpp's own allocations, with a loopback RPC server standing in for a GPU."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ggtool.convert import convert
from ggtool.llama.model import ContextOptions, LlamaModel, log_lines
from ggtool.quantize import quantize_one
from ggtool.plan.memory import Device, Placement, from_config, predict, read_gguf
from ggtool.plan.search import Budget, expert_override_patterns, plan

from .conftest import run_cli

MiB = 1 << 20
LOG_ROUNDING = 0.005 * MiB  # llama.cpp logs sizes in MiB with two decimals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_rpc_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ggtool.cli", "rpc-server", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def rpc_endpoint():
    """A loopback RPC device for in-process loads (it serves one client at a time)."""
    proc, endpoint = start_rpc_server()
    yield endpoint
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def rpc_endpoint_cli():
    """A second server for subprocess runs, so they never wait on this process's connection."""
    proc, endpoint = start_rpc_server()
    yield endpoint
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def tiny_gguf(olmoe_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The fixture OLMoE as f16 and quantized with llama.cpp's recipes."""
    folder = tmp_path_factory.mktemp("plan")
    f16 = convert(olmoe_checkpoint, folder / "f16.gguf", "f16").dest
    return {"F16": f16, **{t: quantize_one(f16, folder / f"{t}.gguf", t, nthread=1).path
                           for t in ("Q4_K_M", "Q8_0")}}


def logged_sizes(lines: list[str]) -> dict[tuple[str, str], float]:
    """(buffer, kind) → bytes from llama.cpp's "<buffer> <kind> buffer size = X MiB" lines."""
    out: dict[tuple[str, str], float] = {}
    for line in lines:
        m = re.search(r"(\S+?)(?:\[[^\]]*\])?\s+(model|KV|compute|output) buffer size = +([\d.]+) MiB", line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3)) * MiB
    return out


# (quant type, placement): full offload, experts on the CPU, partial layers; f16/q8_0/q4_0 caches; FA off/on;
# every layer on the host with only the output offloaded, without and with FA on a quantized (Hadamard-rotated)
# cache, and a layer's experts on the host under full offload with FA (the cases a phase-by-phase estimate
# missed by 10-20%)
CASES = [
    ("Q4_K_M", Placement(99, 512, "f16", "f16", False, ())),
    ("Q4_K_M", Placement(99, 2048, "q8_0", "f16", False, (0, 1, 2))),
    ("Q8_0", Placement(2, 4096, "q4_0", "q4_0", True, (), 512, 256)),
    ("F16", Placement(3, 1024, "f16", "f16", True, (1,))),
    ("F16", Placement(1, 1024, "f16", "f16", False, ())),
    ("Q8_0", Placement(1, 512, "q8_0", "q8_0", True, ())),
    ("Q4_K_M", Placement(99, 512, "q8_0", "q8_0", True, (0,))),
]


@pytest.fixture(scope="session")
def default_gguf(tmp_path_factory) -> dict[str, Path]:
    """The embedded default model (hidden 256, vocab 4096, trained) as f16 and at two K-quants."""
    from ggtool import DEFAULT_MODEL

    folder = tmp_path_factory.mktemp("plan-default")
    f16 = convert(DEFAULT_MODEL, folder / "f16.gguf", "f16").dest
    return {"F16": f16, **{t: quantize_one(f16, folder / f"{t}.gguf", t, nthread=1).path
                           for t in ("Q4_K_M", "Q3_K_M")}}


# the default model as `ggtool plan` places it (full offload, flash attention, quantized cache, long context)
# and with experts and layers left on the host
DEFAULT_CASES = [
    ("Q4_K_M", Placement(99, 4096, "q4_0", "q4_0", True, ())),
    ("Q3_K_M", Placement(99, 4096, "q8_0", "q8_0", True, (1, 2))),
    ("F16", Placement(2, 2048, "f16", "f16", False, (3,))),
    ("Q3_K_M", Placement(2, 4096, "q4_0", "q4_0", True, (), 512, 256)),
    ("F16", Placement(2, 1024, "f16", "f16", True, (1,))),
]


@pytest.mark.parametrize("qtype,placement", CASES, ids=["full", "experts-cpu", "partial-fa", "partial+experts",
                                                         "output-only", "output-only-fa-q8_0", "experts-cpu-fa-q8_0"])
def test_predictions_match_llama_cpp(tiny_gguf, rpc_endpoint, qtype, placement):
    check_predictions(tiny_gguf[qtype], placement, rpc_endpoint)


@pytest.mark.parametrize("qtype,placement", DEFAULT_CASES, ids=["full-fa-q4_0", "experts-cpu-q8_0", "partial-f16",
                                                                 "partial-fa-q4_0-ub256", "partial+experts-fa"])
def test_predictions_match_llama_cpp_on_the_default_model(default_gguf, rpc_endpoint, qtype, placement):
    check_predictions(default_gguf[qtype], placement, rpc_endpoint)


def check_predictions(path: Path, p: Placement, rpc_endpoint: str) -> None:
    """Every buffer llama.cpp logs, on the RPC device and on the host, within 5% of the prediction."""
    overrides = [(pat, "CPU") for pat in expert_override_patterns(p.cpu_expert_layers)]
    with LlamaModel(path, p.n_gpu_layers, rpc_servers=[rpc_endpoint], overrides=overrides) as model:
        model.reserve(ContextOptions(n_ctx=p.n_ctx, n_batch=p.n_batch, n_ubatch=p.n_ubatch, type_k=p.type_k,
                                     type_v=p.type_v, flash_attn=p.flash_attn))
        logged = logged_sizes(log_lines())
    pred = predict(read_gguf(path), p, [Device("RPC0", 1 << 30, kind="rpc", align=32)])
    dev, host = pred.devices["RPC0"], pred.host
    checks = {
        "device model": (dev.model, logged.get(("RPC0", "model"), 0)),
        "device KV": (dev.kv, logged.get(("RPC0", "KV"), 0)),
        "device compute": (dev.compute, logged.get(("RPC0", "compute"), 0)),
        "host model": (host.logged_model,
                       logged.get(("CPU_Mapped", "model"), 0) + logged.get(("CPU_REPACK", "model"), 0)),
        "host KV": (host.kv, logged.get(("CPU", "KV"), 0)),
        "host compute": (host.compute, logged.get(("CPU", "compute"), 0)),
        "host output": (host.output, logged.get(("CPU", "output"), 0)),
    }
    for what, (predicted, actual) in checks.items():
        assert abs(predicted - actual) <= max(0.05 * actual, LOG_ROUNDING), \
            f"{what}: predicted {predicted / MiB:.3f} MiB, llama.cpp {actual / MiB:.3f} MiB"
    # the cases must exercise both sides
    assert checks["device model"][1] > 0 and checks["host model"][1] > 0 and checks["device compute"][1] > 0


def test_overrides_move_expert_tensors_to_cpu(tiny_gguf, rpc_endpoint):
    path = tiny_gguf["Q8_0"]
    sizes = {}
    for layers in ((), (0, 2)):
        overrides = [(pat, "CPU") for pat in expert_override_patterns(layers)]
        with LlamaModel(path, 99, rpc_servers=[rpc_endpoint], overrides=overrides):
            lines = log_lines()
        moved = {m.group(1) for ln in lines if (m := re.search(r"tensor (\S+) .*buffer type overridden to CPU", ln))}
        expected = {f"blk.{il}.ffn_{w}_exps.weight" for il in layers for w in ("up", "down", "gate")}
        assert moved == expected
        sizes[layers] = logged_sizes(lines)[("RPC0", "model")]
    shape = read_gguf(path)
    moved_bytes = sum(t.n_bytes for t in shape.tensors if t.is_expert and t.layer in (0, 2))
    assert sizes[()] - sizes[(0, 2)] == pytest.approx(moved_bytes, rel=0.05)


@pytest.mark.parametrize("qtype", ["IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M"])
def test_olmoe_1b7b_fits_1gib_vram_6gib_ram(tmp_path, qtype):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "olmoe", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
        "num_key_value_heads": 16, "intermediate_size": 1024, "num_experts": 64, "num_experts_per_tok": 8,
        "vocab_size": 50304, "max_position_embeddings": 4096, "tie_word_embeddings": False}))
    shape = from_config(tmp_path, qtype)
    assert 2.0 < shape.weight_bytes / 2**30 < 4.2  # the card's file sizes: 2.3 GB (IQ2_M) .. 4.0 GB (Q4_K_M)
    budget = Budget([Device("GPU0", 1 << 30, 300e9)], 6 << 30, 50e9, margin=0.10)
    r = plan(shape, budget, 4096)
    p, pred = r.best.placement, r.best.prediction
    assert p.n_ctx == 4096
    assert pred.devices["GPU0"].total <= (1 << 30) * 0.9
    assert pred.host.total <= 6 << 30
    # KV cache and every non-expert weight on the device (they fit): all layers offloaded, only experts in RAM
    assert p.n_gpu_layers == shape.n_layer + 1 and pred.host.kv == 0
    host_tensors = [t.name for t in shape.tensors if t.layer is not None and not t.is_expert
                    and pred.layer_device[t.layer] == "CPU"]
    assert host_tensors == []


def test_what_if_shapes_are_the_converted_files(olmoe_checkpoint, tiny_gguf):
    """The config.json path asks the family: the tensors, shapes and types convert (+ quantize) writes."""
    for qtype in ("F16", "Q8_0"):
        want = {t.name: (t.type, t.shape, t.n_bytes) for t in read_gguf(tiny_gguf[qtype]).tensors}
        got = {t.name: (t.type, t.shape, t.n_bytes) for t in from_config(olmoe_checkpoint, qtype).tensors}
        assert got == want


def test_what_if_of_an_unconverted_family_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                      "hidden_size": 256, "num_hidden_layers": 2}))
    r = run_cli("plan", tmp_path, "--type", "Q4_K_M", "--ram", "1GiB")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "LlamaForCausalLM" in r.stderr and "supported families" in r.stderr and "OLMoE" in r.stderr


def test_budget_too_small_names_the_smallest(tiny_gguf):
    r = run_cli("plan", tiny_gguf["Q4_K_M"], "--ram", "4MiB")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    m = re.search(r"--ram ([\d.]+)GiB", r.stderr)
    assert m, r.stderr
    need = float(m.group(1)) * 2**30
    ok = run_cli("plan", tiny_gguf["Q4_K_M"], "--ram", f"{need / MiB + 1:.0f}MiB")
    assert ok.returncode == 0, ok.stderr


def test_plan_json_and_run_with_it(tiny_gguf, rpc_endpoint_cli, tmp_path):
    out = tmp_path / "plan.json"
    r = run_cli("plan", tiny_gguf["Q4_K_M"], "--ram", "1GiB", "--device", f"{rpc_endpoint_cli}=32MiB@500",
                "--ctx", "512", "--json", out)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    for key in ("model", "n_gpu_layers", "n_ctx", "type_k", "type_v", "flash_attn", "overrides", "rpc", "predicted"):
        assert key in data
    assert data["rpc"] == [rpc_endpoint_cli] and data["n_gpu_layers"] > 0
    assert "-ngl" in r.stdout and "--rpc" in r.stdout and "num_gpu" in r.stdout
    run = run_cli("run", tiny_gguf["Q4_K_M"], "--plan", out, "-p", "def main", "-n", "8", "--chat", "--greedy")
    assert run.returncode == 0, run.stderr
    assert re.search(r"8 generated, [\d.]+ tokens/s", run.stdout), run.stdout
    assert rpc_endpoint_cli in run.stdout


def test_unreachable_rpc_host_is_a_clear_error(tiny_gguf):
    r = run_cli("run", tiny_gguf["Q4_K_M"], "--rpc", f"127.0.0.1:{free_port()}", "-n", "2")
    assert r.returncode == 1
    assert "unreachable" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="session")
def rpc_endpoint_2():
    """A second in-process device, for placements over several hosts."""
    proc, endpoint = start_rpc_server()
    yield endpoint
    proc.kill()
    proc.wait()


def test_two_devices_split_layers_as_predicted(tiny_gguf, rpc_endpoint, rpc_endpoint_2):
    check_two_devices(tiny_gguf["Q8_0"], Placement(99, 1024, "f16", "f16", False, (), tensor_split=(1.0, 3.0)),
                      rpc_endpoint, rpc_endpoint_2)


def check_two_devices(path: Path, p: Placement, rpc_endpoint: str, rpc_endpoint_2: str) -> None:
    """Layers split over two RPC devices (pipeline parallelism): each device's buffers and the host's within 5%."""
    with LlamaModel(path, p.n_gpu_layers, rpc_servers=[rpc_endpoint, rpc_endpoint_2],
                    tensor_split=p.tensor_split) as model:
        model.reserve(ContextOptions(n_ctx=p.n_ctx, n_batch=p.n_batch, n_ubatch=p.n_ubatch, type_k=p.type_k,
                                     type_v=p.type_v, flash_attn=p.flash_attn))
        lines = log_lines()
    logged: dict[tuple[str, str], float] = {}
    for line in lines:
        m = re.search(r"RPC\d+\[([^\]]+)\]\s+(model|KV|compute) buffer size = +([\d.]+) MiB", line)
        if m:
            logged[(m.group(1), m.group(2))] = float(m.group(3)) * MiB
    host = logged_sizes(lines)
    devices = [Device(ep, 1 << 30, kind="rpc", align=32) for ep in (rpc_endpoint, rpc_endpoint_2)]
    pred = predict(read_gguf(path), p, devices)
    assert set(pred.layer_device.values()) == {rpc_endpoint, rpc_endpoint_2}
    for d in devices:
        u = pred.devices[d.name]
        for kind, predicted in (("model", u.model), ("KV", u.kv), ("compute", u.compute)):  # noqa: B007
            actual = logged.get((d.name, kind), 0)
            assert abs(predicted - actual) <= max(0.05 * actual, LOG_ROUNDING), \
                f"{d.name} {kind}: predicted {predicted / MiB:.3f} MiB, llama.cpp {actual / MiB:.3f} MiB"
    h = pred.host
    for what, predicted, actual in (("host compute", h.compute, host[("CPU", "compute")]),
                                    ("host model", h.logged_model, host[("CPU_Mapped", "model")])):
        assert abs(predicted - actual) <= max(0.05 * actual, LOG_ROUNDING), \
            f"{what}: predicted {predicted / MiB:.3f} MiB, llama.cpp {actual / MiB:.3f} MiB"


def test_recommend_picks_the_largest_variant_that_fits(tiny_gguf):
    from ggtool.plan.search import recommend

    paths = list(tiny_gguf.values())
    cpu_only = Budget([], 64 << 30)
    host_q8 = plan(read_gguf(tiny_gguf["Q8_0"]), cpu_only, 4096).best.prediction.host.total
    host_f16 = plan(read_gguf(tiny_gguf["F16"]), cpu_only, 4096).best.prediction.host.total
    assert host_f16 > host_q8
    just_q8 = int(host_q8 / (1 - cpu_only.ram_margin)) + (1 << 16)  # Q8_0 fits, F16 does not
    assert just_q8 < host_f16
    picks = dict(recommend(paths, {"big": (0, 64 << 30), "q8": (0, just_q8), "none": (0, 1 << 20)}))
    assert picks == {"big": tiny_gguf["F16"].name, "q8": tiny_gguf["Q8_0"].name}


def test_layers_only_alternative_matches_llama_cpp(tiny_gguf, rpc_endpoint):
    """The plan Ollama users get without server settings (whole layers, f16 KV, no overrides) fits its budget in the
    planner's model, and that model matches llama.cpp's buffers within 5% for it."""
    path = tiny_gguf["Q8_0"]
    shape = read_gguf(path)
    found = None
    # the smallest device on which experts go to RAM and layers-only offloads some repeating layers, not all
    # (not ngl 1, the output layer alone: there the planner's device compute buffer is 15% under llama.cpp's, an
    # open gap of the memory model outside this check)
    for mib in range(2, 64):
        budget = Budget([Device("RPC0", mib * MiB, 500e9, "rpc", 32)], 1 << 30, 50e9, margin=0.10)
        r = plan(shape, budget, 1024)
        lo = r.layers_only
        if r.best.placement.cpu_expert_layers and lo and 1 < lo.placement.n_gpu_layers < shape.n_layer + 1:
            found = (r, lo)
            break
    assert found, "no budget gives an expert plan with a partial layers-only alternative"
    r, lo = found
    assert lo.fits and not lo.placement.cpu_expert_layers and lo.placement.type_k == "f16"
    assert lo.tokens_per_s < r.best.tokens_per_s
    check_predictions(path, lo.placement, rpc_endpoint)
