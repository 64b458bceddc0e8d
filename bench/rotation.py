"""Experiment (issue 16): an exact randomized Walsh-Hadamard rotation of the residual stream, folded into the weights.

    python bench/rotation.py [OUT_DIR] [--model default|neo3]

Each RMSNorm's scale is first folded into the linears that read its output (q/k/v; router and expert gate/up;
lm_head), leaving scales of 1, so the norm commutes with any orthogonal Q. Then, with the residual stream x
replaced by x·Q (Q = diag(random signs)·H/√n): the embeddings become E·Q, every linear reading the residual
W·Q, every linear writing to it (o_proj, expert down projections) Qᵀ·W. The output is unchanged up to rounding:
checked in llama.cpp on f32 files with an f32 KV cache. Then both models are quantized (llama.cpp's recipes
and ggtool's mix at the stock size, each with its own importance matrix) and measured against the unrotated
base on the held-out text.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from ggtool import DEFAULT_MODEL, fixtures

CAL = Path(__file__).resolve().parent.parent / "imatrix_data" / "calibration.txt"


def hadamard(n: int, seed: int) -> np.ndarray:
    if n & (n - 1):
        raise SystemExit(f"hidden size {n} is not a power of two: no Walsh-Hadamard matrix")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], n)
    return signs[:, None] * h / np.sqrt(n)


def rotate_checkpoint(src: Path, dst: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    t = {k: v.to(torch.float64).numpy() for k, v in load_file(str(src / "model.safetensors")).items()}
    q = hadamard(cfg["hidden_size"], seed)
    if "lm_head.weight" not in t:  # tied: untie first
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
        cfg["tie_word_embeddings"] = False

    def fold(norm: str, readers: list[str]) -> None:
        g = t[norm]
        for r in readers:
            t[r] = t[r] * g[None, :]
        t[norm] = np.ones_like(g)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        attn_in = [f"{p}.self_attn.{x}_proj.weight" for x in "qkv"]
        if f"{p}.mlp.gate.weight" in t:  # OLMoE
            router, ex = f"{p}.mlp.gate.weight", f"{p}.mlp.experts"
            reads = [n for n in t if n.startswith(ex) and ("gate_proj" in n or "up_proj" in n)]
            writes = [n for n in t if n.startswith(ex) and "down_proj" in n]
        else:  # Mixtral / neo-3, per-expert layout
            router, ex = f"{p}.block_sparse_moe.gate.weight", f"{p}.block_sparse_moe.experts"
            reads = [n for n in t if n.startswith(ex) and (".w1." in n or ".w3." in n)]
            writes = [n for n in t if n.startswith(ex) and ".w2." in n]
        fold(f"{p}.input_layernorm.weight", attn_in)
        fold(f"{p}.post_attention_layernorm.weight", [router, *reads])
        for n in [*attn_in, router, *reads]:
            t[n] = t[n] @ q
        for n in [f"{p}.self_attn.o_proj.weight", *writes]:
            t[n] = q.T @ t[n]
    fold("model.norm.weight", ["lm_head.weight"])
    t["lm_head.weight"] = t["lm_head.weight"] @ q
    t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"] @ q
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json", "README.md"):
            shutil.copy(f, dst / f.name)
    cfg["dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: torch.from_numpy(v.astype(np.float32)).contiguous() for k, v in t.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def logits_match(a: Path, b: Path, text: str) -> tuple[float, float]:
    from ggtool.llama.model import ContextOptions, LlamaModel

    opts = ContextOptions(n_ctx=256, n_batch=256, type_k="f32", type_v="f32", n_threads=1)
    with LlamaModel(a) as m:
        ids = m.tokenize(text)[:256]
        la = m.logits(ids, opts)
    with LlamaModel(b) as m:
        lb = m.logits(ids, opts)
    return float(np.abs(la - lb).max() / np.abs(la).max()), float((la.argmax(1) == lb.argmax(1)).mean())


def main() -> None:
    from ggtool.convert import convert
    from ggtool.imatrix import collect
    from ggtool.imatrix_file import read_imatrix
    from ggtool.mix import choose_and_write, groups, measure, quantizable_tensors
    from ggtool.quantize import imatrix_kv_overrides, quantize_one

    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="out/rotation")
    ap.add_argument("--model", choices=("default", "neo3"), default="default")
    ap.add_argument("--types", default="IQ2_M,IQ3_M,Q3_K_M,Q4_K_M")
    ap.add_argument("--eval-only", action="store_true", help="measure the files an earlier run left in OUT_DIR")
    a = ap.parse_args()
    out = Path(a.out) / a.model
    out.mkdir(parents=True, exist_ok=True)
    if a.eval_only:
        files = [out / f"{k}-{t}{s}.gguf" for k in ("plain", "rotated") for t in a.types.split(",") for s in ("", "-MIX")]
        report(out / "plain-F16.gguf", files, a.types.split(","), 256 if a.model == "neo3" else 512)
        return
    if a.model == "default":
        src = DEFAULT_MODEL
    else:  # the second model of tests/test_mix_second_model.py: a neo-3 trained on the calibration text
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.test_mix_second_model import SHAPE, training_text

        held = (CAL.parent / "heldout.txt").read_text()[:16_000]
        src = Path(fixtures.train_mixtral(out / "neo3", training_text(), held, **SHAPE)["src"])
    rot = rotate_checkpoint(src, out / "rotated")
    text = CAL.read_text()[:4000]
    f32 = {k: convert(s, out / f"{k}-F32.gguf", "f32").dest for k, s in (("plain", src), ("rotated", rot))}
    rel, top1 = logits_match(f32["plain"], f32["rotated"], text)
    print(f"f32 logits, rotated vs not (llama.cpp, f32 KV): max |Δ| / max |logit| = {rel:.2e}, top-1 {100 * top1:.1f}%")
    base = convert(src, out / "plain-F16.gguf", "f16").dest
    files = []
    for k, s in (("plain", src), ("rotated", rot)):
        f16 = base if k == "plain" else convert(s, out / "rotated-F16.gguf", "f16").dest
        im_path = collect(f16, [CAL], out / f"{k}-imatrix.gguf", chunk_size=256, max_chunks=48, n_threads=1).dest
        im = read_imatrix(im_path)
        sens = measure(f16, groups(f16, quantizable_tensors(f16)), im.means(), [CAL], n_threads=1)
        for t in a.types.split(","):
            stock = quantize_one(f16, out / f"{k}-{t}.gguf", t, im, nthread=1).path
            mix = choose_and_write(f16, out / f"{k}-{t}-MIX.gguf", target_bytes=stock.stat().st_size, imatrix=im,
                                   kv_overrides=imatrix_kv_overrides(im, im_path.name, len(im.means())),
                                   label=f"{t}-mix", nominal=t, confirm=False, n_threads=1, sensitivities=sens)
            files += [stock, mix.path]
    report(base, files, a.types.split(","), 256 if a.model == "neo3" else 512)


def report(base: Path, files: list[Path], types: list[str], n_ctx: int) -> None:
    """Every file against the unrotated base on the held-out text, then rotated − unrotated paired per chunk."""
    from ggtool.quality import evaluate

    r = evaluate(base, files, n_ctx=n_ctx, n_threads=1)
    print(f"KL against the unrotated F16 base on {Path(r.text).name} ({r.n_tokens} tokens):")
    print("| file | size | mean KL | top-1 | PPL |")
    print("|---|---|---|---|---|")
    for v in r.variants:
        print(f"| {Path(v.file).name} | {v.size_bytes:,} | {v.kl_mean:.4f} ± {v.kl_stderr:.4f} | {100 * v.top1:.1f}% | "
              f"{v.ppl:.1f} |")
    by = {Path(v.file).name: v for v in r.variants}
    print("\nRotated − unrotated at equal size, paired chunk by chunk:")
    print("| type | recipe | KL unrotated | KL rotated | difference | chunks rotated better |")
    print("|---|---|---|---|---|---|")
    for t in types:
        for kind, suffix in (("stock", ""), ("mix", "-MIX")):
            p, q = by[f"plain-{t}{suffix}.gguf"], by[f"rotated-{t}{suffix}.gguf"]
            d = np.asarray(q.kl_chunks) - np.asarray(p.kl_chunks)
            print(f"| {t} | {kind} | {p.kl_mean:.4f} ± {p.kl_stderr:.4f} | {q.kl_mean:.4f} ± {q.kl_stderr:.4f} | "
                  f"{100 * d.mean() / p.kl_mean:+.1f}% ({d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f}) | "
                  f"{(d < 0).sum()} of {len(d)} |")


if __name__ == "__main__":
    main()
