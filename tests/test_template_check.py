"""The three-engine template check on real templates: llama.cpp's models/templates/ (vendored source) and the
seed families' templates, through jinja2 (reference), llama.cpp's common/jinja and npm @huggingface/jinja."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ggtool.families.mixtral import NEO3_CHAT_TEMPLATE
from ggtool.families.ssmoelm import CHAT_TEMPLATE as SSMOELM_CHAT_TEMPLATE
from ggtool.fixtures import METIS_CHAT_TEMPLATE, TULU_TEMPLATE
from ggtool.llama.source import source_dir
from ggtool.template_check import ENGINES, HF_JINJA, LLAMA_CPP, check_template

from .conftest import run_cli

SEED_TEMPLATES = {"seed:SmartMoE (Tulu)": TULU_TEMPLATE, "seed:neo-3": NEO3_CHAT_TEMPLATE,
                  "seed:SSMoELM-it": SSMOELM_CHAT_TEMPLATE, "seed:Metis-1.5": METIS_CHAT_TEMPLATE}

# Outcomes that are not "same" (llama.cpp, @huggingface/jinja); every other template renders the probes exactly as
# jinja2 does in both engines. Measured with llama.cpp 0.3.36's common/jinja and @huggingface/jinja 0.5.11.
# Tool-use templates that need `tools` fail in jinja2 (transformers passes tools=None) while llama.cpp leaves tools
# undefined and renders; llama.cpp sets add_generation_prompt only when true, so templates defaulting an
# undefined one to true add a generation prompt; @huggingface/jinja's str.lstrip(chars) strips all whitespace.
EXPECTED_NOT_SAME: dict[str, tuple[str, str]] = {
    "ByteDance-Seed-OSS": ("same", "error"),  # Object keys must be strings
    "CohereForAI-c4ai-command-r-plus-tool_use": ("different", "same"),
    "MiniMax-M2": ("same", "different"),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": ("different", "same"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("different", "same"),
    "Qwen-QwQ-32B": ("same", "different"),
    "Qwen-Qwen3-0.6B": ("same", "different"),
    "Qwen3.5-4B": ("same", "different"),
    "Reka-Edge": ("same", "different"),
    "StepFun3.5-Flash": ("same", "different"),
    "fireworks-ai-llama-3-firefunction-v2": ("different", "same"),
    "inclusionai-ling-3.0-flash": ("same", "different"),
    "llama-cpp-rwkv-world": ("different", "same"),
    "meetkai-functionary-medium-v3.1": ("same", "error"),  # selectattr on none
    "openbmb-MiniCPM5-1B": ("same", "different"),
    "tencent-Hy3": ("same", "error"),  # calls str.format
    "unsloth-Apriel-1.5": ("same", "error"),  # length of an undefined value
    "upstage-Solar-Open-100B": ("different", "same"),
}


def all_templates() -> dict[str, str]:
    src = source_dir(download=False)
    assert src is not None, "the vendored llama.cpp source is missing: run `make install`"
    found = {p.stem: p.read_text(encoding="utf-8") for p in sorted((src / "models" / "templates").glob("*.jinja"))}
    assert len(found) >= 70
    return {**found, **SEED_TEMPLATES}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[str, str]]:
    table = {}
    for name, template in all_templates().items():
        check = check_template(template, "<s>", "</s>")
        table[name] = tuple(check.outcome(e).status for e in (LLAMA_CPP, HF_JINJA))
    return table


def test_outcome_table_per_engine(outcomes):
    not_same = {name: o for name, o in outcomes.items() if o != ("same", "same")}
    counts = {e: {s: sum(o[i] == s for o in outcomes.values()) for s in ("same", "different", "error")}
              for i, e in enumerate((LLAMA_CPP, HF_JINJA))}
    print(json.dumps({"counts": counts, "not_same": not_same}, indent=1))
    assert all("could not run" not in o for o in outcomes.values())  # make install prepared both engines
    assert not_same == EXPECTED_NOT_SAME
    assert all(outcomes[name] == ("same", "same") for name in SEED_TEMPLATES)


def test_missing_tools_are_reported_not_passed(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built or installed here
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, no node, no npm
    monkeypatch.delenv("CXX", raising=False)
    check = check_template(TULU_TEMPLATE, "<s>", "</s>")
    assert [o.status for o in check.outcomes] == ["could not run", "could not run"]
    assert "C++ compiler" in check.outcome(LLAMA_CPP).detail
    assert "npm" in check.outcome(HF_JINJA).detail or "Node" in check.outcome(HF_JINJA).detail
    assert not check.problems(()) and len(check.problems(ENGINES)) == 2


def test_convert_warns_and_export_lmstudio_refuses_a_template_huggingface_jinja_cannot_render(olmoe_checkpoint,
                                                                                              tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(olmoe_checkpoint, src)
    template = (source_dir(download=False) / "models" / "templates" / "ByteDance-Seed-OSS.jinja").read_text()
    (src / "chat_template.jinja").write_text(template, encoding="utf-8")
    bad = tmp_path / "seed-oss.gguf"
    r = run_cli("convert", src, "-o", bad)
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "@huggingface/jinja" in warned[0] and "Object keys must be strings" in warned[0]
    root = tmp_path / "models"
    r = run_cli("export", "lmstudio", bad, "--publisher", "me", "--model", "m", "--root", root)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "@huggingface/jinja" in r.stderr and "--force" in r.stderr
    assert not (root / "me" / "m").exists()
    r = run_cli("export", "lmstudio", bad, "--publisher", "me", "--model", "m", "--root", root, "--force")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "@huggingface/jinja" in r.stderr
    assert (root / "me" / "m" / bad.name).is_file()
    # publish: refused naming the engine, --force proceeds with the warning (dry run: the card only)
    ladder = tmp_path / "ladder"
    ladder.mkdir()
    os.link(bad, ladder / bad.name)
    r = run_cli("publish", ladder, "--repo", "me/x", "--dry-run", "--recommend", f"1 GiB={bad.name}")
    assert r.returncode == 1 and "@huggingface/jinja" in r.stderr and not (ladder / "README.md").exists()
    r = run_cli("publish", ladder, "--repo", "me/x", "--dry-run", "--recommend", f"1 GiB={bad.name}", "--force")
    assert r.returncode == 0 and "warning:" in r.stderr and (ladder / "README.md").is_file()
    # Ollama renders with llama.cpp's engine, which renders this template as jinja2 does: no refusal
    r = run_cli("modelfile", bad, "-o", tmp_path / "Modelfile")
    assert "llama.cpp" not in r.stderr


def test_modelfile_refuses_a_template_llama_cpp_renders_differently(olmoe_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(olmoe_checkpoint, src)
    template = (source_dir(download=False) / "models" / "templates" / "upstage-Solar-Open-100B.jinja").read_text()
    (src / "chat_template.jinja").write_text(template, encoding="utf-8")
    out = tmp_path / "solar.gguf"
    assert run_cli("convert", src, "-o", out).returncode == 0
    r = run_cli("modelfile", out, "-o", tmp_path / "Modelfile")
    assert r.returncode == 1 and "llama.cpp (Ollama" in r.stderr and "--force" in r.stderr
    assert not (tmp_path / "Modelfile").exists()
