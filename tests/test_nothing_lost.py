"""Nothing lost, nothing runaway: outputs never over inputs, exports that touch only their own files, every number
that sizes work checked first, checkpoints read only inside their folder, environment errors as one line, and
usage mistakes as usage errors. Each test is a reproduction from the hostile-user review (issue 18, 14 item 5)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ggtool.errors import GgtoolError
from tests.conftest import run_cli


def one_line_error(r, *needles: str, code: int = 1) -> None:
    """A refusal as the charter asks: the exit code, one `error:` line naming what is wrong, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def model(olmoe_gguf, tmp_path_factory) -> Path:
    """A private copy of the tiny OLMoE (F16, with a chat template) that the tests may try to destroy."""
    folder = tmp_path_factory.mktemp("victim")
    return Path(shutil.copy(olmoe_gguf, folder / "m.gguf"))


def unchanged(path: Path, before: bytes) -> bool:
    return path.read_bytes() == before


# -- outputs that are inputs ----------------------------------------------------------------------------------
def test_modelfile_refuses_to_overwrite_its_model(model):
    before = model.read_bytes()
    one_line_error(run_cli("modelfile", model, "-o", model), str(model), "the model")
    assert unchanged(model, before)


def test_plan_json_refuses_to_overwrite_its_model(model):
    before = model.read_bytes()
    one_line_error(run_cli("plan", model, "--ram", "6GiB", "--json", model), "the model")
    assert unchanged(model, before)


@pytest.mark.parametrize("which", ["base", "variant", "text"])
def test_eval_json_refuses_to_overwrite_an_input(model, tmp_path, which):
    variant = Path(shutil.copy(model, tmp_path / "q.gguf"))
    text = tmp_path / "t.txt"
    text.write_text("some held-out text " * 200)
    target = {"base": model, "variant": variant, "text": text}[which]
    before = target.read_bytes()
    one_line_error(run_cli("eval", model, variant, "-f", text, "--json", target), str(target))
    assert unchanged(target, before)


@pytest.mark.parametrize("which", ["text", "model"])
def test_imatrix_refuses_to_overwrite_its_calibration_text_or_model(model, tmp_path, which):
    text = tmp_path / "cal.txt"
    text.write_text("calibration text " * 500)
    target = text if which == "text" else model
    before = target.read_bytes()
    one_line_error(run_cli("imatrix", model, "-f", text, "-o", target), str(target))
    assert unchanged(target, before)


@pytest.mark.parametrize("kind", ["hardlink", "symlink"])
def test_links_to_an_input_are_the_input(model, tmp_path, kind):
    link = tmp_path / "other-name.gguf"
    (os.link if kind == "hardlink" else os.symlink)(model, link)
    before = model.read_bytes()
    one_line_error(run_cli("modelfile", model, "-o", link), "the model")
    one_line_error(run_cli("plan", model, "--ram", "6GiB", "--json", link), "the model")
    assert unchanged(model, before)


def test_quantize_refuses_an_output_name_that_is_its_model(model, tmp_path):
    from ggtool.quantize import output_name

    folder = tmp_path / "d"
    folder.mkdir()
    src = Path(shutil.copy(model, folder / output_name(model, "Q8_0")))
    before = src.read_bytes()
    one_line_error(run_cli("quantize", src, "--types", "Q8_0", "-o", folder), "the input model")
    assert unchanged(src, before)


def test_imatrix_merge_refuses_to_overwrite_an_input(olmoe_imatrix, tmp_path):
    a = Path(shutil.copy(olmoe_imatrix, tmp_path / "a.gguf"))
    before = a.read_bytes()
    one_line_error(run_cli("imatrix-merge", a, olmoe_imatrix, "-o", a), str(a))
    assert unchanged(a, before)


