"""ggtool's mix vs the stock recipes on the second model of tests/test_mix_second_model.py: a neo-3 (Mixtral; 2
layers, 4 experts top-1 of width 512, GQA 8/2, SentencePiece 2048) trained there on the calibration text and the
conversations, `ladder --mix` on it (mix chosen on a calibration slice), then the paired comparison on the
held-out text (chunk by chunk, ± the standard error), with each step's time.

    python bench/mix_second_model.py [OUT_DIR] [--steps N] [--heldout-chars N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import print_pairs  # noqa: E402 (bench/common.py)
from ggtool.quality import evaluate  # noqa: E402
from tests.test_mix_second_model import RUNGS, build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="out/mix-neo3")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--heldout-chars", type=int, default=12_000)
    a = ap.parse_args()
    folder = Path(a.out)
    folder.mkdir(parents=True, exist_ok=True)
    log, r = build(folder, steps=a.steps, heldout_chars=a.heldout_chars,
                   on_step=lambda s: print(f"  {s.name:<20} {s.seconds:6.1f} s{'' if s.made else ' (up to date)'}",
                                           flush=True))
    print(f"trained: {log}")
    rows = {v.type: v for v in r.report.variants}
    files = [rows[t].file for t in RUNGS] + [rows[f"{t}-mix"].file for t in RUNGS]
    rep = {v.type: v for v in evaluate(r.base, files, Path(r.report.text), n_ctx=256).variants}
    print_pairs(rep, RUNGS, f"held-out {Path(r.report.text).name}, {r.report.n_tokens} scored tokens", digits=5)


if __name__ == "__main__":
    main()
