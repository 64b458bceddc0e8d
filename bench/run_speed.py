"""Prompt and decode tokens/s through ggtool's own llama.cpp path (ggtool.llama.model.LlamaModel), as llama-bench
measures them: pp = one batch of N random prompt tokens into an empty cache; tg = N tokens generated one at a time
(here by `LlamaModel.stream`, the loop `ggtool run` uses, greedy sampler included). One warm-up, then R reps.

Usage: python bench/run_speed.py MODEL --prompt N --gen N --threads T --batch B --ubatch U --reps R [--ngl N]
Prints one JSON line: {"pp": [tokens/s ...], "tg": [tokens/s ...], "tg_tokens": [...]}.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from ggtool.llama import model as M


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    for opt in ("prompt", "gen", "threads", "batch", "ubatch", "reps", "ngl"):
        ap.add_argument(f"--{opt}", type=int, default=0)
    a = ap.parse_args()
    llm = M.LlamaModel(a.model, n_gpu_layers=a.ngl)
    rng = random.Random(0)
    prompt = [rng.randrange(2, llm.n_vocab) for _ in range(a.prompt)]  # no special tokens, like llama-bench
    opts = M.ContextOptions(n_ctx=a.prompt + a.gen, n_batch=a.batch, n_ubatch=a.ubatch, n_threads=a.threads)
    pp, tg, tg_tokens = [], [], []
    for rep in range(a.reps + 1):
        ctx = llm._context(opts)
        try:
            t0 = time.perf_counter()
            for start in range(0, len(prompt), a.batch):
                llm._decode(ctx, prompt[start:start + a.batch], start, all_logits=False)
            dt = time.perf_counter() - t0
        finally:
            M.L.llama_free(ctx)
        # decode: the stream ggtool run iterates; the first token comes from a one-token prompt (llama-bench's tg
        # starts from an empty cache too), the clock covers the N-1 sample+decode steps after it
        stamps = []
        for _ in llm.stream(prompt[:1], a.gen + 1, opts):
            stamps.append(time.perf_counter())
        if rep == 0:
            continue  # warm-up
        pp.append(len(prompt) / dt)
        if len(stamps) > 1:
            tg.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            tg_tokens.append(len(stamps) - 1)
    llm.close()
    print(json.dumps({"pp": pp, "tg": tg, "tg_tokens": tg_tokens}))


if __name__ == "__main__":
    main()
