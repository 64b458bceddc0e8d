"""ggtool's mix vs llama.cpp's stock recipe at the stock file's size, paired chunk by chunk on held-out text.

    python bench/mix_vs_stock.py [LADDER_DIR] [--src CHECKPOINT]   (default out/demo/ladder and the default model;
                                                                  `ggtool ladder --mix` is run first, resumably)

The sensitivities are measured once on the calibration text (never the held-out text) and reused for every rung;
their cost is reported as a multiple of one plain quantization (IQ2_M, same threads).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import print_pairs

from ggtool import DEFAULT_MODEL
from ggtool.ladder import ladder
from ggtool.mix import read_sensitivities
from ggtool.quality import evaluate
from ggtool.quantize import quantize_one

RUNGS = ("IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ladder", nargs="?", default="out/demo/ladder")
    ap.add_argument("--src", default=str(DEFAULT_MODEL))
    a = ap.parse_args()
    r = ladder(a.src, Path(a.ladder), list(RUNGS), mix=True)
    sens = read_sensitivities(Path(a.ladder) / "mix-sensitivities.json")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        quantize_one(r.base, Path(tmp) / "plain.gguf", "IQ2_M", r.imatrix)
        t_plain = time.perf_counter() - t0
    print(f"sensitivities: {sens.passes} passes on {sens.n_tokens} calibration tokens in {sens.seconds:.1f} s = "
          f"{sens.seconds / t_plain:.1f} × one plain IQ2_M quantization ({t_plain:.1f} s)")
    rows = {v.type: v for v in r.report.variants}
    files = [rows[t].file for t in RUNGS] + [rows[f"{t}-mix"].file for t in RUNGS]
    rep = {v.type: v for v in evaluate(r.base, files).variants}
    print_pairs(rep, RUNGS, f"held-out {Path(r.report.text).name}, {r.report.n_tokens} scored tokens", digits=4)


if __name__ == "__main__":
    main()
