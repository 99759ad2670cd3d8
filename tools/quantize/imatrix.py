"""Load an importance matrix the way llama-quantize does, ready to hand to llama.cpp.

Two file formats, told apart by the GGUF magic:
* GGUF (llama-imatrix's default): per weight ``NAME.in_sum2`` (F32 sums of squared activations)
  and ``NAME.counts`` (F32, one count per expert), metadata ``imatrix.datasets``,
  ``imatrix.chunk_count``, ``imatrix.chunk_size``. Value = sum / count, per expert; an expert
  never seen gets 1.
* legacy ``.dat``: ``int32 n``; n × (``int32 len, name, int32 ncall, int32 nval,
  float32[nval]``); optionally ``int32 chunks, int32 len, dataset``. Value = stored / ncall.

Invariants: entries are contiguous float32 arrays, all finite; any unreadable or malformed file
raises `InputError`. `check_against` rejects an entry whose length differs from what llama.cpp
expects for that tensor (``ne[0] * ne[2]``) — llama.cpp would abort half-way otherwise —
except ``token_embd.weight``, which llama.cpp itself skips.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["Imatrix", "check_against", "load_imatrix"]


@dataclass(frozen=True)
class Imatrix:
    """A loaded importance matrix: a finite float32 array per tensor name, the datasets and chunk
    count it records (0 when unknown), and whether it came from the legacy ``.dat`` format. Check it
    against the model with `check_against` before use."""

    path: Path
    entries: dict[str, np.ndarray]
    datasets: tuple[str, ...]
    chunk_count: int
    legacy: bool


def load_imatrix(path: Path) -> Imatrix:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"--imatrix {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"--imatrix {path}: cannot read: {exc.strerror or exc}") from exc
    imatrix = _load_gguf(path) if data[:4] == b"GGUF" else _load_legacy(path, data)
    if not imatrix.entries:
        raise InputError(f"--imatrix {path}: holds no importance-matrix entries")
    for name, values in imatrix.entries.items():
        if not np.all(np.isfinite(values)):
            raise InputError(f"--imatrix {path}: entry {name!r} holds NaN or infinite values")
    return imatrix


def check_against(imatrix: Imatrix, expected_sizes: Mapping[str, int]) -> int:
    """Raise `InputError` on a size mismatch; return how many model tensors it covers."""
    covered = 0
    for name, values in imatrix.entries.items():
        expected = expected_sizes.get(name)
        if expected is None:
            continue
        if values.size != expected and name != "token_embd.weight":
            raise InputError(
                f"--imatrix {imatrix.path}: entry {name!r} has {values.size} values but the "
                f"model's tensor needs {expected}; was it computed for another model?"
            )
        covered += 1
    if covered == 0:
        raise InputError(
            f"--imatrix {imatrix.path}: none of its {len(imatrix.entries)} entries names a tensor "
            "of this model; was it computed for another model?"
        )
    return covered


def _load_gguf(path: Path) -> Imatrix:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:
        raise InputError(f"--imatrix {path}: not a readable GGUF ({exc})") from exc
    groups: dict[str, dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        for suffix in (".in_sum2", ".counts", ".in_sum"):
            if tensor.name.endswith(suffix):
                if tensor.tensor_type.name != "F32":
                    raise InputError(
                        f"--imatrix {path}: {tensor.name} is {tensor.tensor_type.name}, not F32"
                    )
                base = tensor.name[: -len(suffix)]
                groups.setdefault(base, {})[suffix] = np.asarray(tensor.data, np.float32).ravel()
                break
    entries: dict[str, np.ndarray] = {}
    for name, group in groups.items():
        sums, counts = group.get(".in_sum2"), group.get(".counts")
        if sums is None or counts is None or counts.size == 0 or sums.size % counts.size:
            raise InputError(f"--imatrix {path}: mismatched sums and counts for {name!r}")
        per_expert = sums.reshape(counts.size, -1)
        rounded = np.rint(counts).reshape(-1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(rounded > 0, per_expert / np.where(rounded > 0, rounded, 1), 1.0)
        entries[name] = np.ascontiguousarray(values.ravel(), dtype=np.float32)
    datasets: tuple[str, ...] = ()
    field = reader.fields.get("imatrix.datasets")
    if field is not None:
        try:
            contents = field.contents()
            listed = contents if isinstance(contents, list) else [contents]
            datasets = tuple(str(d) for d in listed)
        except Exception:
            datasets = ()
    chunk_field = reader.fields.get("imatrix.chunk_count")
    chunk_count = int(chunk_field.contents()) if chunk_field is not None else 0
    return Imatrix(path, entries, datasets, chunk_count, legacy=False)


def _load_legacy(path: Path, data: bytes) -> Imatrix:
    def bad(why: str) -> InputError:
        return InputError(f"--imatrix {path}: not an imatrix file (GGUF or legacy .dat): {why}")

    pos = 0

    def take_i32() -> int:
        nonlocal pos
        if pos + 4 > len(data):
            raise bad("truncated")
        (value,) = struct.unpack_from("<i", data, pos)
        pos += 4
        return value

    n_entries = take_i32()
    if n_entries < 1 or n_entries > len(data) // 16:
        raise bad(f"implausible entry count {n_entries}")
    entries: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        length = take_i32()
        if length < 1 or length > 4096 or pos + length > len(data):
            raise bad("bad entry name")
        try:
            name = data[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise bad("entry name is not UTF-8") from None
        pos += length
        ncall = take_i32()
        nval = take_i32()
        if nval < 1 or pos + 4 * nval > len(data):
            raise bad(f"bad value count for {name!r}")
        stored = np.frombuffer(data, dtype="<f4", count=nval, offset=pos)
        pos += 4 * nval
        values = stored / ncall if ncall > 0 else stored
        entries[name] = np.ascontiguousarray(values, dtype=np.float32)
    chunk_count = 0
    datasets: tuple[str, ...] = ()
    if pos + 4 <= len(data):
        chunk_count = take_i32()
        if pos + 4 <= len(data):
            length = take_i32()
            if 0 < length <= len(data) - pos:
                datasets = (data[pos : pos + length].decode("utf-8", "replace"),)
    return Imatrix(path, entries, datasets, max(chunk_count, 0), legacy=True)
