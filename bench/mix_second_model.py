"""ggtool's mix vs the stock recipes on a second, differently shaped model built here: a neo-3 (Mixtral) with GQA,
4 experts top-1, expert width 512, 3 layers, random weights (seed 3), through `ladder --mix` on a slice of the
calibration text.

    python bench/mix_second_model.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from ggtool import fixtures
from ggtool.ladder import ladder

CALIBRATION = Path(__file__).resolve().parent.parent / "imatrix_data" / "calibration.txt"


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "out/mix-neo3")
    folder.mkdir(parents=True, exist_ok=True)
    tok = fixtures.train_spm_tokenizer(folder / "spm", vocab_size=4096)
    src = fixtures.make_mixtral(folder / "neo3-mix", tok, seed=3, hidden_size=256, intermediate_size=512, layers=3,
                                experts=4, top_k=1, heads=8, kv_heads=2, init_std=0.05)
    calibration = folder / "calibration.txt"
    calibration.write_text(CALIBRATION.read_text()[:60_000])
    r = ladder(src, folder / "ladder", calibration=[calibration], conversations=None, chunk_size=256, eval_ctx=256,
               mix=True)
    rows = {v.type: v for v in r.report.variants}
    for t in ("IQ2_M", "IQ3_M", "Q3_K_M", "Q4_K_M"):
        s, m = rows[t], rows[f"{t}-mix"]
        print(f"{t:<7} size {100 * (m.size_bytes / s.size_bytes - 1):+.2f}%  KL {s.kl_mean:.5f} → {m.kl_mean:.5f} "
              f"({100 * (m.kl_mean / s.kl_mean - 1):+.1f}%)  top-1 {100 * s.top1:.1f}% → {100 * m.top1:.1f}%  "
              f"PPL {s.ppl:.1f} → {m.ppl:.1f}")


if __name__ == "__main__":
    main()
