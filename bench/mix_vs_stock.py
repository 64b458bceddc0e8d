"""ggtool's mix vs llama.cpp's stock recipe at the stock file's size, paired chunk by chunk on held-out text.

    python bench/mix_vs_stock.py [LADDER_DIR] [--ctx N] [--chunks N]   (default out/demo/ladder, from `make demo`;
                                                                       made with `ggtool ladder` if missing)

Sensitivities are measured once on the calibration text (never the held-out text) and reused for every rung;
the cost of choosing is reported as a multiple of one plain quantization (IQ2_M).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ggtool import DEFAULT_MODEL
from ggtool.imatrix import read_imatrix
from ggtool.ladder import ladder
from ggtool.mix import choose_and_write, groups, measure, quantizable_tensors
from ggtool.quality import evaluate
from ggtool.quantize import imatrix_kv_overrides, output_name, quantize_one

RUNGS = ("IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M")
CALIBRATION = Path(__file__).resolve().parent.parent / "imatrix_data" / "calibration.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ladder", nargs="?", default="out/demo/ladder")
    ap.add_argument("--ctx", type=int, default=256, help="calibration chunk size for the sensitivities")
    ap.add_argument("--chunks", type=int, default=8, help="calibration chunks for the sensitivities")
    ap.add_argument("--src", default=str(DEFAULT_MODEL))
    a = ap.parse_args()
    r = ladder(a.src, Path(a.ladder), list(RUNGS))
    base, im = r.base, read_imatrix(r.imatrix)
    stock = {Path(v.file).name: v for v in r.report.variants}
    t0 = time.perf_counter()
    quantize_one(base, Path(a.ladder) / "plain-IQ2_M.gguf", "IQ2_M", im)
    t_plain = time.perf_counter() - t0
    (Path(a.ladder) / "plain-IQ2_M.gguf").unlink()
    gs = groups(base, quantizable_tensors(base))
    sens = measure(base, gs, im.means(), [CALIBRATION], a.ctx, a.chunks)
    print(f"{len(gs)} groups, {sens.passes} sensitivity passes in {sens.seconds:.1f} s = "
          f"{sens.seconds / t_plain:.1f} × one plain IQ2_M quantization ({t_plain:.2f} s)")
    files = []
    for t in RUNGS:
        sf = base.parent / output_name(base, t)
        m = choose_and_write(base, base.parent / output_name(base, f"{t}-MIX"), target_bytes=sf.stat().st_size,
                             imatrix=im, kv_overrides=imatrix_kv_overrides(im, r.imatrix.name, len(im.means())),
                             label=f"{t}-mix", nominal=t, sensitivities=sens, confirm=False)
        print(f"  {t}: stock {sf.stat().st_size:,} B, mix {m.size_bytes:,} B "
              f"({100 * (m.size_bytes / sf.stat().st_size - 1):+.2f}%), predicted calibration KL {m.predicted_kl:.5f}")
        print("    " + ", ".join(f"{g}={ty}" for g, ty in m.types.items()))
        files.append(m.path)
    rep = evaluate(base, files)
    print(f"held-out {Path(rep.text).name}, {rep.n_tokens} scored tokens; paired (mix − stock) chunk by chunk")
    for t, v in zip(RUNGS, rep.variants):
        s = stock[output_name(base, t)]
        d = np.asarray(v.kl_chunks) - np.asarray(s.kl_chunks)
        print(f"  {t:<7} stock KL {s.kl_mean:.5f} ± {s.kl_stderr:.5f} PPL {s.ppl:.2f} top-1 {100 * s.top1:.1f}% | "
              f"mix KL {v.kl_mean:.5f} ± {v.kl_stderr:.5f} PPL {v.ppl:.2f} top-1 {100 * v.top1:.1f}% | "
              f"Δ {d.mean():+.5f} ± {d.std(ddof=1) / np.sqrt(len(d)):.5f} ({100 * d.mean() / s.kl_mean:+.1f}%), "
              f"mix better in {(d < 0).sum()}/{len(d)} chunks")


if __name__ == "__main__":
    main()
