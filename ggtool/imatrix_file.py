"""Importance matrices as llama.cpp's tools/imatrix writes them: read, write, merge, check against a model,
report per-expert coverage.

Two file formats:
- GGUF (default): general.type=imatrix, imatrix.datasets / chunk_count / chunk_size, and per weight W the
  F32 tensors `W.in_sum2` [n_mat, n_per_row] (raw sums of squared activations) and `W.counts` [n_mat, 1]
  (tokens seen, per expert for 3-D expert tensors).
- legacy .dat: int32 n_entries; per entry name, ncall, nval and nval floats (sum/count)*ncall; then the
  chunk count and the dataset name. Per-expert counts are lost in this format.
Quantization uses the means (sum / count per expert; experts never routed to get 1.0), as quantize.cpp does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .errors import GgtoolError
from .gguf_in import read_header, tensor_data
from .outputs import atomic_output, check_destination

DEFAULT_CHUNK_SIZE = 512  # llama-imatrix's default n_ctx


@dataclass
class ImatrixEntry:
    """One weight's statistics: sums [n_mat, n_per_row] and counts [n_mat] (n_mat = experts, 1 if dense)."""

    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_mat(self) -> int:
        return self.sums.shape[0]


@dataclass
class Imatrix:
    """An importance matrix as llama.cpp's files hold it."""

    entries: dict[str, ImatrixEntry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat: sums are (mean * ncall) and counts are [ncall]

    def flat(self) -> "Imatrix":
        """The same entries with importance 1.0 everywhere: a baseline that weighs every column equally."""
        entries = {n: ImatrixEntry(np.ones_like(e.sums), np.ones_like(e.counts)) for n, e in self.entries.items()}
        return Imatrix(entries, ["flat"], self.chunk_count, self.chunk_size)

    def means(self) -> dict[str, np.ndarray]:
        """Per-column importance as quantize.cpp passes it to llama_model_quantize: flat float32, expert-major."""
        out = {}
        for name, e in self.entries.items():
            counts = e.counts.astype(np.float64)[:, None]
            sums = e.sums.astype(np.float32).astype(np.float64)  # as stored in the file, so both paths agree
            mean = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), 1.0)
            if self.legacy and not (e.counts > 0).all():  # quantize.cpp: legacy values with ncall 0 pass as they are
                mean = e.sums
            out[name] = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        return out


# -- reading ------------------------------------------------------------------------------------------
def read_imatrix(path: Path | str) -> Imatrix:
    """An importance matrix from a GGUF (ggtool's or llama-imatrix's) or legacy .dat file."""
    path = Path(path)
    if not path.is_file():
        raise GgtoolError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return _read_gguf(path)
    return _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    header = read_header(path)  # bounded and checked: counts, lengths and types against the file's size

    def bad(why: str) -> GgtoolError:
        return GgtoolError(f"{path}: not a usable importance matrix ({why})",
                           f"make it again with `ggtool imatrix MODEL.gguf -o {path.name}`")

    if header.get(gguf.Keys.General.TYPE) not in (None, gguf.GGUFType.IMATRIX) \
            or header.get(gguf.Keys.General.ARCHITECTURE):
        raise GgtoolError(f"{path}: is a model, not an importance matrix",
                          f"make one with `ggtool imatrix {path} -o imatrix.gguf`")
    missing = [k for k in (gguf.Keys.IMatrix.DATASETS, gguf.Keys.IMatrix.CHUNK_COUNT, gguf.Keys.IMatrix.CHUNK_SIZE)
               if k not in header.values]
    if missing:  # quantize.cpp refuses such files ("missing imatrix metadata")
        raise GgtoolError(f"{path}: imatrix metadata missing: {', '.join(missing)}")
    datasets = header.array(gguf.Keys.IMatrix.DATASETS)
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise bad(f"{gguf.Keys.IMatrix.DATASETS} is not a list of strings")
    chunk_count = header.typed(gguf.Keys.IMatrix.CHUNK_COUNT, int)
    chunk_size = header.typed(gguf.Keys.IMatrix.CHUNK_SIZE, int)
    if chunk_count < 0 or chunk_size < 0:
        raise bad(f"negative chunk count {chunk_count} or chunk size {chunk_size}")
    sums, counts = {}, {}
    for t in header.tensors:
        if t.type != gguf.GGMLQuantizationType.F32:
            raise GgtoolError(f"{path}: tensor {t.name} is {t.type.name}, imatrix tensors must be F32")
        if len(t.shape) > 2 or t.n_elements == 0:
            raise bad(f"tensor {t.name} has shape {list(t.shape)}; imatrix tensors are non-empty, 1-D or 2-D")
        data = tensor_data(header, t).reshape(-1)  # a view of the file: nothing allocated yet
        if not np.isfinite(data).all() or (data < 0).any():
            raise bad(f"tensor {t.name} holds negative, NaN or infinite values")
        n_mat = int(t.shape[1]) if len(t.shape) > 1 else 1
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = data.reshape(n_mat, -1).astype(np.float64)
        elif t.name.endswith(".counts"):
            if (data >= 2.0 ** 53).any():
                raise bad(f"tensor {t.name} holds counts beyond 2^53")
            counts[t.name[: -len(".counts")]] = np.rint(data).astype(np.int64)
    if not sums:
        raise GgtoolError(f"{path}: no data in the importance matrix")
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts or counts[name].size != sums[name].shape[0]:
            raise GgtoolError(f"{path}: mismatched sums and counts for {name}")
        entries[name] = ImatrixEntry(sums[name], counts[name])
    return Imatrix(entries, datasets, chunk_count, chunk_size)


