"""Search placements for a machine that is not necessarily this one; keep the fastest that fits.

Candidates: layers offloaded (ngl), the first N offloaded layers' expert tensors kept on the CPU (as
llama.cpp's --n-cpu-moe does, with per-layer -ot patterns), KV cache type, flash attention, and the
context size (halved down to 512 only when nothing fits at the requested one). A plan fits when every
device's predicted total is within its budget minus the margin and the host's within the RAM budget minus
its margin. Speed estimate: one generated token reads each memory's share of weights (experts scaled by
n_expert_used / n_expert) and KV cache once, at that memory's bandwidth, one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GgtoolError
from .memory import EXPERT_PATTERN, Device, Placement, Prediction, ModelShape, predict, read_gguf

KV_CHOICES = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
KV_PENALTY = {"f16": 1.0, "q8_0": 0.97, "q4_0": 0.90}  # a quantized cache costs some quality: rank it lower


@dataclass
class Budget:
    devices: list[Device]
    ram: int
    ram_bandwidth: float = 50e9
    margin: float = 0.10  # fraction of each device budget kept free (driver, fragmentation, other programs)
    ram_margin: float = 0.05


@dataclass
class Candidate:
    placement: Placement
    prediction: Prediction
    tokens_per_s: float
    score: float
    fits: bool
    why_not: str = ""


@dataclass
class PlanResult:
    model: ModelShape
    budget: Budget
    best: Candidate
    runners_up: list[Candidate]
    given_up: list[str] = field(default_factory=list)
    n_tried: int = 0
    # the fastest fitting plan that needs no tensor overrides and no server settings: whole layers only (ngl),
    # f16 KV cache (what Ollama does without server environment); None when `best` is already one
    layers_only: Candidate | None = None


def expert_override_patterns(layers: tuple[int, ...]) -> list[str]:
    """llama.cpp -ot patterns keeping these layers' expert tensors on the CPU."""
    return [rf"blk\.{il}\.{EXPERT_PATTERN}" for il in layers]


def estimate(shape: ModelShape, pred: Prediction, budget: Budget) -> float:
    seconds = pred.host.read_per_token / budget.ram_bandwidth
    for d in budget.devices:
        seconds += pred.devices[d.name].read_per_token / d.bandwidth
    return 1.0 / seconds if seconds > 0 else 0.0


def check_fit(pred: Prediction, budget: Budget) -> str:
    """Empty when the prediction fits, else what does not."""
    for d in budget.devices:
        limit = d.budget * (1 - budget.margin)
        if pred.devices[d.name].total > limit:
            return f"{d.name} needs {pred.devices[d.name].total / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB"
    limit = budget.ram * (1 - budget.ram_margin)
    if pred.host.total > limit:
        return f"host needs {pred.host.total / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB"
    return ""


def candidates(shape: ModelShape, budget: Budget, n_ctx: int, n_batch: int = 512,
               flash_attn: bool | None = None) -> list[Candidate]:
    out = []
    n = shape.n_layer
    split = tuple(float(d.budget) for d in budget.devices) if len(budget.devices) > 1 else ()
    fa_choices = [False, True] if flash_attn is None else [flash_attn]
    ngl_choices = range(n + 2) if budget.devices else [0]
    for ngl in ngl_choices:
        offloaded = list(range(max(n + 1 - ngl, 0), n))
        cpu_moe_choices = range(len(offloaded) + 1) if shape.n_expert else [0]
        for n_cpu_moe in cpu_moe_choices:
            cpu_layers = tuple(offloaded[:n_cpu_moe])
            for fa in fa_choices:
                for tk, tv in KV_CHOICES:
                    if tv != "f16" and not fa:
                        continue  # llama.cpp needs flash attention for a quantized V cache
                    p = Placement(ngl, n_ctx, tk, tv, fa, cpu_layers, n_batch, n_batch, split)
                    pred = predict(shape, p, budget.devices)
                    tps = estimate(shape, pred, budget)
                    why = check_fit(pred, budget)
                    out.append(Candidate(p, pred, tps, tps * KV_PENALTY[tk], not why, why))
    return out


def smallest_budgets(cands: list[Candidate], budget: Budget) -> str:
    """The smallest RAM (with the given VRAM) and VRAM (with the given RAM) any candidate would fit in."""
    parts = []
    dev_ok = [c for c in cands if all(c.prediction.devices[d.name].total <= d.budget * (1 - budget.margin)
                                      for d in budget.devices)]
    if dev_ok:
        need = min(c.prediction.host.total for c in dev_ok) / (1 - budget.ram_margin)
        parts.append(f"--ram {need / 2**30:.2f}GiB")
    if budget.devices:
        host_ok = [c for c in cands if c.prediction.host.total <= budget.ram * (1 - budget.ram_margin)]
        if host_ok:
            need = min(max(c.prediction.devices[d.name].total for d in budget.devices) for c in host_ok)
            parts.append(f"--vram {need / (1 - budget.margin) / 2**30:.2f}GiB")
    need_any = min(c.prediction.host.total for c in cands) / (1 - budget.ram_margin)
    if not parts:
        parts.append(f"--ram {need_any / 2**30:.2f}GiB with no offload")
    return " or ".join(parts)