# -- export lmstudio touches only its own files -------------------------------------------------------------
def test_export_refuses_a_folder_with_foreign_files_and_replace_keeps_them(model, tmp_path):
    from ggtool.lmstudio import OWNED

    folder = tmp_path / "R" / "P" / "M"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "other.gguf").write_bytes(b"GGUF not ggtool's")
    r = run_cli("export", "lmstudio", model, "--publisher", "P", "--model", "M", "--root", tmp_path / "R")
    one_line_error(r, str(folder), "notes.txt", "other.gguf", "--replace")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "other.gguf"]
    r = run_cli("export", "lmstudio", model, "--publisher", "P", "--model", "M", "--root", tmp_path / "R",
                "--replace", "--hub-repo", "P/M-GGUF")  # with a Hub repo, model.yaml is ggtool's file too
    assert r.returncode == 0, r.stderr
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "other.gguf").read_bytes() == b"GGUF not ggtool's"
    assert (folder / "m.gguf").is_file() and (folder / "model.yaml").is_file()
    # its own files are ggtool's to replace: a second export needs no --replace for them, and leaves the rest
    r = run_cli("export", "lmstudio", model, "--publisher", "P", "--model", "M", "--root", tmp_path / "R",
                "--replace", "--hub-repo", "P/M-GGUF")  # with a Hub repo, model.yaml is ggtool's file too
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([OWNED, "m.gguf", "model.yaml", "notes.txt",
                                                               "other.gguf"])


@pytest.mark.parametrize("link", ["--link", "--copy"])
def test_export_of_a_file_already_in_place_keeps_it(model, tmp_path, link):
    folder = tmp_path / "P" / "M"
    folder.mkdir(parents=True)
    inside = Path(shutil.copy(model, folder / "m.gguf"))
    before = inside.read_bytes()
    r = run_cli("export", "lmstudio", inside, "--publisher", "P", "--model", "M", "--root", tmp_path, link)
    one_line_error(r, "m.gguf", "--replace")  # not placed there by ggtool
    r = run_cli("export", "lmstudio", inside, "--publisher", "P", "--model", "M", "--root", tmp_path, link,
                "--replace")
    assert r.returncode == 0, r.stderr
    assert inside.read_bytes() == before
    sneaky = Path(shutil.copy(model, folder / "model.yaml"))  # an input where the export writes its own file
    r = run_cli("export", "lmstudio", sneaky, "--publisher", "P", "--model", "M", "--root", tmp_path, "--replace")
    one_line_error(r, "model.yaml", "a file being exported")
    assert sneaky.read_bytes() == before


def test_publish_dry_run_keeps_a_readme_it_did_not_write(model, tmp_path):
    folder = tmp_path / "ladder"
    folder.mkdir()
    shutil.copy(model, folder / "m.gguf")
    (folder / "README.md").write_text("my own notes")
    one_line_error(run_cli("publish", folder, "--repo", "me/m", "--dry-run"), "README.md", "not a model card")
    assert (folder / "README.md").read_text() == "my own notes"
    (folder / "README.md").unlink()
    assert run_cli("publish", folder, "--repo", "me/m", "--dry-run").returncode == 0
    assert run_cli("publish", folder, "--repo", "me/m", "--dry-run").returncode == 0  # its own card: replaced


# -- numbers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["-n", "4294967295"], "--max-tokens"), (["-n", "0"], "--max-tokens"),
    (["--temp", "nan"], "--temp"), (["--temp", "inf"], "--temp"), (["--temp", "-1"], "--temp"),
    (["--top-p", "2"], "--top-p"), (["--top-p", "nan"], "--top-p"), (["--min-p", "-0.5"], "--min-p"),
    (["--repeat-penalty", "0"], "--repeat-penalty"), (["--repeat-penalty", "inf"], "--repeat-penalty"),
    (["--top-k", "-3"], "--top-k"), (["--seed", "4294967295"], "--seed"),
])
def test_run_refuses_numbers_out_of_range(model, args, needle):
    one_line_error(run_cli("run", model, "-p", "x", *args), needle, "out of range")


def test_run_stays_within_the_model_context(model):
    one_line_error(run_cli("run", model, "-p", "x", "-n", "1000000"), "--max-tokens", "context length 4096")


@pytest.mark.parametrize("args, needle", [
    (["--ctx", "0"], "--ctx"), (["--ctx", "-1"], "--ctx"), (["--margin", "-1"], "--margin"),
    (["--margin", "nan"], "--margin"), (["--margin", "1"], "--margin"),
    (["--vram-bandwidth", "-5"], "--vram-bandwidth"),
    (["--ram-bandwidth", "nan"], "--ram-bandwidth"), (["--vram", "1.2.3GiB"], "--vram"),
    (["--device", "h:1=1GiB@nan"], "--device"), (["--device", "h:1=1GiB@x"], "--device"),
])
def test_plan_refuses_numbers_out_of_range(model, args, needle):
    one_line_error(run_cli("plan", model, "--ram", "6GiB", *args), needle)


