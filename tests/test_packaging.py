"""The package as a user installs it (`pip install .`, no extras) runs every command it declares.

`make install` keeps that installation in .venv-min (reinstalled whenever the source changes); the tests
build the checkpoints here, with the test extra, and run `ggtool` from .venv-min on them, so a runtime
import pyproject.toml does not declare (sentencepiece for neo-3's vocabulary, yaml for LM Studio) fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from ggtool import fixtures

from .conftest import CliResult

ROOT = Path(__file__).resolve().parents[1]
VENV_MIN = Path(os.environ.get("GGTOOL_VENV_MIN", ROOT / ".venv-min"))
VERIFY_ONLY = ("torch", "transformers", "safetensors")  # the verify / test extras, not runtime


def min_python() -> Path:
    python = VENV_MIN / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{VENV_MIN}: no virtual environment with the plain package; `make install` creates it")
    return python


def run_min(*args, cwd: Path | None = None) -> CliResult:
    """`ggtool ARGS` with the .venv-min installation, as a user who ran `pip install ggtool` would."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(VENV_MIN / "bin" / "ggtool"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or VENV_MIN, env={**env, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def installed() -> Path:
    """The .venv-min installation: current with this source tree, and without the verify/test extras."""
    python = min_python()
    probe = ("import importlib.util as u, pathlib, ggtool; print(pathlib.Path(ggtool.__file__).parent); "
             f"print(','.join(m for m in {VERIFY_ONLY!r} if u.find_spec(m)))")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=VENV_MIN,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    where, extras = proc.stdout.splitlines()
    package = Path(where)
    assert package.resolve() != (ROOT / "ggtool").resolve(), "the plain install must be a copy, not this checkout"
    assert extras == "", f"{VENV_MIN} has {extras}, which only the verify/test extras should bring"
    stale = [p.relative_to(ROOT / "ggtool") for p in sorted((ROOT / "ggtool").rglob("*.py"))
             if not (package / p.relative_to(ROOT / "ggtool")).is_file()
             or _digest(package / p.relative_to(ROOT / "ggtool")) != _digest(p)]
    if stale:
        pytest.fail(f"{VENV_MIN} holds an older ggtool ({stale[0]} differs): run `make install`")
    return package


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, olmoe_checkpoint) -> dict[str, Path]:
    """One small checkpoint per family (built with the test extra)."""
    base = tmp_path_factory.mktemp("families")
    spm = fixtures.train_spm_tokenizer(base / "spm", vocab_size=1000, n_chars=100_000)
    metis_tok = fixtures.train_metis_tokenizer(base / "metis-tok")
    bpe = fixtures.train_byte_fallback_bpe(base / "ss-tok")
    return {
        "olmoe": olmoe_checkpoint,
        "neo-3": fixtures.make_mixtral(base / "neo3-tiny", spm, seed=4, vocab_size=1000, hidden_size=128,
                                       intermediate_size=64, experts=4, layers=2),
        "ssmoelm": fixtures.make_ssmoelm(base / "SSMoELM-it", bpe, layers=3, d_model=128, heads=4, kv_heads=2,
                                         head_dim=32, experts=4, d_ff=64, d_ff_shared=64),
        "metis": fixtures.make_metis(base / "Metis-tiny", metis_tok),
    }


@pytest.fixture(scope="module")
def converted(installed, checkpoints, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("min-gguf")
    paths = {}
    for name, src in checkpoints.items():
        dest = out / f"{name}-f16.gguf"
        r = run_min("convert", src, "-o", dest)
        assert r.returncode == 0, f"convert {name} without extras: {r.stderr}"
        assert dest.stat().st_size > 0
        paths[name] = dest
    return paths


def test_convert_every_family_without_extras(converted, checkpoints):
    assert set(converted) == set(checkpoints) == {"olmoe", "neo-3", "ssmoelm", "metis"}
    r = run_min("inspect", converted["neo-3"])
    assert r.returncode == 0 and "llama.expert_count" in r.stdout, r.stderr  # the SentencePiece family
    assert "tokenizer.ggml.model" in r.stdout and "llama" in r.stdout


def test_commands_without_extras(converted, checkpoints, tmp_path):
    gguf_path = converted["olmoe"]
    r = run_min("inspect", gguf_path)
    assert r.returncode == 0 and "olmoe.expert_count" in r.stdout, r.stderr
    r = run_min("plan", gguf_path, "--ram", "1GiB", "--json", tmp_path / "plan.json")
    assert r.returncode == 0 and "llama.cpp:" in r.stdout and (tmp_path / "plan.json").is_file(), r.stderr
    r = run_min("plan", checkpoints["neo-3"], "--type", "Q4_K_M", "--ram", "1GiB")  # the what-if path
    assert r.returncode == 0 and "llama.cpp:" in r.stdout, r.stderr
    r = run_min("quantize", gguf_path, "--types", "Q4_K_M", "-o", tmp_path / "q")
    quantized = sorted((tmp_path / "q").glob("*Q4_K_M.gguf"))
    assert r.returncode == 0 and len(quantized) == 1, r.stderr
    r = run_min("modelfile", quantized[0], "--plan", tmp_path / "plan.json", "-o", tmp_path / "Modelfile")
    assert r.returncode == 0 and "TEMPLATE" in (tmp_path / "Modelfile").read_text(), r.stderr
    r = run_min("export", "lmstudio", gguf_path, quantized[0], "--publisher", "ggtool", "--model", "OLMoE-tiny-GGUF",
                "--root", tmp_path / "lms", "--copy",
                "--hub-repo", "me/OLMoE-tiny-GGUF")  # model.yaml (yaml at run time) is written for a Hub repo only
    assert r.returncode == 0 and (tmp_path / "lms" / "ggtool" / "OLMoE-tiny-GGUF" / "model.yaml").is_file(), r.stderr


def test_verify_names_the_extra(converted, checkpoints):
    """OLMoE's reference is transformers' own class, in the `verify` extra: one line saying how to install it."""
    r = run_min("verify", checkpoints["olmoe"], converted["olmoe"])
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'ggtool[verify]'" in lines[0], lines[0]


def test_verify_of_a_numpy_reference_family_needs_no_extra(converted, checkpoints):
    """Metis's reference is ggtool's own numpy forward: verify works on a plain install."""
    r = run_min("verify", checkpoints["metis"], converted["metis"])
    assert r.returncode == 0 and "verify passed" in r.stdout, r.stdout + r.stderr