def plan(shape: ModelShape, budget: Budget, n_ctx: int = 4096, n_batch: int = 512,
         flash_attn: bool | None = None, min_ctx: int = 512) -> PlanResult:
    """The fastest estimated placement of `shape` that fits `budget`, with runners-up and what was given up."""
    given_up: list[str] = []
    ctx = n_ctx
    tried = 0
    first_cands: list[Candidate] | None = None
    while True:
        cands = candidates(shape, budget, ctx, n_batch, flash_attn)
        tried += len(cands)
        first_cands = first_cands or cands
        fitting = sorted((c for c in cands if c.fits), key=lambda c: -c.score)
        if fitting or ctx // 2 < min_ctx:
            break
        given_up.append(f"context {ctx}: no placement fits")
        ctx //= 2
    if not fitting:
        devs = ", ".join(f"{d.name} {d.budget / 2**30:.2f} GiB" for d in budget.devices) or "no device"
        raise GgtoolError(f"{shape.name}: no placement fits {devs} and {budget.ram / 2**30:.2f} GiB RAM "
                          f"at any context ≥ {min_ctx}",
                          f"smallest budget that works at context {n_ctx}: {smallest_budgets(first_cands, budget)}")
    best = fitting[0]
    p = best.placement
    n = shape.n_layer
    if p.n_gpu_layers < n + 1 and budget.devices:
        more = [c for c in cands if c.placement.n_gpu_layers > p.n_gpu_layers and not c.fits]
        if more:
            given_up.append(f"offloading more than {p.n_gpu_layers} of {n + 1} layers: {more[0].why_not}")
    same = lambda c, **kw: all(getattr(c.placement, k) == kw.get(k, getattr(p, k))  # noqa: E731
                               for k in ("n_gpu_layers", "type_k", "type_v", "flash_attn", "cpu_expert_layers"))
    if p.cpu_expert_layers:
        one_less = [c for c in cands if same(c, cpu_expert_layers=p.cpu_expert_layers[:-1])]
        reason = one_less[0].why_not if one_less and one_less[0].why_not else "slower"
        given_up.append(f"experts of layers {_ranges(p.cpu_expert_layers)} stay in RAM (one layer fewer: {reason})")
    if p.type_k != "f16":
        f16 = [c for c in fitting if c.placement.type_k == "f16"]
        if f16:
            given_up.append(f"f16 KV cache ({p.type_k} instead): the best plan with it estimates "
                            f"{f16[0].tokens_per_s:.1f} tokens/s vs {best.tokens_per_s:.1f}")
        else:
            same_f16 = [c for c in cands if same(c, type_k="f16", type_v="f16")]
            given_up.append(f"f16 KV cache ({p.type_k} instead): "
                            f"{same_f16[0].why_not if same_f16 else 'no fitting plan has it'}")
    runners = [c for c in fitting[1:] if c.placement != p][:4]
    layers_only = None
    if p.cpu_expert_layers or (p.type_k, p.type_v) != ("f16", "f16"):
        layers_only = next((c for c in fitting if not c.placement.cpu_expert_layers
                            and (c.placement.type_k, c.placement.type_v) == ("f16", "f16")), None)
    return PlanResult(shape, budget, best, runners, given_up, tried, layers_only)


def _ranges(layers: tuple[int, ...]) -> str:
    return f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else str(layers[0])


# budgets a published model card answers "which file?" for (VRAM bytes, RAM bytes)
CARD_BUDGETS = {"1 GiB VRAM + 6 GiB RAM": (1 << 30, 6 << 30), "4 GiB VRAM + 16 GiB RAM": (4 << 30, 16 << 30),
                "CPU only, 8 GiB RAM": (0, 8 << 30)}


def recommend(paths: list[Path], budgets: dict[str, tuple[int, int]] = CARD_BUDGETS,
              n_ctx: int = 4096) -> list[tuple[str, str]]:
    """For each budget, the variant with the most bytes of weights (the most bits per weight) that the planner
    fits at `n_ctx` without shrinking the context; budgets no variant fits are left out."""
    shapes = sorted(((read_gguf(p), p) for p in paths), key=lambda sp: -sp[0].weight_bytes)
    out = []
    for label, (vram, ram) in budgets.items():
        budget = Budget([Device("GPU0", vram, 300e9, "gpu")] if vram else [], ram)
        for shape, path in shapes:
            try:
                fits = plan(shape, budget, n_ctx, min_ctx=n_ctx).best.placement.n_ctx == n_ctx
            except GgtoolError:
                fits = False
            if fits:
                out.append((label, path.name))
                break
    return out
