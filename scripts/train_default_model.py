"""Train ggtool's embedded default model: a small OLMoE that has learned Python and a chat format.

    python scripts/train_default_model.py [--out ggtool/default_model] [--steps N] [--seed S]

Everything it reads is on every machine or in this repository: the Python standard library's
top-level modules (sources and docstrings) and imatrix_data/ (calibration text and conversations,
written for this project). Nothing is downloaded. Deterministic for a given seed, thread count and
Python version (the stdlib is the corpus); about 23 minutes on 2 idle CPU cores.

Held-out text (every 10th stdlib module, never trained on) measures the result against a unigram
baseline; the figures go to training_log.json next to the weights and into the model card.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ggtool.fixtures import (TULU_TEMPLATE, held_out_loss, stdlib_files, train_causal_lm,  # noqa: E402
                             unigram_loss)

NAME = "ggtool-tiny-moe"
SPECIAL = ["<|endoftext|>", "<|padding|>", "<|system|>", "<|user|>", "<|assistant|>"]
# hidden and expert widths are multiples of 256 so every K-quant and I-quant applies without fallback
SHAPE = dict(hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, vocab_size=4096)
SEQ_LEN = 256
BATCH = 8
HELDOUT_EVERY = 10  # stdlib module i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1


# -- corpus ------------------------------------------------------------------------------------------
def split_stdlib() -> tuple[list[Path], list[Path]]:
    """The stdlib modules to train on and the held-out ones."""
    files = stdlib_files()
    held = [p for i, p in enumerate(files) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return [p for p in files if p not in held], held


def docstring_questions(files: list[Path]) -> list[list[dict]]:
    """Chat turns asking what a public stdlib function or class does, answered by its docstring's summary."""
    chats = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            summary = " ".join(doc.split("\n\n")[0].split())
            if not 20 <= len(summary) <= 400:
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            chats.append([{"role": "user", "content": f"What does the {kind} {path.stem}.{node.name} do?"},
                          {"role": "assistant", "content": summary}])
    return chats


