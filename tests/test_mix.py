"""ggtool's own per-tensor mixes (issue 16): grouping, allocation, the command line on the OLMoE fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggtool.errors import GgtoolError
from ggtool.mix import Group, Sensitivities, allocate, group_of

from .conftest import run_cli

CALIBRATION = Path(__file__).resolve().parent.parent / "imatrix_data" / "calibration.txt"


def test_groups_are_per_layer_with_experts_per_projection():
    assert group_of("blk.3.attn_q.weight") == group_of("blk.3.attn_output.weight") == "blk.3.attn"
    assert group_of("blk.3.ffn_down_exps.weight") == "blk.3.ffn_down_exps"
    assert group_of("blk.3.ffn_up_shexp.weight") == group_of("blk.3.ffn_down_shexp.weight") == "blk.3.ffn_shexp"
    assert group_of("blk.3.attn_q_norm.weight") == "blk.3.attn_q_norm"  # not attention weights
    assert group_of("token_embd.weight") == "token_embd" and group_of("output.weight") == "output"


def test_allocation_is_the_best_mix_within_the_budget():
    """The knapsack against brute force over every combination, for several budgets."""
    import itertools

    gs = [Group(f"g{i}", {f"g{i}.weight": (256, n)}, {f"g{i}.weight": "F16"}) for i, n in enumerate((64, 128, 256))]
    kl = {"g0": {"IQ2_XXS": 0.05, "IQ4_XS": 0.01, "Q8_0": 0.001},
          "g1": {"IQ2_XXS": 0.02, "IQ4_XS": 0.004, "Q8_0": 0.0005},
          "g2": {"IQ2_XXS": 0.03, "IQ4_XS": 0.012, "Q8_0": 0.002}}
    sens = Sensitivities("m", kl, 100, 9, 1.0)
    for budget in (40_000, 60_000, 90_000, 200_000, 400_000):
        best = min((sum(kl[g.name][t] for g, t in zip(gs, combo)), combo)
                   for combo in itertools.product(*(kl[g.name] for g in gs))
                   if sum(g.bytes_at(t) for g, t in zip(gs, combo)) <= budget)
        got = allocate(gs, sens, budget)
        assert sum(g.bytes_at(got[g.name]) for g in gs) <= budget
        assert sum(kl[g][t] for g, t in got.items()) == pytest.approx(best[0])
    assert allocate(gs, sens, 400_000, fixed={"g2": "Q8_0"})["g2"] == "Q8_0"
    with pytest.raises(GgtoolError, match="no mix fits"):
        allocate(gs, sens, 1_000)


def test_quantize_target_bpw_from_the_command_line(tmp_path: Path, olmoe_gguf: Path, olmoe_imatrix: Path):
    """`quantize --target-bpw`: a table of the mix, the file within the target, an explicit --tensor-type still
    wins, the mix recorded as ggtool.mix.* keys, and a file llama.cpp loads and runs."""
    from ggtool.gguf_in import read_header
    from ggtool.llama.model import LlamaModel
    from ggtool.mix import read_mix
    from ggtool.quality import file_facts

    short = tmp_path / "calibration.txt"
    short.write_text(CALIBRATION.read_text()[:20_000])
    r = run_cli("quantize", olmoe_gguf, "--target-bpw", "6", "--imatrix", olmoe_imatrix, "--calibration", short,
                "--tensor-type", "output=q8_0", "--mix-types", "Q4_0,Q4_K,Q5_K,Q8_0", "-o", tmp_path / "out",
                "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "blk.0.ffn_gate_exps" in r.stdout and "calibration KL" in r.stdout
    (path,) = (tmp_path / "out").glob("*-MIX-*BPW.gguf")
    facts = file_facts(path)
    assert 5.7 < facts.bpw <= 6.0, facts
    types = {t.name: t.type.name for t in read_header(path).tensors}
    assert types["output.weight"] == types["blk.0.attn_output.weight"] == "Q8_0"  # the user's regex, everywhere
    mix = read_mix(path)
    assert mix["type.output"] == "Q8_0" and facts.type == mix["label"]
    assert set(types[f"blk.{i}.ffn_down_exps.weight"] for i in range(3)) <= {"Q4_0", "Q8_0"}  # 128 wide: no K
    assert {v for k, v in mix.items() if k.startswith("type.blk.")} - {"Q8_0"}  # not everything at one type
    assert types["blk.0.ffn_down_exps.weight"] == mix["type.blk.0.ffn_down_exps"]
    with LlamaModel(path) as m:
        assert len(m.generate(m.tokenize("def main():"), 4)) > 0

    # the planner's predicted buffers for a mixed file: within 5% of what llama.cpp allocates
    from ggtool.plan.memory import Placement

    from .test_plan import check_predictions, start_rpc_server

    proc, endpoint = start_rpc_server()
    try:
        for p in (Placement(99, 512, "f16", "f16", False, ()), Placement(2, 1024, "q8_0", "f16", False, (0, 1))):
            check_predictions(path, p, endpoint)
    finally:
        proc.kill()
        proc.wait()

    both = run_cli("quantize", olmoe_gguf, "--target-bpw", "4", "--target-size", "3MiB", "-o", tmp_path / "x")
    assert both.returncode == 2 and "Traceback" not in both.stderr
    for size in ("100KiB", "1MiB"):  # no room at all / less than the smallest types need: refused before measuring
        small = run_cli("quantize", olmoe_gguf, "--target-size", size, "--imatrix", olmoe_imatrix, "-o",
                        tmp_path / "y")
        assert small.returncode == 1 and "--target-size" in small.stderr and "Traceback" not in small.stderr


def test_one_worker_serves_many_quantizations(tmp_path: Path, olmoe_gguf: Path):
    """worker.Session (the mix's sensitivity passes): one process for a series of llama_model_quantize calls, a
    failure answered without ending it, the process gone when the block ends."""
    from ggtool.llama.quantize import quantize_file
    from ggtool.llama.ggml_types import FILE_TYPES
    from ggtool.llama.worker import Session

    def ftype_id(name: str) -> int:
        return FILE_TYPES[name]

    with Session() as s:
        quantize_file(olmoe_gguf, tmp_path / "a.gguf", ftype_id("Q8_0"), session=s)
        pid = s.proc.pid
        with pytest.raises(GgtoolError, match="could not quantize"):
            quantize_file(tmp_path / "missing.gguf", tmp_path / "b.gguf", ftype_id("Q8_0"), session=s)
        quantize_file(olmoe_gguf, tmp_path / "c.gguf", ftype_id("Q4_0"), session=s)
        assert s.proc.pid == pid
        proc = s.proc
    assert proc.poll() is not None and s.proc is None
    assert (tmp_path / "a.gguf").stat().st_size > (tmp_path / "c.gguf").stat().st_size > 0
