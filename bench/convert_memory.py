"""Peak memory of `ggtool convert` on a synthetic OLMoE checkpoint of >= 1 GB (target: below 40% of its size).

Usage: python bench/convert_memory.py [--work DIR] [--layers N]
Writes the checkpoint with a streaming safetensors writer (so the generator stays small too), runs
the real CLI in a child process and reads the child's peak RSS from the kernel.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ggtool import fixtures

HIDDEN, FF, EXPERTS, TOP_K, HEADS, VOCAB = 1024, 512, 32, 4, 8, 4160


def tensor_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for b in range(layers):
        p = f"model.layers.{b}"
        shapes.update({f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,),
                       f"{p}.self_attn.q_norm.weight": (HIDDEN,), f"{p}.self_attn.k_norm.weight": (HIDDEN,),
                       f"{p}.mlp.gate.weight": (EXPERTS, HIDDEN)})
        for w in "qkvo":
            shapes[f"{p}.self_attn.{w}_proj.weight"] = (HIDDEN, HIDDEN)
        for x in range(EXPERTS):
            shapes[f"{p}.mlp.experts.{x}.gate_proj.weight"] = (FF, HIDDEN)
            shapes[f"{p}.mlp.experts.{x}.up_proj.weight"] = (FF, HIDDEN)
            shapes[f"{p}.mlp.experts.{x}.down_proj.weight"] = (HIDDEN, FF)
    return shapes


def write_checkpoint(folder: Path, layers: int) -> int:
    """A bf16 OLMoE checkpoint written tensor by tensor; returns its size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(layers)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(shapes):
        n = int(np.prod(shapes[name])) * 2
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in sorted(shapes):
            x = (rng.standard_normal(shapes[name], dtype=np.float32) * 0.02).view(np.uint32)
            f.write((x >> 16).astype(np.uint16).tobytes())
    config = {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": VOCAB,
              "hidden_size": HIDDEN, "intermediate_size": FF, "num_hidden_layers": layers,
              "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "num_experts": EXPERTS,
              "num_experts_per_tok": TOP_K, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "norm_topk_prob": False, "tie_word_embeddings": False,
              "hidden_act": "silu", "eos_token_id": 0, "pad_token_id": 1}
    (folder / "config.json").write_text(json.dumps(config))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--layers", type=int, default=10)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ggtool-bench-"))
    src = work / "olmoe-synthetic"
    size = write_checkpoint(src, args.layers)
    fixtures.train_bpe_tokenizer(work / "tok")
    fixtures.copy_tokenizer(work / "tok", src)
    results = {}
    for outtype in ("f16", "bf16"):
        out = work / f"out-{outtype}.gguf"
        t0 = time.perf_counter()
        # a fresh child per run, so ru_maxrss is this conversion's alone
        code = ("import resource, subprocess, sys; "
                "rc = subprocess.call([sys.executable, '-m', 'ggtool.cli', 'convert', sys.argv[1], '-o', sys.argv[2],"
                " '--outtype', sys.argv[3]]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
        proc = subprocess.run([sys.executable, "-c", code, str(src), str(out), outtype],
                              capture_output=True, text=True, check=True)
        peak = int(proc.stdout.strip().splitlines()[-1]) * 1024
        results[outtype] = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_bytes": peak,
                            "peak_rss_fraction": round(peak / size, 4), "output_bytes": out.stat().st_size}
        out.unlink()
    report = {"checkpoint_bytes": size, "layers": args.layers, "results": results,
              "target": "peak RSS < 40% of checkpoint size",
              "passed": all(r["peak_rss_fraction"] < 0.40 for r in results.values())}
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
