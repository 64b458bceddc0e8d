"""What collecting an importance matrix costs: the same forward passes with and without ggtool's eval callback.

    .venv/bin/python bench/imatrix_overhead.py [MODEL.gguf] [--chunks 8] [--chunk-size 256] [--rounds 5]

Without MODEL a random OLMoE fixture (hidden 256, 3 layers, 8 experts top-2) is built in a temporary folder.
Both variants decode the same chunks in the same process with every token an output (as `ggtool imatrix`
does); runs alternate, and the ratio is reported per round and as the ratio of the best times (the least
disturbed by other load on a shared machine). Target: ≤ 1.5×.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ggtool import fixtures  # noqa: E402
from ggtool.calibration import make_chunks  # noqa: E402
from ggtool.llama.imatrix import ImatrixCollector, adds_bos, bos_token, evaluate_chunks  # noqa: E402
from ggtool.llama.model import LlamaModel  # noqa: E402


def fixture_model(folder: Path) -> Path:
    from ggtool.convert import convert

    tok = fixtures.train_bpe_tokenizer(folder / "tok")
    src = fixtures.make_olmoe(folder / "olmoe", tok, layers=3)
    return convert(src, folder / "olmoe-f16.gguf", "f16").dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or fixture_model(Path(tmp))
        text_path = REPO / "imatrix_data" / "calibration.txt"
        text = text_path.read_text() if text_path.is_file() else fixtures.stdlib_text(0, 400_000)
        with LlamaModel(model_path) as model:
            bos = bos_token(model) if adds_bos(model) else None
            chunks = make_chunks(model.tokenize(text, add_special=True), args.chunk_size, bos)[:args.chunks]
            evaluate_chunks(model, chunks[:1], n_threads=args.threads)  # warm-up: page in the weights
            plain, collecting = [], []
            for i in range(args.rounds):
                for with_cb in ((False, True) if i % 2 == 0 else (True, False)):
                    t0 = time.perf_counter()
                    evaluate_chunks(model, chunks, ImatrixCollector() if with_cb else None, n_threads=args.threads)
                    (collecting if with_cb else plain).append(time.perf_counter() - t0)
    ratios = [c / p for c, p in zip(collecting, plain)]
    result = {"model": str(args.model or "random OLMoE fixture (hidden 256, 3 layers, 8 experts top-2, F16)"),
              "chunks": len(chunks), "chunk_size": args.chunk_size, "rounds": args.rounds,
              "seconds_plain": plain, "seconds_collecting": collecting, "ratio_per_round": ratios,
              "ratio_median": statistics.median(ratios), "ratio_best_times": min(collecting) / min(plain)}
    print(json.dumps(result, indent=2))
    verdict = "within" if result["ratio_best_times"] <= 1.5 else "ABOVE"
    print(f"collecting costs {result['ratio_best_times']:.2f}× the plain forward passes (best times; median of "
          f"rounds {result['ratio_median']:.2f}×): {verdict} the 1.5× target", file=sys.stderr)


if __name__ == "__main__":
    main()