@pytest.mark.parametrize("cmd, args, needle", [
    (cmd, args, args[0]) for cmd in ("imatrix", "eval", "quantize")
    for args in (["--threads", "100000"], ["--threads", "-1"], ["--chunks", "-1"])
    if (cmd, args[0]) != ("quantize", "--chunks")])
def test_threads_and_chunks_are_checked_first(model, tmp_path, cmd, args, needle):
    text = tmp_path / "t.txt"
    text.write_text("text " * 2000)
    extra = {"imatrix": ["-f", text, "-o", tmp_path / "im.gguf"], "eval": [model, "-f", text],
             "quantize": ["--types", "Q8_0", "-o", tmp_path / "q"]}[cmd]
    one_line_error(run_cli(cmd, model, *extra, *args), needle, "out of range")
    assert not (tmp_path / "q").exists() and not (tmp_path / "im.gguf").exists()


@pytest.mark.parametrize("spec, needle", [("attn_q=F64", "F64"), ("attn_q=I32", "I32"), ("attn_q=Q8_1", "Q8_1"),
                                          ("(a+)+b=Q8_0", "exponential"), ("(.*a){30}=Q8_0", "exponential"),
                                          ("a" * 300 + "=Q8_0", "characters")])
def test_quantize_refuses_tensor_types_llama_cpp_aborts_on(model, tmp_path, spec, needle):
    r = run_cli("quantize", model, "--types", "Q8_0", "--tensor-type", spec, "-o", tmp_path / "q")
    one_line_error(r, "--tensor-type", needle)
    assert not (tmp_path / "q").exists()


def patched(src: Path, dest: Path, key: str, value: int) -> Path:
    """A copy of a GGUF with the u32 metadata value of `key` replaced."""
    data = bytearray(src.read_bytes())
    k = key.encode()
    i = data.index(struct.pack("<Q", len(k)) + k) + 8 + len(k)
    assert struct.unpack_from("<I", data, i)[0] == 4  # GGUF type u32
    struct.pack_into("<I", data, i + 4, value)
    dest.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("key, value", [("olmoe.block_count", 0), ("olmoe.block_count", 4_000_000_000),
                                        ("olmoe.expert_count", 0), ("olmoe.expert_count", 100_000),
                                        ("olmoe.expert_used_count", 0), ("olmoe.expert_used_count", 9)])
def test_gguf_shape_metadata_is_checked_before_llama_cpp(model, tmp_path, key, value):
    bad = patched(model, tmp_path / "bad.gguf", key, value)
    text = tmp_path / "t.txt"
    text.write_text("text " * 2000)
    one_line_error(run_cli("run", bad, "-p", "x", "-n", "1"), key.split(".")[1])
    one_line_error(run_cli("quantize", bad, "--types", "Q8_0", "-o", tmp_path / "q"), key.split(".")[1])
    one_line_error(run_cli("imatrix", bad, "-f", text, "-o", tmp_path / "im.gguf", "--chunk-size", "16"),
                   key.split(".")[1])
    one_line_error(run_cli("eval", model, bad, "-f", text, "--ctx", "16"), key.split(".")[1])
    assert not (tmp_path / "q").exists()


def test_modelfile_plan_with_a_bad_context_is_refused(model, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"n_ctx": -5, "n_gpu_layers": 3}))
    one_line_error(run_cli("modelfile", model, "-o", tmp_path / "Modelfile", "--plan", plan), "n_ctx", "-5")
    assert not (tmp_path / "Modelfile").exists()


