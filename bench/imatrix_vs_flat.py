"""Does the importance matrix help? IQ2_M and IQ3_M with the ladder's matrix vs a flat (all-ones) one.

    python bench/imatrix_vs_flat.py [LADDER_DIR]     (default out/demo/ladder, made by `make demo`)

Also a control that must lose: the same matrix with each expert's rows given to the next expert.
Output and token embeddings are kept f16 in a second set, so only the blk.* tensors differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ggtool.imatrix_file import Imatrix, ImatrixEntry, read_imatrix
from ggtool.quality import evaluate
from ggtool.quantize import quantize_one

KEEP_F16 = ["output\\.weight=f16", "token_embd\\.weight=f16"]


def shifted(im: Imatrix) -> Imatrix:
    """Each expert's statistics moved to the next expert: right data, wrong place."""
    roll = lambda e: ImatrixEntry(np.roll(e.sums, 1, axis=0), np.roll(e.counts, 1)) if e.n_mat > 1 else e  # noqa
    return Imatrix({n: roll(e) for n, e in im.entries.items()}, ["shifted"], im.chunk_count, im.chunk_size)


def main() -> None:
    ladder = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo/ladder")
    base = next(ladder.glob("*-F16.gguf"))
    im = read_imatrix(ladder / "imatrix.gguf")
    work = ladder / "imatrix-vs-flat"
    work.mkdir(exist_ok=True)
    cases = [(t, label, m, []) for t in ("IQ2_M", "IQ3_M") for label, m in (("imatrix", im), ("flat", im.flat()))]
    cases += [("IQ2_M", f"{label}+f16-out", m, KEEP_F16)
              for label, m in (("imatrix", im), ("flat", im.flat()), ("shifted", shifted(im)))]
    files = [quantize_one(base, work / f"{t}-{label}.gguf", t, m, tensor_types=tt, imatrix_label=label).path
             for t, label, m, tt in cases]
    r = evaluate(base, files)
    print(f"base {base.name}, held-out {Path(r.text).name}, {r.n_tokens} scored tokens")
    by_stem = {Path(v.file).stem: v for v in r.variants}
    for stem, v in by_stem.items():
        print(f"  {stem:<28} KL mean {v.kl_mean:.5f} ± {v.kl_stderr:.5f}  p99 {v.kl_p99:.4f}  "
              f"top-1 {100 * v.top1:.1f}%")
    print("paired, chunk by chunk (imatrix minus the other; negative: the importance matrix is better):")
    for t in ("IQ2_M", "IQ3_M", "IQ2_M+f16-out"):
        kind, _, suffix = t.partition("+")
        mine = np.asarray(by_stem[f"{kind}-imatrix{'+' + suffix if suffix else ''}"].kl_chunks)
        for other in ("flat", "shifted"):
            o = by_stem.get(f"{kind}-{other}{'+' + suffix if suffix else ''}")
            if o is None:
                continue
            d = mine - np.asarray(o.kl_chunks)
            print(f"  {t:<14} vs {other:<8} {d.mean():+.5f} ± {d.std(ddof=1) / np.sqrt(len(d)):.5f} "
                  f"({100 * d.mean() / o.kl_mean:+.1f}%), imatrix better in {(d < 0).sum()}/{len(d)} chunks")


if __name__ == "__main__":
    main()
