"""ggtool's own per-tensor mixes: a llama.cpp type for every tensor group, chosen by measured KL at a size.

1. **Groups.** The tensors llama.cpp quantizes (asked of llama.cpp itself: a dry run of llama_model_quantize)
   are grouped per layer: attention (q, k, v, output), each expert projection (ffn_gate/up/down_exps), the
   shared experts, dense feed-forward projections; then token_embd and output. The router and the norms are
   never quantized by llama.cpp, so they are not groups.
2. **Sensitivities, measured.** For each group and each candidate type (llama.cpp's own: IQ2_XXS … Q8_0), the
   base model with only that group quantized (everything else kept as it is, through llama_model_quantize's
   tensor-type overrides) is run by llama.cpp on a slice of the *calibration* text, and its mean KL divergence
   from the base is recorded. Held-out text is never used for choosing.
3. **Allocation.** The KL of a whole mix is taken as the sum of its groups' KL (first order); a multiple-choice
   knapsack (dynamic programming over bytes) picks one type per group minimising that sum under the size budget.
4. **The file.** Written by llama_model_quantize with one override per group (a user's `--tensor-type` comes
   first, so it wins), the importance matrix, and the mix recorded as `ggtool.mix.*` keys. A confirming eval
   on the calibration slice reports the predicted and the measured KL.

Everything numerical is llama.cpp's; the file loads in stock llama.cpp, Ollama and LM Studio.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from .calibration import calibration_tokens, model_chunks
from .divergence import kl_rows, log_softmax
from .errors import GgtoolError
from .gguf_in import read_header
from .llama.ggml_types import FILE_TYPES, GGML_TYPES, TENSOR_TYPES_NEEDING_IMATRIX
from .llama.model import ContextOptions, LlamaModel
from .llama.quantize import planned_types, quantize_file
from .llama.worker import Session
from .outputs import atomic_output, refuse_inputs, temporary_folder

# candidate tensor types, fewest bits first (llama.cpp's quantization types, as ggml names them)
CANDIDATES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
ALIGN = 32  # GGUF's default tensor data alignment
KEY_PREFIX = "ggtool.mix."
# the ftype a file is labelled with (general.file_type), by the type holding most of its bytes
FTYPE_OF = {"IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_S", "IQ3_XXS": "IQ3_XXS", "IQ3_S": "IQ3_S",
            "IQ4_XS": "IQ4_XS", "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M",
            "Q6_K": "Q6_K", "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL", "Q4_0": "Q4_0"}
_ATTN = re.compile(r"attn_(q|k|v|output|qkv|q_a|q_b|kv_a_mqa|kv_b)$")

Progress = Callable[[str, int, int], None]


def ggml_type(name: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[name.upper()]


def _pad(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def tensor_bytes(shape: tuple[int, ...], type_name: str) -> int:
    block, size = gguf.GGML_QUANT_SIZES[ggml_type(type_name)]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def group_of(name: str) -> str:
    """The tensor group a quantizable tensor belongs to (per layer; experts per projection)."""
    stem = name[:-len(".weight")] if name.endswith(".weight") else name
    m = re.match(r"(blk\.\d+)\.(.+)$", stem)
    if not m:
        return stem  # token_embd, output, ...
    blk, rest = m.groups()
    if _ATTN.match(rest):
        return f"{blk}.attn"
    if rest.endswith("_shexp"):
        return f"{blk}.ffn_shexp"
    return f"{blk}.{rest}"


@dataclass
class Group:
    name: str
    tensors: dict[str, tuple[int, ...]]  # tensor name → shape (ne order)
    base_types: dict[str, str]  # tensor name → its type in the base file

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.tensors.values())

    def bytes_at(self, type_name: str) -> int:
        return sum(_pad(tensor_bytes(s, type_name)) for s in self.tensors.values())

    def base_bytes(self) -> int:
        return sum(_pad(tensor_bytes(s, self.base_types[n])) for n, s in self.tensors.items())

    def allows(self, type_name: str) -> bool:
        block = gguf.GGML_QUANT_SIZES[ggml_type(type_name)][0]
        return all(s[0] % block == 0 for s in self.tensors.values())

    @property
    def pattern(self) -> str:
        return "^(" + "|".join(re.escape(n) for n in self.tensors) + ")$"


@dataclass
class Sensitivities:
    """KL on the calibration slice with one group quantized to one type (everything else as in the base)."""

    base: str
    kl: dict[str, dict[str, float]]  # group → type → mean KL
    n_tokens: int
    passes: int
    seconds: float


def write_sensitivities(sens: Sensitivities, dest: Path) -> Path:
    with atomic_output(dest) as tmp:
        tmp.write_text(json.dumps({"base": sens.base, "kl": sens.kl, "n_tokens": sens.n_tokens,
                                   "passes": sens.passes, "seconds": sens.seconds}, indent=1) + "\n")
    return dest


def read_sensitivities(path: Path) -> Sensitivities:
    try:
        d = json.loads(Path(path).read_text())
        return Sensitivities(d["base"], d["kl"], int(d["n_tokens"]), int(d["passes"]), float(d["seconds"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GgtoolError(f"{path}: not a sensitivities file ({e})", "delete it to measure again") from None


@dataclass
class MixResult:
    path: Path
    label: str
    types: dict[str, str]  # group → type
    bpw: float  # 8 × tensor bytes ÷ parameters, as `eval` counts it
    predicted_bytes: int
    target_bytes: int
    size_bytes: int
    predicted_kl: float  # sum of the groups' measured KL on the calibration slice
    confirmed_kl: float | None  # the whole file's KL on the calibration slice
    sensitivities: Sensitivities
    seconds_choose: float
    seconds_total: float
    rows: list[tuple[str, int, str, float]] = field(default_factory=list)  # group, params, type, KL


def groups(model: Path, quantizable: dict[str, str]) -> list[Group]:
    """The tensor groups of `model`, in file order, from llama.cpp's list of tensors it quantizes."""
    header = read_header(model)
    out: dict[str, Group] = {}
    for t in header.tensors:
        if t.name not in quantizable:
            continue
        g = out.setdefault(group_of(t.name), Group(group_of(t.name), {}, {}))
        g.tensors[t.name] = t.shape
        g.base_types[t.name] = t.type.name
    if not out:
        raise GgtoolError(f"{model}: llama.cpp quantizes none of its tensors")
    bad = sorted({ty for g in out.values() for ty in g.base_types.values()} - {"F32", "F16", "BF16"})
    if bad:
        raise GgtoolError(f"{model}: has {bad[0]} weights; a mix is chosen from an unquantized model",
                          "pass the F16/BF16/F32 GGUF made by `ggtool convert`")
    return list(out.values())