def test_run_plan_with_a_catastrophic_override_is_refused(model, tmp_path):
    from ggtool.plan.export import PLAN_KEYS

    plan = {k: None for k in PLAN_KEYS} | {"model": str(model), "n_gpu_layers": 0, "n_ctx": 512, "type_k": "f16",
                                           "type_v": "f16", "flash_attn": False, "rpc": [], "predicted": {},
                                           "overrides": [{"pattern": "(a|aa)+$", "buffer": "CPU"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    one_line_error(run_cli("run", model, "--plan", tmp_path / "plan.json", "-n", "1"), "override", "exponential")


def test_verify_tokens_are_bounded(olmoe_checkpoint, model):
    one_line_error(run_cli("verify", olmoe_checkpoint, model, "--tokens", str(10**9)), "--tokens")


# -- convert: configs that would abort llama.cpp or run away -------------------------------------------------
@pytest.fixture
def ckpt_copy(olmoe_checkpoint, tmp_path) -> Path:
    """The tiny OLMoE checkpoint with its weights linked, config.json a private copy."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for p in olmoe_checkpoint.iterdir():
        if p.name == "config.json":
            shutil.copy(p, folder / p.name)
        else:
            os.symlink(p, folder / p.name)
    return folder


def set_config(folder: Path, **values) -> None:
    c = json.loads((folder / "config.json").read_text())
    c.update(values)
    (folder / "config.json").write_text(json.dumps(c))


@pytest.mark.parametrize("values, needle", [
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"), ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
    ({"num_experts": 10**9}, "num_experts"), ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
    ({"num_attention_heads": 0, "num_key_value_heads": 0}, "num_attention_heads"),
    ({"num_experts": "8"}, "num_experts"),
    ({"hidden_size": "256"}, "hidden_size"), ({"num_hidden_layers": True}, "num_hidden_layers"),
])
def test_convert_refuses_configs_that_would_abort_llama_cpp(ckpt_copy, tmp_path, values, needle):
    set_config(ckpt_copy, **values)
    one_line_error(run_cli("convert", ckpt_copy, "-o", tmp_path / "out.gguf"), "config.json", needle)
    assert not (tmp_path / "out.gguf").exists()


def test_convert_refuses_a_chat_template_that_does_not_parse(ckpt_copy, tmp_path):
    tc = ckpt_copy / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    tc.unlink()
    tc.write_text(json.dumps({**cfg, "chat_template": "{% for m in messages %}{{ m.content }"}))
    one_line_error(run_cli("convert", ckpt_copy, "-o", tmp_path / "out.gguf"), "chat template", "does not parse")
    assert not (tmp_path / "out.gguf").exists()


# -- checkpoints: stay inside the folder, trust no header ----------------------------------------------------
def write_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def tiny_folder(tmp_path: Path, header: object, data: bytes = b"\0" * 64) -> Path:
    folder = tmp_path / "ck"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "olmoe"}))
    write_safetensors(folder / "model.safetensors", header, data)
    return folder


def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
    from ggtool.checkpoint import Checkpoint

    other = tmp_path / "other"
    other.mkdir()
    write_safetensors(other / "model.safetensors", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                      b"\0" * 4)
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "../../other/model.safetensors"}}))
    with pytest.raises(GgtoolError, match="outside the checkpoint folder"):
        Checkpoint(folder)
    index.write_text(json.dumps({"weight_map": {"x": str(other / "model.safetensors")}}))
    with pytest.raises(GgtoolError, match="outside the checkpoint folder"):
        Checkpoint(folder)


@pytest.mark.parametrize("header, needle", [
    ([1, 2], "JSON list"), (None, "JSON NoneType"), (b"[" * 100_000 + b"]" * 100_000, "nested"),
    ({"x": {"shape": [1], "data_offsets": [0, 4]}}, "dtype"), ({"x": [1]}, "not an object"),
    ({"x": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, "shape"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "overlap"),
    ({"__metadata__": [1], "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "__metadata__"),
])
def test_malformed_safetensors_headers_are_one_line(tmp_path, header, needle):
    folder = tiny_folder(tmp_path, header)
    one_line_error(run_cli("convert", folder, "-o", tmp_path / "out.gguf"), "model.safetensors", needle)


def test_integer_weights_are_refused_not_turned_into_inf(olmoe_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "ck"
    shutil.copytree(olmoe_checkpoint, folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = np.full(tensors[name].shape, 2**31 - 1, dtype=np.int32)
    save_file(tensors, folder / "model.safetensors")
    one_line_error(run_cli("convert", folder, "-o", tmp_path / "out.gguf"), name, "I32")
    assert not (tmp_path / "out.gguf").exists()


# -- environment errors ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k", ro: bool = False):
    """A small tmpfs at `path` (root only, where mounting is allowed); skips with the reason otherwise."""
    path.mkdir(exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_is_one_line_naming_the_path(olmoe_checkpoint, model, olmoe_imatrix, tmp_path):
    with small_tmpfs(tmp_path / "full") as full:
        r = run_cli("convert", olmoe_checkpoint, "-o", full / "out.gguf")
        one_line_error(r, str(full / "out.gguf")[:-4], "no space left on device")
        r = run_cli("quantize", model, "--types", "Q8_0", "-o", full / "q")
        one_line_error(r, str(full / "q"), "no space left on device")
        (full / "filler").write_bytes(b"\0" * (256 * 1024 - 4096 * 2))  # what remains is too small for the card
        with contextlib.suppress(OSError):
            (full / "filler2").write_bytes(b"\0" * 8192)
        r = run_cli("plan", model, "--ram", "6GiB", "--json", full / "plan.json")
        one_line_error(r, str(full), "no space left on device")
        r = run_cli("modelfile", model, "-o", full / "Modelfile")
        one_line_error(r, str(full), "no space left on device")
        leftovers = [p.name for p in full.rglob("*") if p.name not in ("filler", "filler2")]
        assert leftovers == [], leftovers  # no .partial files, no empty output folder


def test_read_only_folder_is_one_line(model, tmp_path):
    with small_tmpfs(tmp_path / "ro", ro=True) as ro:
        one_line_error(run_cli("modelfile", model, "-o", ro / "Modelfile"), str(ro), "read-only file system")
        one_line_error(run_cli("quantize", model, "--types", "Q8_0", "-o", ro / "q"), str(ro), "read-only")


def test_eval_with_a_full_tmpdir_is_an_error_not_sigbus(model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(Path(__file__).read_text() * 4)
    with small_tmpfs(tmp_path / "tmp", size="64k") as tmp:
        env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "200"}
        r = subprocess.run([sys.executable, "-m", "ggtool.cli", "eval", model, model, "-f", text, "--ctx", "64"],
                           capture_output=True, text=True, env=env)
        one_line_error(r, "no space left on device")
        assert list(tmp.iterdir()) == []  # the named temporary folder is gone


def test_leftover_partial_of_a_killed_run_is_removed_and_named(olmoe_checkpoint, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.gguf.{dead.pid}.0123abcd.partial"
    stale.write_bytes(b"half a file")
    r = run_cli("convert", olmoe_checkpoint, "-o", tmp_path / "out.gguf")
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and f"removed {stale}" in r.stderr.replace("\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_ladder_manifest_writers_do_not_collide(tmp_path):
    from ggtool.ladder import Manifest

    (tmp_path / "f").write_text("x")
    errors = []

    def write(i: int) -> None:
        try:
            m = Manifest(tmp_path)
            for j in range(30):
                m.record(f"k{i}-{j}", [i, j], tmp_path / "f")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads((tmp_path / "ladder.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "ladder.json"]


def test_failed_quantize_removes_the_folder_it_created(model, tmp_path):
    from ggtool.quantize import quantize

    data = bytearray(model.read_bytes())  # an architecture llama.cpp does not know: it fails inside the first variant
    key = b"general.architecture"
    i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4 + 8
    assert data[i:i + 5] == b"olmoe"
    data[i:i + 5] = b"olmox"
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(bytes(data))
    with pytest.raises(GgtoolError, match="olmox"):
        quantize(odd, tmp_path / "new", ["Q8_0"])
    assert not (tmp_path / "new").exists()
    from ggtool.outputs import output_folder

    with pytest.raises(RuntimeError), output_folder(tmp_path / "made"):
        raise RuntimeError
    assert not (tmp_path / "made").exists()


# -- usage errors and internal errors --------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["convert", "--bogus"], ["convert"], ["eval", "--json"], ["plan", "x", "--ctx", "a"]])
def test_usage_mistakes_are_usage_errors(args):
    r = run_cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Usage:" in r.stderr and "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_internal_error_has_its_own_exit_code():
    code = ("import sys, ggtool.cli as c\n"
            "@c.app.command('boom')\n"
            "def boom() -> None:\n"
            "    raise ZeroDivisionError('a bug')\n"
            "sys.argv = ['ggtool', 'boom']\n"
            "c.main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 70 and "internal error: ZeroDivisionError" in r.stderr, r.stderr


def test_json_dash_writes_json_to_stdout(model):
    r = run_cli("plan", model, "--ram", "6GiB", "--json", "-")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["n_ctx"] == 4096 and "llama_cpp_flags" in plan
    assert not Path("-").exists()


def test_eval_json_dash_writes_json_to_stdout(model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(Path(__file__).read_text())
    r = run_cli("eval", model, model, "-f", text, "--ctx", "64", "--chunks", "2", "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["variants"][0]["kl_mean"] == pytest.approx(0, abs=1e-6)


def test_truncated_gguf_in_modelfile_is_one_line(tmp_path):
    bad = tmp_path / "four.gguf"
    bad.write_bytes(b"GGUF")
    one_line_error(run_cli("modelfile", bad, "-o", tmp_path / "Modelfile"), str(bad))
