"""ggtool eval: perplexity, KL divergence and top-1 agreement against an independent computation; JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ggtool import fixtures
from ggtool.errors import GgtoolError
from ggtool.llama.model import ContextOptions, LlamaModel
from ggtool.quality import evaluate
from ggtool.quantize import quantize_one

from .conftest import run_cli

CTX, CHUNKS = 64, 3


@pytest.fixture(scope="module")
def variants(olmoe_gguf, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("variants")
    return {t: quantize_one(olmoe_gguf, folder / f"olmoe-{t}.gguf", t).path for t in ("Q8_0", "Q3_K_M")}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("heldout") / "heldout.txt"
    path.write_text(fixtures.heldout_text(8_000))
    return path


def reference(base: Path, variant: Path, text: str) -> dict[str, float]:
    """The same measures computed directly from llama.cpp's logits in float64, second half of each chunk."""
    opts = ContextOptions(n_ctx=CTX, n_batch=CTX, n_threads=1, flash_attn=None)
    with LlamaModel(base) as m:
        ids = m.tokenize(text)
        chunks = [ids[i * CTX:(i + 1) * CTX] for i in range(CHUNKS)]
        p_logits = [m.logits(c, opts).astype(np.float64) for c in chunks]
    with LlamaModel(variant) as m:
        q_logits = [m.logits(c, opts).astype(np.float64) for c in chunks]
    kl, nll, agree = [], [], []
    for c, p, q in zip(chunks, p_logits, q_logits):
        for j in range(CTX // 2, CTX - 1):
            lp = p[j] - np.logaddexp.reduce(p[j])
            lq = q[j] - np.logaddexp.reduce(q[j])
            kl.append(float(np.sum(np.exp(lp) * (lp - lq))))
            nll.append(-lq[c[j + 1]])
            agree.append(lp.argmax() == lq.argmax())
    per_chunk = np.mean(np.reshape(kl, (CHUNKS, -1)), axis=1)
    return {"kl_mean": np.mean(kl), "kl_p99": np.percentile(kl, 99), "ppl": float(np.exp(np.mean(nll))),
            "top1": float(np.mean(agree)), "n": len(kl), "kl_chunks": per_chunk,
            "kl_stderr": float(np.std(per_chunk, ddof=1) / np.sqrt(CHUNKS))}


def test_measures_match_a_direct_computation(olmoe_gguf, variants, heldout):
    r = evaluate(olmoe_gguf, [olmoe_gguf, variants["Q8_0"], variants["Q3_K_M"]], heldout, n_ctx=CTX, max_chunks=CHUNKS,
                 n_threads=1)  # one thread: far faster than two busy-waiting ones on a loaded machine
    same, q8, q3 = r.variants
    assert r.n_tokens == CHUNKS * (CTX - 1 - CTX // 2)
    assert same.kl_mean < 1e-6 and same.top1 == 1.0 and same.ppl == pytest.approx(r.base_ppl, rel=1e-9)
    ref = reference(olmoe_gguf, variants["Q3_K_M"], heldout.read_text())
    assert ref["n"] == r.n_tokens
    assert q3.kl_mean == pytest.approx(ref["kl_mean"], rel=1e-3)
    assert q3.kl_p99 == pytest.approx(ref["kl_p99"], rel=1e-3)
    assert q3.ppl == pytest.approx(ref["ppl"], rel=1e-4)
    assert q3.top1 == pytest.approx(ref["top1"])
    assert q3.kl_chunks == pytest.approx(ref["kl_chunks"], rel=1e-3)
    assert q3.kl_stderr == pytest.approx(ref["kl_stderr"], rel=1e-2) and 0 < q3.kl_stderr < q3.kl_mean
    assert 0 < q8.kl_mean < q3.kl_mean and q8.top1 >= q3.top1
    assert (same.type, q8.type, q3.type) == ("F16", "Q8_0", "Q3_K_M")
    assert q8.size_bytes == variants["Q8_0"].stat().st_size
    assert 16.0 < same.bpw < 16.1 and 8.5 <= q8.bpw < 8.7 and q3.bpw < q8.bpw  # norms and router stay F32


def test_cli_table_and_json_follow_the_contract(olmoe_gguf, variants, heldout, tmp_path):
    out = tmp_path / "quality.json"
    r = run_cli("eval", olmoe_gguf, variants["Q8_0"], variants["Q3_K_M"], "-f", heldout, "--ctx", CTX,
                "--chunks", 2, "--threads", 1, "--json", out)
    assert r.returncode == 0, r.stderr
    assert "Q3_K_M" in r.stdout and "KL p99" in r.stdout
    data = json.loads(out.read_text())
    assert data["base"] == str(olmoe_gguf) and data["text"] == str(heldout) and data["n_tokens"] == 2 * 31
    assert [v["type"] for v in data["variants"]] == ["Q8_0", "Q3_K_M"]
    for v in data["variants"]:
        assert set(v) == {"file", "type", "size_bytes", "bpw", "ppl", "kl_mean", "kl_p99", "top1", "kl_stderr"}
        assert isinstance(v["size_bytes"], int) and all(np.isfinite(v[k]) for k in ("bpw", "ppl", "kl_mean", "kl_p99",
                                                                                    "kl_stderr"))
    assert "±" in r.stdout  # the standard error next to the mean KL


def test_bad_input_fails_in_one_line_without_json(olmoe_gguf, variants, heldout, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 10)
    out = tmp_path / "q.json"
    r = run_cli("eval", olmoe_gguf, variants["Q8_0"], junk, "-f", heldout, "--json", out)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "truncated" in r.stderr and not out.exists()
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(GgtoolError, match="fewer than one chunk"):
        evaluate(olmoe_gguf, [variants["Q8_0"]], short, n_ctx=CTX, n_threads=1)
