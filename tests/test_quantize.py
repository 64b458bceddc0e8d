"""ggtool quantize: byte-identical to llama-quantize's call of llama_model_quantize; naming, overrides, refusals."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import gguf
import llama_cpp.llama_cpp as L
import numpy as np
import pytest

from ggtool import imatrix as im_mod, imatrix_file
from ggtool import quantize as q_mod
from ggtool.errors import GgtoolError

from .conftest import run_cli


def llama_quantize_reference(src: Path, dest: Path, ftype: int, imatrix_path: Path) -> None:
    """What llama-quantize --imatrix does, written out independently: read the GGUF imatrix with gguf-py, mean =
    sum / count per expert (count 0 → 1.0), then llama_model_quantize with quantize.imatrix.* KV overrides."""
    r = gguf.GGUFReader(imatrix_path)
    data = {t.name: np.array(t.data, dtype=np.float32) for t in r.tensors}
    names = sorted(n[: -len(".in_sum2")] for n in data if n.endswith(".in_sum2"))
    keep = []
    arr = (L.llama_model_imatrix_data * (len(names) + 1))()
    for i, name in enumerate(names):
        counts = data[f"{name}.counts"].reshape(-1, 1)
        sums = data[f"{name}.in_sum2"].reshape(counts.shape[0], -1)
        mean = np.ascontiguousarray(np.where(counts > 0, sums / np.maximum(counts, 1), np.float32(1)), np.float32)
        keep += [mean, name.encode()]
        arr[i].name, arr[i].size = keep[-1], mean.size
        arr[i].data = mean.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    kvs = (L.llama_model_kv_override * 5)()
    values = [("quantize.imatrix.file", str(imatrix_path)),
              ("quantize.imatrix.dataset", str(r.get_field("imatrix.datasets").contents()[0])),
              ("quantize.imatrix.entries_count", len(names)),
              ("quantize.imatrix.chunks_count", int(r.get_field("imatrix.chunk_count").contents()))]
    for kv, (key, value) in zip(kvs, values):
        kv.key = key.encode()
        if isinstance(value, str):
            kv.tag, kv.value.val_str = L.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()
        else:
            kv.tag, kv.value.val_i64 = L.LLAMA_KV_OVERRIDE_TYPE_INT, value
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.imatrix = ctypes.cast(arr, ctypes.POINTER(L.llama_model_imatrix_data))
    params.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(L.llama_model_kv_override))
    assert L.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params)) == 0


def test_file_is_byte_identical_to_direct_llama_model_quantize(olmoe_gguf, olmoe_imatrix, tmp_path):
    ours = q_mod.quantize_one(olmoe_gguf, tmp_path / "ours.gguf", "IQ2_M", imatrix=olmoe_imatrix)
    llama_quantize_reference(olmoe_gguf, tmp_path / "direct.gguf", int(gguf.LlamaFileType.MOSTLY_IQ2_M), olmoe_imatrix)
    assert ours.path.read_bytes() == (tmp_path / "direct.gguf").read_bytes()
    r = gguf.GGUFReader(ours.path)
    assert r.get_field("quantize.imatrix.file").contents() == str(olmoe_imatrix)
    assert r.get_field("general.file_type").contents() == int(gguf.LlamaFileType.MOSTLY_IQ2_M)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.1.ffn_gate_exps.weight"] == "IQ2_S" and types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.gguf", "ours.gguf"]  # no temporary left


def test_iq2_m_without_imatrix_is_refused_with_how_to_make_one(olmoe_gguf, tmp_path):
    r = run_cli("quantize", olmoe_gguf, "--types", "Q4_K_M,IQ2_M", "-o", tmp_path / "out")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "IQ2_M needs an importance matrix" in r.stderr and "ggtool imatrix" in r.stderr
    assert not (tmp_path / "out").exists()  # refused before the first variant


def test_cli_names_files_and_applies_lower_cased_tensor_type_overrides(olmoe_gguf, olmoe_imatrix, tmp_path):
    out = tmp_path / "out"
    r = run_cli("quantize", olmoe_gguf, "--types", "Q4_K_M,q3_k_m", "--imatrix", olmoe_imatrix,
                "--tensor-type", r"BLK\.[01]\.FFN_UP_EXPS=q8_0", "-o", out)
    assert r.returncode == 0, r.stderr
    meta = gguf.GGUFReader(olmoe_gguf)
    stem = gguf.naming_convention(meta.get_field("general.name").contents(), None, None, None,
                                  meta.get_field("general.size_label").contents(), "Q4_K_M")
    assert stem == "Olmoe-Tiny-8x3.2M-Q4_K_M"
    assert sorted(p.name for p in out.iterdir()) == ["Olmoe-Tiny-8x3.2M-Q3_K_M.gguf", f"{stem}.gguf"]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / f"{stem}.gguf").tensors}
    assert types["blk.0.ffn_up_exps.weight"] == types["blk.1.ffn_up_exps.weight"] == "Q8_0"
    assert types["blk.2.ffn_up_exps.weight"] == types["blk.1.attn_q.weight"] == "Q4_K"  # the Q4_K_M recipe
    types3 = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / "Olmoe-Tiny-8x3.2M-Q3_K_M.gguf").tensors}
    assert types3["blk.2.ffn_up_exps.weight"] == "Q3_K" and types3["blk.1.ffn_up_exps.weight"] == "Q8_0"


@pytest.fixture(scope="module")
def foreign_imatrices(olmoe_imatrix, tmp_path_factory) -> dict[str, Path]:
    """Importance matrices that do not fit olmoe_gguf: a tensor it lacks, and wrong sizes."""
    folder = tmp_path_factory.mktemp("foreign")
    im = imatrix_file.read_imatrix(olmoe_imatrix)
    extra = imatrix_file.Imatrix(dict(im.entries), im.datasets, im.chunk_count, im.chunk_size)
    extra.entries["blk.7.attn_q.weight"] = extra.entries["blk.0.attn_q.weight"]
    small = imatrix_file.Imatrix(dict(im.entries), im.datasets, im.chunk_count, im.chunk_size)
    e = small.entries["blk.0.ffn_up_exps.weight"]
    small.entries["blk.0.ffn_up_exps.weight"] = imatrix_file.ImatrixEntry(e.sums[:4], e.counts[:4])  # 4 experts, not 8
    return {"tensor": imatrix_file.write_imatrix(extra, folder / "extra.gguf"),
            "size": imatrix_file.write_imatrix(small, folder / "small.gguf")}


def test_bad_input_fails_in_one_line_and_leaves_nothing(olmoe_gguf, olmoe_imatrix, foreign_imatrices, tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    data = olmoe_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    for args, expected in (([text, "--types", "Q4_K_M"], "not a GGUF file"),
                           ([olmoe_gguf, "--imatrix", foreign_imatrices["size"]], "needs 2048")):
        r = run_cli("quantize", *args, "-o", out)
        assert r.returncode == 1, (expected, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (expected, r.stderr)
        assert "different model" in lines[0] or expected == "not a GGUF file"
    cases = {"truncated or damaged": dict(model=truncated),
             "which": dict(imatrix=foreign_imatrices["tensor"]),
             "unknown quantization type 'Q4_K_X'": dict(types=["Q4_K_M", "Q4_K_X"]),
             "unknown tensor type": dict(tensor_types=["attn_q=Q9_K"]),
             "expected REGEX=TYPE": dict(tensor_types=["attn_q"])}
    for expected, kwargs in cases.items():
        args = {"model": olmoe_gguf, "out_dir": out, "types": ["Q4_K_M"], "imatrix": olmoe_imatrix, **kwargs}
        with pytest.raises(GgtoolError, match=re.escape(expected)):
            q_mod.quantize(**args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf", "truncated.gguf"]


def llama_cpp_tool(name: str) -> Path | None:
    """A llama.cpp program from the benchmark's reference build of the same llama.cpp, if it has been built."""
    import os

    from ggtool.llama.source import pinned_version

    # the pinned version, as bench/reference.py names the build (the installed wheel carries a +ggtool label)
    cache = Path(os.environ.get("GGTOOL_BENCH_CACHE", Path.home() / ".cache" / "ggtool-bench"))
    path = cache / f"llama.cpp-{pinned_version()}" / "bin" / name
    return path if path.exists() else None