def _read_legacy(path: Path) -> Imatrix:
    """llama-imatrix's .dat, every length checked against the bytes that remain before it is read."""
    raw = path.read_bytes()  # the file's own size, once
    pos = 0

    def bad(why: str) -> GgtoolError:
        return GgtoolError(f"{path}: not a usable legacy importance matrix (.dat): {why}",
                           "make one with `ggtool imatrix MODEL.gguf -o imatrix.gguf`")

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise GgtoolError(f"{path}: neither a GGUF nor a complete legacy imatrix (.dat) file",
                              "make one with `ggtool imatrix MODEL.gguf -o imatrix.gguf`")
        out = struct.unpack_from(fmt, raw, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    # each entry takes at least 4 + 1 + 8 + 4 bytes
    if n_entries < 1 or n_entries * 17 > len(raw) - pos:
        raise GgtoolError(f"{path}: not an importance matrix (neither GGUF nor legacy .dat)",
                          "make one with `ggtool imatrix MODEL.gguf -o imatrix.gguf`")
    entries = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise GgtoolError(f"{path}: not an importance matrix (bad entry name length {length})")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise GgtoolError(f"{path}: entry {name} has no values")
        if ncall < 0:
            raise bad(f"entry {name} has a negative count {ncall}")
        if nval * 4 > len(raw) - pos:
            raise bad(f"entry {name}'s {nval} values run past the end of the file")
        values = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += nval * 4
        if not np.isfinite(values).all() or (values < 0).any():
            raise bad(f"entry {name} holds negative, NaN or infinite values")
        if name in entries:
            raise bad(f"entry {name} appears twice")
        entries[name] = ImatrixEntry(values[None, :], np.array([ncall], dtype=np.int64))
    chunk_count, datasets = 0, []
    if pos < len(raw):  # optional trailer: chunk count and dataset name
        (chunk_count,) = take("<i")
        if chunk_count < 0:
            raise bad(f"negative chunk count {chunk_count}")
        if pos + 4 <= len(raw):
            (length,) = take("<i")
            if length > 0:
                datasets.append(bytes(take(f"<{length}s")[0]).decode("utf-8", "replace"))
    return Imatrix(dict(sorted(entries.items())), datasets, chunk_count, 0, legacy=True)


# -- writing ------------------------------------------------------------------------------------------
def write_imatrix(im: Imatrix, dest: Path | str) -> Path:
    """Write `im` as llama-imatrix's GGUF (sorted names, raw sums and counts), atomically."""
    dest = Path(dest)
    check_destination(dest, example="imatrix.gguf")
    with atomic_output(dest) as tmp:
        w = gguf.GGUFWriter(tmp, arch="imatrix")
        del w.kv_data[0][gguf.Keys.General.ARCHITECTURE]  # llama-imatrix's files have no architecture
        w.add_type(gguf.GGUFType.IMATRIX)
        w.add_array(gguf.Keys.IMatrix.DATASETS, list(im.datasets))
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(im.chunk_count))
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(im.chunk_size))
        for name in sorted(im.entries):
            e = im.entries[name]
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(e.sums, dtype=np.float32))
            w.add_tensor(f"{name}.counts", e.counts.astype(np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return dest


def write_legacy(im: Imatrix, dest: Path | str) -> Path:
    """Write `im` in llama-imatrix's legacy .dat format (`--output-format dat`), atomically."""
    dest = Path(dest)
    check_destination(dest, example="imatrix.gguf")
    chunk_size = im.chunk_size or DEFAULT_CHUNK_SIZE
    out = bytearray()
    stored = [n for n in sorted(im.entries) if im.legacy or (im.entries[n].counts > 0).any()]
    out += struct.pack("<i", len(stored))
    for name in stored:
        e = im.entries[name]
        if im.legacy:
            ncall, values = int(e.counts[0]), e.sums.reshape(-1)
        else:
            ncall = int((e.counts.max() + chunk_size - 1) // chunk_size)
            counts = e.counts.astype(np.float64)[:, None]
            mean = np.where(counts > 0, e.sums / np.where(counts > 0, counts, 1), 1.0)
            values = (mean * ncall).reshape(-1)
        nb = name.encode()
        out += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, values.size)
        out += values.astype("<f4").tobytes()
    dataset = (im.datasets[-1] if im.datasets else "").encode()
    out += struct.pack("<ii", int(im.chunk_count), len(dataset)) + dataset
    with atomic_output(dest) as tmp:
        tmp.write_bytes(bytes(out))
    return dest


# -- merging and checking -----------------------------------------------------------------------------
def merge(matrices: list[Imatrix], chunk_size: int | None = None) -> Imatrix:
    """Several importance matrices as one, as llama-imatrix --in-file does: raw sums and counts add up
    (legacy files are turned back into raw form by multiplying by the chunk size)."""
    if not matrices:
        raise GgtoolError("no importance matrices to merge")
    size = chunk_size or next((m.chunk_size for m in matrices if m.chunk_size), DEFAULT_CHUNK_SIZE)
    entries: dict[str, ImatrixEntry] = {}
    datasets: list[str] = []
    for m in matrices:
        for name, e in m.entries.items():
            sums, counts = (e.sums * size, e.counts * size) if m.legacy else (e.sums, e.counts)
            if name not in entries:
                entries[name] = ImatrixEntry(sums.copy(), counts.copy())
                continue
            have = entries[name]
            if have.sums.size != sums.size:
                raise GgtoolError(f"cannot merge: {name} has {sums.size} values in one file and {have.sums.size} "
                                  "in another", "the importance matrices come from different models")
            if have.counts.size == 1 and counts.size > 1:  # an older file's single count, broadcast per expert
                have = entries[name] = ImatrixEntry(have.sums.reshape(counts.size, -1),
                                                    np.repeat(have.counts, counts.size))
            elif counts.size == 1 and have.counts.size > 1:
                counts = np.repeat(counts, have.counts.size)
            have.sums += sums.reshape(have.sums.shape)
            have.counts += counts
        datasets += m.datasets
    max_count = max((int(e.counts.max()) for e in entries.values()), default=0)
    return Imatrix(dict(sorted(entries.items())), datasets, max_count // size, size)


def model_tensors(model: Path | str) -> dict[str, tuple[int, ...]]:
    """Weight shapes (ne order) of a GGUF model, for checking an imatrix against it."""
    return {t.name: t.shape for t in read_header(model).tensors}


def check_matches(im: Imatrix, shapes: dict[str, tuple[int, ...]], im_label: str, model_label: str) -> None:
    """Refuse an importance matrix made for another model: an unknown tensor, or a size that does not fit."""
    for name, e in im.entries.items():
        if name not in shapes:
            raise GgtoolError(f"{im_label}: has data for {name}, which {model_label} does not have",
                              "the importance matrix was made for a different model")
        ne = shapes[name]
        need = ne[0] * (ne[2] if len(ne) > 2 else 1)
        if e.sums.size != need:
            raise GgtoolError(f"{im_label}: {name} has {e.sums.size} values, {model_label} needs {need}",
                              "the importance matrix was made for a different model")


@dataclass
class CoverageRow:
    """One expert tensor's routing coverage."""

    tensor: str
    n_experts: int
    unrouted: list[int]  # experts with count 0
    min_count: int
    max_count: int


UNROUTED_NOTE = ("experts never routed to get importance 1.0 for every column (as llama-quantize does), "
                 "so they are quantized unweighted, as without an importance matrix")


def coverage(im: Imatrix) -> list[CoverageRow]:
    """Per-expert coverage of every 3-D (expert) entry, in name order."""
    rows = []
    for name, e in sorted(im.entries.items()):
        if e.n_mat > 1:
            rows.append(CoverageRow(name, e.n_mat, [int(i) for i in np.nonzero(e.counts == 0)[0]],
                                    int(e.counts.min()), int(e.counts.max())))
    return rows