def load_conversations(path: Path) -> list[list[dict]]:
    if not path.exists():
        return []
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def render(chats: list[list[dict]]) -> list[str]:
    """Conversations as the Tulu chat template writes them (the template the model ships with)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment().from_string(TULU_TEMPLATE)
    return [template.render(messages=c, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            add_generation_prompt=False) for c in chats]


def corpus() -> tuple[list[str], list[str]]:
    """Training documents and held-out documents."""
    train_files, held_files = split_stdlib()
    read = lambda p: p.read_text(encoding="utf-8", errors="replace")  # noqa: E731
    data = ROOT / "imatrix_data"
    train = [read(p) for p in train_files]
    calibration = data / "calibration.txt"
    if calibration.exists():
        train += [s for s in re.split(r"\n={5,}\n", read(calibration)) if s.strip()]
    chats = docstring_questions(train_files) + load_conversations(data / "conversations.jsonl")
    train += render(chats) * 2  # chats are short: seen twice so the format is learned
    return train, [read(p) for p in held_files]


# -- tokenizer ---------------------------------------------------------------------------------------
def train_tokenizer(docs: list[str], folder: Path):
    """Byte-level BPE (GPT-2 pre-tokenizer) on the training documents, saved HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=SHAPE["vocab_size"], show_progress=False, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((line for d in docs for line in d.splitlines(keepends=True)), trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
              "eos_token": "<|endoftext|>", "pad_token": "<|padding|>", "add_bos_token": False,
              "add_eos_token": False, "model_max_length": 4096, "chat_template": TULU_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok


def encode(tok, docs: list[str]) -> np.ndarray:
    """One token stream: documents joined by <|endoftext|>."""
    eos = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


# -- training ----------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict:
    import torch
    from transformers import OlmoeConfig, OlmoeForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_docs, held_docs = corpus()
    tok = train_tokenizer(train_docs, out)
    train_ids, held_ids = encode(tok, train_docs), encode(tok, held_docs)
    print(f"corpus: {len(train_docs)} training documents, {len(train_ids):,} tokens; "
          f"held out {len(held_ids):,} tokens ({time.time() - t0:.0f} s)", flush=True)

    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    config = OlmoeConfig(**SHAPE, max_position_embeddings=4096, norm_topk_prob=False, tie_word_embeddings=False,
                         router_aux_loss_coef=0.01, initializer_range=0.02,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
                         pad_token_id=ids["<|padding|>"])
    model = OlmoeForCausalLM(config)
    t_train = time.time()

    def log(step: int, loss: float) -> None:
        rate = (step + 1) * BATCH * SEQ_LEN / (time.time() - t_train)
        print(f"step {step:5d}/{args.steps}  loss {loss:.3f}  {rate:,.0f} tokens/s", flush=True)
    train_causal_lm(model, train_ids, steps=args.steps, batch=BATCH, seq_len=SEQ_LEN, lr=args.lr, seed=args.seed,
                    aux_loss_coef=config.router_aux_loss_coef, log=log)
    train_seconds = time.time() - t_train

    # the shipped weights are bf16, as OLMoE's are: measure the model as shipped
    model.config.output_router_logits = False
    model = model.to(torch.bfloat16).to(torch.float32)
    loss = held_out_loss(model, held_ids, SEQ_LEN, BATCH)
    baseline = unigram_loss(train_ids, held_ids, SHAPE["vocab_size"])
    model.to(torch.bfloat16).save_pretrained(str(out))
    model.config.to_json_file(str(out / "config.json"))
    write_generation_config(out, config)
    log = {"name": NAME, "seed": args.seed, "steps": args.steps, "batch": BATCH, "seq_len": SEQ_LEN,
           "lr": args.lr, "threads": args.threads, "train_tokens_seen": args.steps * BATCH * SEQ_LEN,
           "corpus_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids)),
           "heldout_loss": round(loss, 4), "unigram_loss": round(baseline, 4),
           "below_unigram_nats": round(baseline - loss, 4), "train_seconds": round(train_seconds),
           "total_seconds": round(time.time() - t0), "python": platform.python_version(),
           "parameters": sum(p.numel() for p in model.parameters())}
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    write_model_card(out, log)
    return log


MODEL_CARD = """---
model_name: {name}
license: mit
language: [en, code]
tags: [olmoe, moe, tiny, ggtool]
---
# {name}

The default model that ships inside ggtool: a {params:.1f}M-parameter Mixture-of-Experts in OLMoE's
format (transformers `OlmoeForCausalLM`, bf16 safetensors), small enough to commit and to run the
whole ggtool pipeline (convert, imatrix, the IQ2_M..Q4_K_M ladder, plan, Ollama/LM Studio exports)
in minutes on a CPU. It is a test article, not an assistant: it writes Python-flavoured text and
answers "what does module.function do?" with something docstring-shaped.

| | |
|---|---|
| shape | hidden {hidden_size}, {num_hidden_layers} layers, {num_attention_heads} heads, {num_experts} experts (top-{num_experts_per_tok}, no renormalisation, as OLMoE), expert width {intermediate_size}, vocab {vocab_size} |
| tokenizer | byte-level BPE (GPT-2 pre-tokenizer) trained on the same corpus; `<|endoftext|>` is BOS/EOS; `<|system|>`, `<|user|>`, `<|assistant|>` are special tokens |
| chat template | OLMoE-Instruct's Tulu template (`<|user|>\\n...\\n<|assistant|>\\n...<|endoftext|>`) |
| training | {steps} steps × {batch} × {seq_len} tokens ({train_tokens_seen:,} tokens), AdamW lr {lr}, cosine, seed {seed}, {threads} CPU threads, {train_seconds} s; router load-balancing loss 0.01 |
| held-out loss | **{heldout_loss} nats/token** vs unigram baseline {unigram_loss} ({below_unigram_nats} below), on {heldout_tokens:,} tokens of never-trained stdlib modules, measured on the bf16 weights as shipped |

## Data
Nothing downloaded; everything is on every machine with Python {python} or in this repository:
- the Python standard library's top-level modules (every {every}th module held out for evaluation);
- `imatrix_data/calibration.txt` and `imatrix_data/conversations.jsonl` (written for ggtool);
- one chat per public stdlib function or class with a docstring: "What does the function
  `module.name` do?" answered with the docstring's first paragraph, in the Tulu format.

`imatrix_data/heldout.txt` (ggtool's quantization-quality text) is not trained on.

## Reproduce
`python scripts/train_default_model.py` (deterministic for a given seed, thread count and Python
version); `training_log.json` holds the figures above.

## License
MIT, as ggtool. The training text is the Python standard library (PSF license) and text written for ggtool.
"""


def write_generation_config(out: Path, config) -> None:  # noqa: ANN001
    """Sampling defaults for a model this small: mild temperature, nucleus and a repetition penalty."""
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id, do_sample=True, temperature=0.7, top_p=0.9, top_k=40,
                     repetition_penalty=1.1).save_pretrained(str(out))


def write_model_card(out: Path, log: dict) -> None:
    (out / "README.md").write_text(MODEL_CARD.format(**log, **SHAPE, params=log["parameters"] / 1e6,
                                                     every=HELDOUT_EVERY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "ggtool" / "default_model")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--card-only", action="store_true",
                        help="only rewrite README.md and generation_config.json from an existing training_log.json")
    args = parser.parse_args()
    if args.card_only:
        from transformers import OlmoeConfig

        write_generation_config(args.out, OlmoeConfig.from_pretrained(str(args.out)))
        write_model_card(args.out, json.loads((args.out / "training_log.json").read_text()))
        return
    log = train(args)
    print(json.dumps(log, indent=2))
    if log["below_unigram_nats"] < 1.0:
        sys.exit(f"held-out loss {log['heldout_loss']} is not 1 nat below the unigram baseline {log['unigram_loss']}")


if __name__ == "__main__":
    main()
