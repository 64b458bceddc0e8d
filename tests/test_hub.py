"""Hub in and out, offline: a local folder laid out as the Hub cache (HF_HUB_OFFLINE=1), and uploads checked at
huggingface_hub's API boundary (a stand-in HfApi recording calls)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ggtool.errors import GgtoolError
from tests.conftest import run_cli

REV = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo: str, files: dict[str, Path | str]) -> Path:
    """`root` laid out as huggingface_hub's cache for `repo` at revision REV (refs/main -> REV)."""
    base = root / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / REV
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(REV)
    for name, src in files.items():
        if isinstance(src, Path):
            shutil.copyfile(src, snap / name)
        else:
            (snap / name).write_text(src)
    return snap


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_convert_from_hub_cache_equals_convert_from_folder(olmoe_checkpoint, offline_cache, tmp_path):
    hub_cache(offline_cache, "testorg/olmoe-tiny", {p.name: p for p in olmoe_checkpoint.iterdir() if p.is_file()})
    assert olmoe_checkpoint.name == "olmoe-tiny"
    a, b = tmp_path / "from-folder.gguf", tmp_path / "from-hub.gguf"
    assert run_cli("convert", olmoe_checkpoint, "-o", a).returncode == 0
    r = run_cli("convert", "testorg/olmoe-tiny", "-o", b)
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    r = run_cli("convert", f"testorg/olmoe-tiny@{REV}", "-o", tmp_path / "by-rev.gguf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "by-rev.gguf").read_bytes() == a.read_bytes()


def test_missing_weights_and_uncached_repo_are_clear(olmoe_checkpoint, offline_cache, tmp_path):
    hub_cache(offline_cache, "testorg/no-weights",
              {p.name: p for p in olmoe_checkpoint.iterdir() if p.is_file() and p.suffix != ".safetensors"})
    r = run_cli("convert", "testorg/no-weights", "-o", tmp_path / "x.gguf")
    assert r.returncode == 1 and "missing *.safetensors" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("convert", "testorg/never-downloaded", "-o", tmp_path / "y.gguf")
    assert r.returncode == 1 and "not in the local Hugging Face cache" in r.stderr and "no such folder" in r.stderr
    assert not list(tmp_path.glob("*.gguf"))


def test_remote_code_model_is_refused_by_name(olmoe_checkpoint, offline_cache, tmp_path):
    config = {"architectures": ["FancyMoEForCausalLM"], "model_type": "fancy_moe",
              "auto_map": {"AutoConfig": "configuration_fancy.FancyConfig",
                           "AutoModelForCausalLM": "modeling_fancy.FancyMoEForCausalLM"}}
    files = {p.name: p for p in olmoe_checkpoint.iterdir() if p.is_file() and p.name != "config.json"}
    snap = hub_cache(offline_cache, "testorg/fancy", {**files, "config.json": json.dumps(config),
                                                      "modeling_fancy.py": "raise SystemExit('executed!')\n"})
    r = run_cli("convert", "testorg/fancy", "-o", tmp_path / "f.gguf")
    assert r.returncode == 1 and "never runs remote code" in r.stderr and "fancy_moe" in r.stderr
    assert "executed!" not in r.stderr + r.stdout and (snap / "modeling_fancy.py").exists()


def test_allow_patterns_cover_conversion_inputs_only():
    from fnmatch import fnmatch

    from ggtool.hub_download import ALLOW_PATTERNS

    def allowed(name: str) -> bool:
        return any(fnmatch(name, p) for p in ALLOW_PATTERNS)

    for name in ("config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                 "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "generation_config.json",
                 "special_tokens_map.json", "chat_template.jinja",
                 "README.md"):  # the model card: convert takes general.name, license and tags from it
        assert allowed(name), name
    for name in ("pytorch_model.bin", "modeling_fancy.py", "configuration_fancy.py", "model.onnx"):
        assert not allowed(name), name


class RecordingApi:
    """A stand-in for huggingface_hub.HfApi at its API boundary: records what publish asks of the Hub."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_commit(self, repo_id, operations, commit_message, **kw):
        self.calls.append(("create_commit", repo_id, [(op.path_in_repo, op.path_or_fileobj) for op in operations]))


@pytest.fixture()
def ladder(tmp_path) -> Path:
    folder = tmp_path / "ladder"
    folder.mkdir()
    for name, size in (("OLMoE-tiny-Q4_K_M.gguf", 3 * 2**20), ("OLMoE-tiny-IQ3_M.gguf", 2 * 2**20)):
        (folder / name).write_bytes(b"GGUF" + b"\0" * (size - 4))
    (folder / "Modelfile").write_text("FROM ./OLMoE-tiny-IQ3_M.gguf\n")
    (folder / "notes.txt").write_text("not published")
    quality = {"base": "OLMoE-tiny-F16.gguf", "text": "wiki.test.raw", "n_tokens": 4096,
               "variants": [{"file": "OLMoE-tiny-IQ3_M.gguf", "type": "IQ3_M", "size_bytes": 2 * 2**20, "bpw": 3.66,
                             "ppl": 12.5, "kl_mean": 0.0412, "kl_p99": 0.51, "top1": 0.912},
                            {"file": "OLMoE-tiny-Q4_K_M.gguf", "type": "Q4_K_M", "size_bytes": 3 * 2**20,
                             "bpw": 4.89, "ppl": 12.1, "kl_mean": 0.0123, "kl_p99": 0.17, "top1": 0.955}]}
    (folder / "quality.json").write_text(json.dumps(quality))
    return folder


def test_publish_uploads_ladder_and_card_in_one_commit(ladder):
    from ggtool.hub import publish

    api = RecordingApi()
    before = sorted(p.name for p in ladder.iterdir())
    r = publish(ladder, "me/OLMoE-tiny-GGUF", api=api,
                recommendations=[("1 GiB VRAM + 6 GiB RAM", "OLMoE-tiny-IQ3_M.gguf"),
                                 ("8 GiB VRAM", "OLMoE-tiny-Q4_K_M.gguf")])
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][1] == "me/OLMoE-tiny-GGUF" and api.calls[0][2]["exist_ok"] is True
    uploaded = dict(api.calls[1][2])
    assert sorted(uploaded) == ["Modelfile", "OLMoE-tiny-IQ3_M.gguf", "OLMoE-tiny-Q4_K_M.gguf", "README.md",
                                "quality.json"]
    card = uploaded["README.md"].decode()
    assert "| `OLMoE-tiny-IQ3_M.gguf` | IQ3_M | 2.0 MiB | 3.66 | 0.0412 | 0.5100 | 91.2% | 12.500 |" in card
    assert "| 1 GiB VRAM + 6 GiB RAM | `OLMoE-tiny-IQ3_M.gguf` |" in card
    assert "ollama create" in card and "llama-cli -hf me/OLMoE-tiny-GGUF" in card
    assert "ollama run hf.co/me/OLMoE-tiny-GGUF:IQ3_M" in card
    with pytest.raises(GgtoolError, match="not in"):
        publish(ladder, "me/x", api=RecordingApi(), recommendations=[("2 GiB", "missing.gguf")])
    assert sorted(p.name for p in ladder.iterdir()) == before  # the input folder is not modified
    assert r.files[-1] == "README.md"


def test_publish_refusals(ladder, tmp_path):
    from ggtool.hub import publish

    with pytest.raises(GgtoolError, match="no .gguf files"):
        publish(_empty(tmp_path), "me/x", api=RecordingApi())
    with pytest.raises(GgtoolError, match="not a Hub repo id"):
        publish(ladder, "not a repo", api=RecordingApi())


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_publish_dry_run_writes_the_card(ladder):
    r = run_cli("publish", ladder, "--repo", "me/OLMoE-tiny-GGUF", "--dry-run",
                "--recommend", "1 GiB VRAM + 6 GiB RAM=OLMoE-tiny-IQ3_M.gguf")
    assert r.returncode == 0, r.stderr
    card = (ladder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: gguf") and "| `OLMoE-tiny-Q4_K_M.gguf` | Q4_K_M |" in card
    assert "| 1 GiB VRAM + 6 GiB RAM | `OLMoE-tiny-IQ3_M.gguf` |" in card


@pytest.fixture(scope="module")
def real_ladder(olmoe_checkpoint, olmoe_imatrix, tmp_path_factory) -> Path:
    """A ladder of real GGUFs: converted from a checkpoint whose card names a license, quantized with an imatrix."""
    from ggtool.convert import convert
    from ggtool.quantize import quantize_one

    src = tmp_path_factory.mktemp("card-src") / "olmoe-tiny"
    src.mkdir()
    for f in olmoe_checkpoint.iterdir():
        (src / f.name).symlink_to(f)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# olmoe-tiny\n")
    folder = tmp_path_factory.mktemp("card-ladder")
    f16 = convert(src, folder / "olmoe-tiny-F16.gguf", "f16").dest
    q = quantize_one(f16, folder / "olmoe-tiny-Q4_K_M.gguf", "Q4_K_M", olmoe_imatrix, nthread=1).path
    quality = {"base": f16.name, "text": "heldout.txt", "n_tokens": 1024,
               "variants": [{"file": q.name, "type": "Q4_K_M", "size_bytes": q.stat().st_size, "bpw": 4.9,
                             "ppl": 20.5, "kl_mean": 0.0123, "kl_p99": 0.17, "top1": 0.955}]}
    (folder / "quality.json").write_text(json.dumps(quality))
    return folder


def test_card_front_matter_parses_as_hub_metadata(real_ladder):
    """The card's front matter is what the Hub reads (huggingface_hub's ModelCard / ModelCardData, offline)."""
    from huggingface_hub import ModelCard

    r = run_cli("publish", real_ladder, "--repo", "me/olmoe-tiny-GGUF", "--dry-run",
                "--base-model", "testorg/olmoe-tiny", "--recommend", "CPU only=olmoe-tiny-Q4_K_M.gguf")
    assert r.returncode == 0, r.stderr
    card = ModelCard.load(real_ladder / "README.md", ignore_metadata_errors=False)
    data = card.data.to_dict()
    assert data["base_model"] == "testorg/olmoe-tiny" and data["base_model_relation"] == "quantized"
    assert data["license"] == "apache-2.0"  # from the source card, through the GGUF's general.license
    assert data["quantized_by"] == "me" and data["pipeline_tag"] == "text-generation"
    assert {"gguf", "imatrix", "olmoe"} <= set(data["tags"]) and data["library_name"] == "gguf"
    text = card.text
    # prompt format: the GGUF's chat template on placeholders
    from ggtool.gguf_in import read_gguf_chat
    from ggtool.templates import render_chat

    chat = read_gguf_chat(real_ladder / "olmoe-tiny-Q4_K_M.gguf")
    want = render_chat(chat.template, [{"role": "system", "content": "{system_prompt}"},
                                       {"role": "user", "content": "{prompt}"}], bos_token=chat.bos, eos_token=chat.eos)
    assert "## Prompt format" in text and want.rstrip("\n") in text
    from importlib.metadata import version

    assert f"llama-cpp-python {version('llama_cpp_python')}" in text
    assert "importance matrix from `calibration.txt`, 4 chunks" in text  # quantize.imatrix.* of the Q4_K_M file
    assert "/tmp/" not in text  # no local paths in a public card
    assert "| `olmoe-tiny-Q4_K_M.gguf` | Q4_K_M |" in text and "| CPU only | `olmoe-tiny-Q4_K_M.gguf` |" in text
    # without --base-model nothing records the source repo: no model tree link, and nothing invented
    r = run_cli("publish", real_ladder, "--repo", "me/olmoe-tiny-GGUF", "--dry-run",
                "--recommend", "CPU only=olmoe-tiny-Q4_K_M.gguf", "--quantized-by", "someone")
    assert r.returncode == 0, r.stderr
    data = ModelCard.load(real_ladder / "README.md").data.to_dict()
    assert "base_model" not in data and data["quantized_by"] == "someone" and data["license"] == "apache-2.0"
    r = run_cli("publish", real_ladder, "--repo", "me/x", "--dry-run", "--base-model", "not a repo")
    assert r.returncode == 1 and "--base-model" in r.stderr and "Traceback" not in r.stderr