def quantizable_tensors(model: Path) -> dict[str, str]:
    """Tensor → type llama.cpp gives it in a pure Q8_0 file: the tensors llama.cpp quantizes at all."""
    return planned_types(model, FILE_TYPES["Q8_0"], [(".", GGML_TYPES["Q8_0"])])


def _background(gs: list[Group]) -> list[tuple[str, int]]:
    """Overrides that keep every group at its base type."""
    by_type: dict[str, list[str]] = {}
    for g in gs:
        for n, ty in g.base_types.items():
            by_type.setdefault(ty, []).append(n)
    return [("^(" + "|".join(re.escape(n) for n in names) + ")$", GGML_TYPES[ty]) for ty, names in by_type.items()]


class _Scorer:
    """Base log-probabilities on calibration chunks (in a temporary memory map), and KL of a variant on them."""

    def __init__(self, base: Path, text_files: list[Path], n_ctx: int, n_chunks: int, n_threads: int,
                 tmpdir: Path):
        if not n_threads:  # tiny models: one thread (synchronising threads costs more than the small matmuls)
            n_params = sum(t.n_elements for t in read_header(base).tensors)
            n_threads = min(os.cpu_count() or 1, max(1, n_params // 25_000_000))
        self.opts = ContextOptions(n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, flash_attn=None)
        self.first = n_ctx // 2
        self.n_ctx = n_ctx
        with LlamaModel(base) as model:
            ids = calibration_tokens(model, text_files, chat=False)
            every = model_chunks(model, ids, n_ctx, None, "calibration text", "--mix-ctx")
            step = max(1, len(every) // n_chunks)  # spread over the whole text
            self.chunks = every[::step][:n_chunks]
            scored = n_ctx - 1 - self.first
            self.logp = np.lib.format.open_memmap(tmpdir / "base.npy", mode="w+", dtype=np.float32,
                                                  shape=(len(self.chunks), scored, model.n_vocab))
            for i, c in enumerate(self.chunks):
                self.logp[i] = log_softmax(model.logits(c, self.opts)[self.first:n_ctx - 1])
        self.n_tokens = len(self.chunks) * scored

    def kl(self, path: Path) -> float:
        total = 0.0
        with LlamaModel(path) as model:
            for i, c in enumerate(self.chunks):
                logq = log_softmax(model.logits(c, self.opts)[self.first:self.n_ctx - 1])
                total += float(kl_rows(np.asarray(self.logp[i]), logq).sum())
        return total / self.n_tokens


def candidates_for(g: Group, means: dict[str, np.ndarray] | None, candidates: tuple[str, ...] = CANDIDATES
                   ) -> list[str]:
    """The candidate types llama.cpp can give every tensor of `g`: whole blocks per row, and the types that need
    an importance matrix only if the matrix covers every tensor (ggml aborts without one)."""
    covered = means is not None and all(n in means for n in g.tensors)
    return [t for t in candidates if g.allows(t) and (covered or t not in TENSOR_TYPES_NEEDING_IMATRIX)]


def measure(base: Path, gs: list[Group], means: dict[str, np.ndarray] | None, text_files: list[Path],
            n_ctx: int = 256, n_chunks: int = 8, candidates: tuple[str, ...] = CANDIDATES, n_threads: int = 0,
            progress: Progress | None = None, keep: list[Group] | None = None) -> Sensitivities:
    """KL on the calibration slice for every (group, candidate type), one group quantized at a time; the other
    groups (and the tensors of `keep`) stay as they are in the base."""
    t0 = time.perf_counter()
    background = _background(keep or gs)
    kl: dict[str, dict[str, float]] = {}
    todo = [(g, t) for g in gs for t in candidates_for(g, means, candidates)]
    # one worker for every probe: llama.cpp builds its IQ2/IQ3 grids once, not once per probe
    with temporary_folder("mix") as tmpdir, Session() as session:
        scorer = _Scorer(base, text_files, n_ctx, n_chunks, n_threads, tmpdir)
        probe = tmpdir / "probe.gguf"
        for i, (g, t) in enumerate(todo):
            if progress:
                progress(f"sensitivity {g.name} {t}", i, len(todo))
            quantize_file(base, probe, FILE_TYPES["Q8_0"], means, [(g.pattern, GGML_TYPES[t]), *background],
                          [], n_threads, session)
            kl.setdefault(g.name, {})[t] = scorer.kl(probe)
        if progress:
            progress("sensitivity", len(todo), len(todo))
        n_tokens = scorer.n_tokens
    return Sensitivities(str(base), kl, n_tokens, len(todo), time.perf_counter() - t0)


def allocate(gs: list[Group], sens: Sensitivities, budget: int, fixed: dict[str, str] | None = None,
             resolution: int = 4000) -> dict[str, str]:
    """One type per group minimising the summed KL with the groups' bytes within `budget`: a multiple-choice
    knapsack solved by dynamic programming over bytes (rounded up to budget/resolution, so the budget holds).
    `fixed` groups keep their given type (their bytes count against the budget)."""
    fixed = fixed or {}
    unit = max(1, budget // resolution)
    cap = budget // unit
    items = []  # per group: [(units, kl, type)]
    for g in gs:
        if g.name in fixed:
            opts = [(g.bytes_at(fixed[g.name]), 0.0, fixed[g.name])]
        else:
            opts = [(g.bytes_at(t), kl, t) for t, kl in sens.kl[g.name].items()]
        # drop dominated options (more bytes, no less KL)
        opts.sort(key=lambda o: (o[0], o[1]))
        kept = []
        for o in opts:
            if not kept or o[1] < kept[-1][1]:
                kept.append(o)
        items.append([(-(-b // unit), k, t) for b, k, t in kept])
    inf = float("inf")
    best = np.zeros(cap + 1)
    choice = []
    for opts in items:
        new = np.full(cap + 1, inf)
        pick = np.full(cap + 1, -1, dtype=np.int64)
        for j, (u, k, _) in enumerate(opts):
            if u > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[u:] = best[:cap + 1 - u] + k
            better = cand < new
            new[better] = cand[better]
            pick[better] = j
        best = new
        choice.append(pick)
    if not np.isfinite(best[cap]):
        smallest = sum(min(o[0] for o in opts) for opts in items) * unit
        raise GgtoolError(f"no mix fits in {budget:,} bytes of weights: the smallest candidate types need "
                          f"{smallest:,}", "choose a larger --target-size / --target-bpw")
    out = {}
    c = cap
    for g, opts, pick in zip(reversed(gs), reversed(items), reversed(choice)):
        j = int(pick[c])
        u, _, t = opts[j]
        out[g.name] = t
        c -= u
    return {g.name: out[g.name] for g in gs}


def size_model(model: Path, gs: list[Group]) -> tuple[int, int]:
    """(bytes of the file outside the groups' tensor data, parameters of all tensors) of `model`."""
    header = read_header(model)
    fixed = model.stat().st_size - sum(g.base_bytes() for g in gs)
    return fixed, sum(t.n_elements for t in header.tensors)


def mix_kvs(label: str, types: dict[str, str], target: int) -> list[tuple[str, str | int]]:
    """The ggtool.mix.* keys: the label, the target size, and one key per group with its type."""
    return [(KEY_PREFIX + "label", label), (KEY_PREFIX + "target_bytes", int(target)),
            *((KEY_PREFIX + "type." + g, t) for g, t in types.items())]


def _kv_bytes(kvs: list[tuple[str, str | int]]) -> int:
    return sum(8 + len(k) + 4 + (8 + len(v) if isinstance(v, str) else 8) for k, v in kvs)


def choose_and_write(base: Path | str, dest: Path | str | Callable[[float], Path], *, target_bytes: int | None = None,
                     target_bpw: float | None = None, imatrix=None,  # noqa: ANN001
                     tensor_types: list = (), kv_overrides: list = (), calibration: list[Path] | None = None,
                     label: str | None = None,
                     nominal: str | None = None, n_ctx: int = 256, n_chunks: int = 8,
                     candidates: tuple[str, ...] = CANDIDATES, sensitivities: Sensitivities | None = None,
                     confirm: bool = True, n_threads: int = 0, progress: Progress | None = None,
                     session=None) -> MixResult:  # noqa: ANN001
    """Choose a mix for `base` at `target_bytes` (file size) or `target_bpw` (8 × tensor bytes ÷ parameters, as
    `eval` counts it) and write it to `dest` atomically. `imatrix` is an Imatrix (or None); `tensor_types` are
    parsed --tensor-type overrides (objects with .pattern, .type_name, .ggml_type), applied before the mix.
    `dest` may be a function of the mix's bits per weight. `kv_overrides` (e.g. quantize.imatrix.*) go in before
    the ggtool.mix.* keys. `sensitivities` from an
    earlier call on the same base and calibration are reused; `session` (a llama.worker.Session) quantizes in a
    worker kept for several calls."""
    t0 = time.perf_counter()
    base = Path(base)
    if (target_bytes is None) == (target_bpw is None):
        raise GgtoolError("give exactly one of --target-size and --target-bpw")
    calibration = [Path(p) for p in (calibration or [Path(__file__).resolve().parent.parent / "imatrix_data" /
                                                    "calibration.txt"])]
    for p in calibration:
        if not p.is_file():
            raise GgtoolError(f"{p}: no such file", "pass calibration text with --calibration")
    all_groups = groups(base, quantizable_tensors(base))
    fixed_bytes, n_params = size_model(base, all_groups)
    header = read_header(base)
    means = imatrix.means() if imatrix is not None else None
    # tensors a --tensor-type names keep that type (llama.cpp applies the first matching pattern, and the user's
    # come first); the mix is chosen for the rest of each group
    user: dict[str, str] = {}
    for g in all_groups:
        for n in g.tensors:
            tt = next((tt for tt in tensor_types if re.search(tt.pattern, n)), None)
            if tt is not None:
                user[n] = tt.type_name
    gs = [Group(g.name, {n: s for n, s in g.tensors.items() if n not in user},
                {n: ty for n, ty in g.base_types.items() if n not in user}) for g in all_groups]
    gs = [g for g in gs if g.tensors]
    shapes = {n: s for g in all_groups for n, s in g.tensors.items()}
    user_bytes = sum(_pad(tensor_bytes(shapes[n], ty)) for n, ty in user.items())
    kvs_probe = mix_kvs(label or "mix 0.00 bpw", {g.name: "IQ2_XXS" for g in all_groups}, 0)
    extra_kv = _kv_bytes(kvs_probe) + _kv_bytes(list(kv_overrides))
    if target_bpw is not None:  # tensor bytes as `eval` counts them (the groups' padding counted too: a bound)
        budget = int(target_bpw * n_params / 8) - user_bytes - sum(t.n_bytes for t in header.tensors
                                                                   if t.name not in shapes)
        target_bytes_file = None
    else:
        budget = int(target_bytes) - fixed_bytes - extra_kv - user_bytes
        target_bytes_file = int(target_bytes)
    if budget <= 0:
        what = f"--target-size {target_bytes:,} bytes" if target_bpw is None else f"--target-bpw {target_bpw}"
        raise GgtoolError(f"{what} leaves no room for the weights of {base.name}",
                          "choose a larger --target-size / --target-bpw")
    smallest = sum(min((g.bytes_at(t) for t in candidates_for(g, means, candidates)), default=g.base_bytes())
                   for g in gs)
    if smallest > budget:  # before any measuring
        raise GgtoolError(f"{base.name}: no mix fits in {budget:,} bytes of weights: the smallest candidate types "
                          f"need {smallest:,}", "choose a larger --target-size / --target-bpw")
    sens = sensitivities or measure(base, gs, means, calibration, n_ctx, n_chunks, candidates, n_threads, progress,
                                    keep=all_groups)
    missing = [g.name for g in gs if g.name not in sens.kl]
    if missing:
        raise GgtoolError(f"sensitivities have no entry for {missing[0]}", "measure them on this model")
    try:
        types = allocate(gs, sens, budget)
    except GgtoolError as e:
        raise GgtoolError(f"{base.name}: {e.message}", "choose a larger --target-size / --target-bpw") from None
    t_choose = time.perf_counter() - t0
    predicted = fixed_bytes + extra_kv + user_bytes + sum(g.bytes_at(types[g.name]) for g in gs)
    by_type: dict[str, int] = {}
    for g in gs:
        by_type[types[g.name]] = by_type.get(types[g.name], 0) + g.bytes_at(types[g.name])
    nominal = nominal or FTYPE_OF.get(max(by_type, key=by_type.get) if by_type else "Q8_0", "Q8_0")
    chosen = {**{n: ty for n, ty in user.items()}, **{n: types[g.name] for g in gs for n in g.tensors}}
    bpw = 8 * (sum(t.n_bytes for t in header.tensors if t.name not in shapes) + sum(
        tensor_bytes(shapes[n], ty) for n, ty in chosen.items())) / n_params
    # what each group holds (a group partly or wholly named by --tensor-type: its types joined)
    recorded = {g.name: "+".join(sorted({chosen[n] for n in g.tensors})) for g in all_groups}
    dest = Path(dest(bpw) if callable(dest) else dest)
    label = label or f"mix {bpw:.2f} bpw"
    refuse_inputs(dest, [("the input model", base)])
    overrides = [(tt.pattern, tt.ggml_type) for tt in tensor_types]
    overrides += [(g.pattern, GGML_TYPES[types[g.name]]) for g in gs]
    kvs = list(kv_overrides) + mix_kvs(label, recorded, target_bytes_file if target_bytes_file is not None else predicted)
    if progress:
        progress("write", 0, 1)
    with atomic_output(dest) as tmp:
        quantize_file(base, tmp, FILE_TYPES[nominal], means, overrides, kvs, n_threads, session)
    confirmed = None
    if confirm:
        with temporary_folder("mix") as tmp:
            confirmed = _Scorer(base, calibration, n_ctx, n_chunks, n_threads, tmp).kl(dest)
    rows = [(g.name, g.n_params, recorded[g.name], sens.kl.get(g.name, {}).get(types.get(g.name, ""), float("nan")))
            for g in all_groups]
    predicted_kl = sum(r[3] for r in rows if np.isfinite(r[3]))
    return MixResult(dest, label, recorded, bpw, predicted, target_bytes_file or predicted, dest.stat().st_size,
                     predicted_kl, confirmed, sens, t_choose, time.perf_counter() - t0, rows)


def read_mix(path: Path | str) -> dict[str, str]:
    """The ggtool.mix.* keys of a GGUF (empty if it is not a ggtool mix)."""
    return {k[len(KEY_PREFIX):]: str(v) for k, v in read_header(path).values.items() if k.startswith(KEY_PREFIX)}
