"""`ggtool ladder`: convert → importance matrix → the quantization ladder → quality table, resumable.

Every output is recorded in DIR/ladder.json with a fingerprint of its inputs (file sizes and
modification times, settings); a re-run skips an output whose file is unchanged and whose inputs
are unchanged, and redoes it (and everything downstream) otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .convert import convert
from .errors import GgtoolError
from .gguf_in import read_header
from .imatrix import collect
from .imatrix_file import read_imatrix
from .llama.ggml_types import file_type
from .llama.worker import Session
from .mix import choose_and_write, groups, measure, quantizable_tensors, read_sensitivities, write_sensitivities
from .outputs import atomic_output, refuse_inputs, removes_created_folder
from .quality import DEFAULT_HELDOUT, EvalReport, VariantQuality, evaluate
from .quantize import DEFAULT_TYPES, imatrix_kv_overrides, output_name, quantize_one

DATA = Path(__file__).resolve().parent.parent / "imatrix_data"
DEFAULT_CALIBRATION = DATA / "calibration.txt"
DEFAULT_CONVERSATIONS = DATA / "conversations.jsonl"
MANIFEST = "ladder.json"

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class StepRecord:
    """One output of the ladder and whether this run made it or found it up to date."""

    name: str
    path: Path
    made: bool
    seconds: float


@dataclass
class LadderResult:
    out_dir: Path
    base: Path
    imatrix: Path
    variants: list[Path]
    report: EvalReport
    steps: list[StepRecord] = field(default_factory=list)


def file_fingerprint(path: Path) -> list:
    """What identifies a file's version without reading it: name, size, modification time."""
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def source_fingerprint(src: Path) -> list:
    """A checkpoint folder's (or a GGUF file's) fingerprint."""
    if src.is_dir():
        return [file_fingerprint(p) for p in sorted(src.iterdir()) if p.is_file()]
    return [file_fingerprint(src)]


