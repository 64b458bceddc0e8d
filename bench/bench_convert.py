"""Convert: `ggtool convert` vs llama.cpp's convert_hf_to_gguf.py on a >= 1 GB bf16 OLMoE checkpoint.

Rounds alternate which converter goes first (page cache and machine load hit both alike); each run is a fresh
child whose peak RSS the kernel reports. A plain `cp` of the checkpoint's bytes is the floor.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common import PY, REPO, Section, Timed, fmt_spread, gib, spread, timed
from compare_gguf import compare


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def pre_tokenizer_name(checkpoint: Path) -> str:
    """The llama.cpp pre-tokenizer ggtool derives from the tokenizer's split rules (given to the reference too)."""
    from ggtool.vocab import choose_pre_tokenizer

    return choose_pre_tokenizer(json.loads((checkpoint / "tokenizer.json").read_text()), "tokenizer.json").name


def run(ctx) -> Section:  # noqa: ANN001 - ctx: run_all.Context
    """Time both converters for f16 and bf16; compare their outputs tensor by tensor."""
    sec = Section("convert", "Convert: ggtool convert vs convert_hf_to_gguf.py")
    if "convert" not in ctx.commands:
        return sec.skip("`ggtool convert` does not exist")
    ckpt = ctx.big_checkpoint()
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    pre = pre_tokenizer_name(ckpt)
    work = ctx.work / "convert"
    work.mkdir(exist_ok=True)
    ref_cmd = [PY, REPO / "bench" / "reference_convert.py", ctx.ref.src, pre, "--"]
    results: dict = {"checkpoint_bytes": ckpt_bytes, "checkpoint": ctx.big_checkpoint_desc,
                     "tokenizer_pre_given_to_reference": pre, "rounds": ctx.rounds, "outtypes": {}}
    rows = []
    for outtype in ("f16", "bf16"):
        gg_out, ref_out, cp_out = work / f"ggtool-{outtype}.gguf", work / f"ref-{outtype}.gguf", work / "copy.bin"
        runs: dict[str, list[Timed]] = {"ggtool": [], "llama.cpp": [], "copy": []}
        for i in range(ctx.rounds):
            jobs = {
                "ggtool": lambda: timed([PY, "-m", "ggtool.cli", "convert", ckpt, "-o", gg_out, "--outtype", outtype],
                                        ctx.logs / f"convert-ggtool-{outtype}-{i}.log", cwd=REPO),
                "llama.cpp": lambda: timed([*ref_cmd, ckpt, "--outfile", ref_out, "--outtype", outtype],
                                           ctx.logs / f"convert-ref-{outtype}-{i}.log", cwd=REPO),
            }
            order = ["ggtool", "llama.cpp"] if i % 2 == 0 else ["llama.cpp", "ggtool"]
            for who in order:
                (gg_out if who == "ggtool" else ref_out).unlink(missing_ok=True)  # each run writes a new file
                runs[who].append(jobs[who]())
                ctx.say(f"convert {outtype} round {i + 1}/{ctx.rounds}: {who} {runs[who][-1].seconds:.1f} s, "
                        f"peak RSS {gib(runs[who][-1].peak_rss)}")
            runs["copy"].append(timed(["cp", next(ckpt.glob("*.safetensors")), cp_out],
                                      ctx.logs / f"convert-copy-{i}.log"))
            cp_out.unlink()
        diff = compare(gg_out, ref_out)
        same_file = _sha256(gg_out) == _sha256(ref_out)
        wall = spread([g.seconds / r.seconds for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
        cpu = spread([g.cpu_seconds / r.cpu_seconds for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
        rss = spread([g.peak_rss / r.peak_rss for g, r in zip(runs["ggtool"], runs["llama.cpp"])])
        floor = spread([g.seconds / c.seconds for g, c in zip(runs["ggtool"], runs["copy"])])
        results["outtypes"][outtype] = {
            "seconds": {k: [t.seconds for t in v] for k, v in runs.items()},
            "cpu_seconds": {k: [t.cpu_seconds for t in v] for k, v in runs.items()},
            "cpu_ratio_ggtool_over_llamacpp": cpu,
            "peak_rss_bytes": {k: [t.peak_rss for t in v] for k, v in runs.items() if k != "copy"},
            "wall_ratio_ggtool_over_llamacpp": wall, "peak_rss_ratio_ggtool_over_llamacpp": rss,
            "wall_ratio_ggtool_over_copy": floor, "output_bytes": {"ggtool": gg_out.stat().st_size,
                                                                    "llama.cpp": ref_out.stat().st_size},
            "whole_file_identical": same_file, "equivalence": diff.to_json()}
        sec.target(f"convert {outtype} wall (ggtool / llama.cpp)", "≤ 1.0×", wall["median"], wall["median"] <= 1.0)
        sec.target(f"convert {outtype} peak RSS (ggtool / llama.cpp)", "≤ 0.5×", rss["median"], rss["median"] <= 0.5)
        med = {k: spread([t.seconds for t in v])["median"] for k, v in runs.items()}
        med_rss = {k: spread([t.peak_rss for t in v])["median"] for k, v in runs.items() if k != "copy"}
        rows.append(f"| {outtype} | {med['ggtool']:.1f} s | {med['llama.cpp']:.1f} s | {med['copy']:.1f} s | "
                    f"{fmt_spread(wall)} | {fmt_spread(cpu)} | {gib(med_rss['ggtool'])} ({med_rss['ggtool'] / ckpt_bytes:.0%}) | "
                    f"{gib(med_rss['llama.cpp'])} ({med_rss['llama.cpp'] / ckpt_bytes:.0%}) | "
                    f"{fmt_spread(rss)} | {fmt_spread(floor)} |")
        equiv = ("byte-identical files" if same_file else
                 f"{diff.identical_tensors}/{diff.n_tensors[1]} tensors identical (files differ in layout: "
                 f"tensor order {'same' if diff.same_tensor_order else 'differs'}, metadata key order "
                 f"{'same' if diff.same_key_order else 'differs'})"
                 + ("" if diff.tensors_equivalent else " — DIFFERENCES, see results.json"))
        keys = (f"keys only in ggtool: {', '.join(diff.keys_only_in_a) or 'none'}; only in llama.cpp: "
                f"{', '.join(diff.keys_only_in_b) or 'none'}; same key, different value: "
                f"{', '.join(diff.keys_with_different_values) or 'none'}")
        results["outtypes"][outtype]["summary"] = f"{equiv}; {keys}"
        for p in (gg_out, ref_out):
            p.unlink()
    sec.results = results
    sec.markdown = [
        f"Checkpoint: {ctx.big_checkpoint_desc}, {gib(ckpt_bytes)} of bf16 safetensors. "
        f"{ctx.rounds} alternating rounds; ratios are per round (ggtool / llama.cpp), shown as median (min–max).",
        "",
        "| outtype | ggtool wall | llama.cpp wall | cp (floor) | wall ratio | CPU-time ratio "
        "| ggtool peak RSS (of checkpoint) | llama.cpp peak RSS | RSS ratio | ggtool wall / cp |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        *[f"- {t}: {results['outtypes'][t]['summary']}" for t in results["outtypes"]],
        f"- The reference converter is convert_hf_to_gguf.py from the same llama.cpp source, run unchanged through "
        f"bench/reference_convert.py, which only answers its pre-tokenizer hash lookup (unknown for a locally "
        f"trained BPE) with {pre!r}, the name ggtool derives from the tokenizer's split rules.",
    ]
    return sec