@pytest.mark.skipif(not (llama_cpp_tool("llama-imatrix") and llama_cpp_tool("llama-quantize")),
                    reason="no reference llama-quantize / llama-imatrix (make install builds them)")
def test_agrees_with_llama_imatrix_and_llama_quantize(olmoe_gguf, tmp_path):
    import subprocess

    from ggtool import fixtures

    text = tmp_path / "cal.txt"
    text.write_text(fixtures.stdlib_text(60, 30_000))
    ref_im, our_im = tmp_path / "llama.imatrix.gguf", tmp_path / "ggtool.imatrix.gguf"
    subprocess.run([str(a) for a in (llama_cpp_tool("llama-imatrix"), "-m", olmoe_gguf, "-f", text, "-c", 128, "-b",
                                     128, "--chunks", 3, "-t", 1, "--no-ppl", "-o", ref_im, "-ofreq", 1000)],
                   check=True, capture_output=True)
    im_mod.collect(olmoe_gguf, [text], our_im, chunk_size=128, max_chunks=3, n_threads=1)
    ours, ref = imatrix_file.read_imatrix(our_im), imatrix_file.read_imatrix(ref_im)
    assert sorted(ours.entries) == sorted(ref.entries) and ours.chunk_count == ref.chunk_count == 3
    for name, e in ours.entries.items():
        np.testing.assert_array_equal(e.counts, ref.entries[name].counts, err_msg=name)
        np.testing.assert_allclose(e.sums, ref.entries[name].sums, rtol=1e-5, atol=1e-5 * e.sums.max(), err_msg=name)
    # llama-quantize with llama-imatrix's file and ggtool with the same file (same path string): the same bytes
    subprocess.run([str(a) for a in (llama_cpp_tool("llama-quantize"), "--imatrix", ref_im, olmoe_gguf,
                                     tmp_path / "llama.gguf", "IQ3_M")], check=True, capture_output=True)
    q_mod.quantize_one(olmoe_gguf, tmp_path / "ggtool.gguf", "IQ3_M", imatrix=ref_im)
    assert (tmp_path / "ggtool.gguf").read_bytes() == (tmp_path / "llama.gguf").read_bytes()