class Manifest:
    """DIR/ladder.json: for each output, the fingerprint of its inputs and of the output itself."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / MANIFEST
        try:
            self.entries: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            self.entries = {}  # unreadable: everything is redone

    def up_to_date(self, key: str, inputs: list) -> Path | None:
        """The recorded output of `key` if it exists unchanged and was made from the same inputs."""
        e = self.entries.get(key)
        if not e or e.get("inputs") != inputs:
            return None
        out = self.path.parent / e["output"]
        if not out.is_file() or file_fingerprint(out) != e.get("fingerprint"):
            return None
        return out

    def record(self, key: str, inputs: list, output: Path) -> None:
        self.entries[key] = {"inputs": inputs, "output": output.name, "fingerprint": file_fingerprint(output)}
        with atomic_output(self.path) as tmp:  # a unique temporary name: concurrent writers do not collide
            tmp.write_text(json.dumps(self.entries, indent=2) + "\n")


@removes_created_folder("out_dir")
def ladder(src: Path | str, out_dir: Path | str, types: list[str] = DEFAULT_TYPES, *,
           calibration: list[Path] | None = None, conversations: Path | None = DEFAULT_CONVERSATIONS,
           heldout: Path | None = None, outtype: str = "f16", chunk_size: int = 512, eval_ctx: int = 512,
           mix: bool = False, progress: Progress | None = None,
           on_step: Callable[[StepRecord], None] | None = None) -> LadderResult:
    """Convert `src` (a checkpoint folder, or an existing GGUF as the base), calibrate, quantize every type
    in `types` and measure each against the base on held-out text, skipping outputs that are up to date.
    `mix`: beside each type, ggtool's own mix at that file's size (<...>-<TYPE>-MIX.gguf, type "<TYPE>-mix"),
    its sensitivities measured once on the calibration text (mix-sensitivities.json)."""
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise GgtoolError(f"{src}: no such checkpoint folder or GGUF file")
    if not out_dir.parent.is_dir():
        raise GgtoolError(f"{out_dir.parent}: folder does not exist", "create it first or choose another -o")
    types = [file_type(t) for t in types]  # an unknown type name fails before any work
    calibration = [Path(p) for p in (calibration or [DEFAULT_CALIBRATION])]
    heldout = Path(heldout) if heldout else DEFAULT_HELDOUT
    for p in [*calibration, heldout]:
        if not p.is_file():
            raise GgtoolError(f"{p}: no such file", "pass calibration text with --calibration and held-out text "
                              "with --heldout")
    inputs = [("the source", src), *[("calibration text", p) for p in calibration], ("the held-out text", heldout)]
    for name in (MANIFEST, "imatrix.gguf", "quality.json", f"base-{outtype}.gguf"):
        refuse_inputs(out_dir / name, inputs)
    out_dir.mkdir(exist_ok=True)
    manifest = Manifest(out_dir)
    steps: list[StepRecord] = []

    def run_step(key: str, inputs: list, make: Callable[[], Path]) -> Path:
        inputs = [__version__, *inputs]
        t0 = time.perf_counter()
        output = manifest.up_to_date(key, inputs)
        made = output is None
        if made:
            output = make()
            manifest.record(key, inputs, output)
        steps.append(StepRecord(key, output, made, time.perf_counter() - t0))
        if on_step:
            on_step(steps[-1])
        return output

    def tick(what: str, done: int, total: int) -> None:
        if progress:
            progress(what, done, total)

    # 1. the base GGUF (a GGUF given as the source is the base itself)
    if src.is_file():
        base = src
    else:
        def make_base() -> Path:
            tmp = out_dir / f"base-{outtype}.gguf"
            convert(src, tmp, outtype, lambda name, n: tick("convert", n, 0))
            dest = out_dir / output_name(tmp, outtype.upper())
            tmp.replace(dest)
            return dest
        base = run_step("convert", [source_fingerprint(src), outtype], make_base)

    # 2. the importance matrix: plain calibration text, then conversations through the chat template
    def make_imatrix() -> Path:
        dest = out_dir / "imatrix.gguf"
        collect(base, calibration, dest, chunk_size=chunk_size, progress=lambda d, n: tick("imatrix", d, n))
        if conversations and conversations.is_file() and _has_chat_template(base):
            collect(base, [conversations], dest, chunk_size=chunk_size, chat=True, in_files=[dest],
                    progress=lambda d, n: tick("imatrix (chat)", d, n))
        return dest
    chat_fp = [file_fingerprint(conversations)] if conversations and conversations.is_file() else []
    imatrix = run_step("imatrix", [file_fingerprint(base), [file_fingerprint(p) for p in calibration], chat_fp,
                                   chunk_size], make_imatrix)

    # 3. the variants
    variants = []
    for t in types:
        def make_variant(t: str = t) -> Path:
            tick(f"quantize {t}", 0, 1)
            v = quantize_one(base, out_dir / output_name(base, t), t, imatrix, imatrix_label=imatrix.name)
            return v.path
        variants.append(run_step(f"quantize {t}", [file_fingerprint(base), file_fingerprint(imatrix), t],
                                 make_variant))

    if mix:
        variants += _mix_rungs(base, imatrix, calibration, types, variants, out_dir, run_step, tick)

    # 4. the quality table
    quality_path = out_dir / "quality.json"

    def make_quality() -> Path:
        evaluate(base, variants, heldout, n_ctx=eval_ctx,
                 progress=lambda name, d, n: tick(f"eval {name}", d, n)).write_json(quality_path)
        return quality_path
    run_step("eval", [file_fingerprint(base), [file_fingerprint(v) for v in variants], file_fingerprint(heldout),
                      eval_ctx], make_quality)
    return LadderResult(out_dir, base, imatrix, variants, report_from_json(quality_path), steps)


def _mix_rungs(base: Path, imatrix: Path, calibration: list[Path], types: list[str], stock: list[Path],
               out_dir: Path, run_step: Callable, tick: Progress) -> list[Path]:
    """ggtool's mix at each stock file's size, beside it."""
    cal_fp = [file_fingerprint(p) for p in calibration]

    def make_sensitivities() -> Path:
        im = read_imatrix(imatrix)
        sens = measure(base, groups(base, quantizable_tensors(base)), im.means(), calibration,
                       progress=lambda what, d, n: tick("mix sensitivities", d, n))
        return write_sensitivities(sens, out_dir / "mix-sensitivities.json")
    sens_path = run_step("mix sensitivities", [file_fingerprint(base), file_fingerprint(imatrix), cal_fp],
                         make_sensitivities)
    out = []
    with Session() as session:  # one worker for every rung: llama.cpp's IQ2/IQ3 grids are built once
        for t, stock_file in zip(types, stock):
            def make_mix(t: str = t, stock_file: Path = stock_file) -> Path:
                tick(f"mix {t}", 0, 1)
                im = read_imatrix(imatrix)
                r = choose_and_write(base, out_dir / output_name(base, f"{t}-MIX"),
                                     target_bytes=stock_file.stat().st_size, imatrix=im,
                                     kv_overrides=imatrix_kv_overrides(im, imatrix.name, len(im.means())),
                                     calibration=calibration, label=f"{t}-mix", nominal=t,
                                     sensitivities=read_sensitivities(sens_path), confirm=False, session=session)
                return r.path
            inputs = [file_fingerprint(base), file_fingerprint(imatrix), file_fingerprint(stock_file),
                      file_fingerprint(sens_path), t]
            out.append(run_step(f"mix {t}", inputs, make_mix))
    return out


def _has_chat_template(path: Path) -> bool:
    try:
        return read_header(path).get("tokenizer.chat_template") is not None
    except GgtoolError:  # unreadable: the imatrix step's own load reports it
        return False


def report_from_json(path: Path) -> EvalReport:
    """An EvalReport read back from its quality JSON."""
    d = json.loads(path.read_text())
    extra = {k: d[k] for k in ("base_ppl", "base_type", "base_size_bytes", "base_bpw") if k in d}
    return EvalReport(d["base"], d["text"], d["n_tokens"], [VariantQuality(**v) for v in d["variants"]], **extra)
