"""Pure helpers: the quantization types on offer, the input's kind, bits per weight, result rows.

Nothing here touches llama.cpp; `quantize` resolves a `QuantType.ftype_const` against the
installed llama-cpp-python (a type whose ``LLAMA_FTYPE_MOSTLY_*`` constant the library lacks is
not offered).

Invariants:
* `QUANT_TYPES` names are upper case and unique; `ALIASES` map llama-quantize's short names
  (``Q4_K`` …) onto them. `parse_types` is case-insensitive, keeps the user's order, drops
  duplicates, and raises `InputError` (naming the valid types) for anything else.
* ``needs_imatrix`` marks the types whose main tensor type llama.cpp refuses to produce without
  an importance matrix (IQ1_*, IQ2_*, IQ3_XXS, and the Q2_K tensors of Q2_K_S).
* A source is "quantized" when any tensor is stored in a block-quantized type. Q8_0 is accepted
  as a source without ``--allow-requantize`` (8-bit is the usual near-lossless master copy);
  anything coarser needs the flag.
* ``bits per weight`` = file size in bits / parameter count (metadata and tokenizer included, so
  small models read a little higher than llama.cpp's tensor-only figure).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InputError

__all__ = [
    "ALIASES",
    "QUANT_TYPES",
    "QuantType",
    "ResultRow",
    "Source",
    "bits_per_weight",
    "classify_source",
    "delta_percent",
    "file_type_label",
    "find_type",
    "mib",
    "order_rows",
    "output_path",
    "parse_types",
]


@dataclass(frozen=True)
class QuantType:
    """One quantization type on offer: its llama.cpp name (upper case), the nominal bits per weight
    of its main tensor type, a one-line summary, and whether llama.cpp needs an importance matrix to
    produce it."""

    name: str
    bpw: float  # nominal bits per weight of the type's main tensor type (ggml block size)
    summary: str
    needs_imatrix: bool = False

    @property
    def ftype_const(self) -> str:
        """The llama-cpp-python constant naming this llama_ftype."""
        return f"LLAMA_FTYPE_MOSTLY_{self.name}"


QUANT_TYPES: tuple[QuantType, ...] = (
    QuantType("F16", 16.0, "16-bit float, lossless for F16 sources"),
    QuantType("BF16", 16.0, "bfloat16"),
    QuantType("Q8_0", 8.5, "8-bit, near lossless"),
    QuantType("Q6_K", 6.5625, "6-bit k-quant, very close to Q8_0"),
    QuantType("Q5_K_M", 5.5, "5-bit k-quant mix, recommended high quality"),
    QuantType("Q5_K_S", 5.5, "5-bit k-quant"),
    QuantType("Q5_1", 6.0, "legacy 5-bit"),
    QuantType("Q5_0", 5.5, "legacy 5-bit"),
    QuantType("Q4_K_M", 4.5, "4-bit k-quant mix, the usual default"),
    QuantType("Q4_K_S", 4.5, "4-bit k-quant"),
    QuantType("Q4_1", 5.0, "legacy 4-bit"),
    QuantType("Q4_0", 4.5, "legacy 4-bit, fast on many backends"),
    QuantType("IQ4_NL", 4.5, "4-bit non-linear"),
    QuantType("IQ4_XS", 4.25, "4.25-bit non-linear"),
    QuantType("MXFP4_MOE", 4.25, "MXFP4 for MoE expert tensors"),
    QuantType("Q3_K_L", 3.4375, "3-bit k-quant mix, larger"),
    QuantType("Q3_K_M", 3.4375, "3-bit k-quant mix"),
    QuantType("Q3_K_S", 3.4375, "3-bit k-quant"),
    QuantType("IQ3_M", 3.4375, "3-bit i-quant mix"),
    QuantType("IQ3_S", 3.4375, "3.44-bit i-quant"),
    QuantType("IQ3_XS", 3.4375, "3.3-bit i-quant mix"),
    QuantType("IQ3_XXS", 3.0625, "3.06-bit i-quant", needs_imatrix=True),
    QuantType("Q2_K", 2.625, "2-bit k-quant"),
    QuantType("Q2_K_S", 2.625, "2-bit k-quant, smaller", needs_imatrix=True),
    QuantType("IQ2_M", 2.5625, "2.7-bit i-quant mix", needs_imatrix=True),
    QuantType("IQ2_S", 2.5625, "2.5-bit i-quant", needs_imatrix=True),
    QuantType("IQ2_XS", 2.3125, "2.31-bit i-quant", needs_imatrix=True),
    QuantType("IQ2_XXS", 2.0625, "2.06-bit i-quant", needs_imatrix=True),
    QuantType("TQ2_0", 2.0625, "ternary, for ternary-trained models only"),
    QuantType("IQ1_M", 1.75, "1.75-bit i-quant", needs_imatrix=True),
    QuantType("TQ1_0", 1.6875, "ternary, for ternary-trained models only"),
    QuantType("IQ1_S", 1.5625, "1.56-bit i-quant", needs_imatrix=True),
)

ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

_BY_NAME = {t.name: t for t in QUANT_TYPES}

# ggml tensor types that hold plain numbers rather than quantized blocks.
_UNQUANTIZED = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})
# Quantized tensor types accepted as a source without --allow-requantize.
_NEAR_LOSSLESS = frozenset({"Q8_0"})


def find_type(name: str) -> QuantType | None:
    key = name.strip().upper()
    return _BY_NAME.get(ALIASES.get(key, key))


def parse_types(spec: str, available: Iterable[str] | None = None) -> list[QuantType]:
    """``"q4_k_m, Q8_0"`` → the types, in order, once each. ``available``: names the installed
    library can produce (None = all)."""
    names = [part for part in re.split(r"[,\s]+", spec) if part]
    if not names:
        raise InputError("--types is empty; give one or more types, e.g. --types Q4_K_M,Q8_0")
    offered = set(_BY_NAME) if available is None else set(available)
    chosen: list[QuantType] = []
    unknown: list[str] = []
    unavailable: list[str] = []
    for name in names:
        qtype = find_type(name)
        if qtype is None:
            unknown.append(name)
        elif qtype.name not in offered:
            unavailable.append(qtype.name)
        elif qtype not in chosen:
            chosen.append(qtype)
    if unknown:
        valid = ", ".join(t.name for t in QUANT_TYPES if t.name in offered)
        raise InputError(f"unknown quantization type(s) {', '.join(unknown)}; valid: {valid}")
    if unavailable:
        raise InputError(
            f"{', '.join(unavailable)} not supported by this llama-cpp-python "
            "(its llama.cpp has no such file type)"
        )
    return chosen


def file_type_label(file_type: int | None) -> str | None:
    """``general.file_type`` → ``"Q4_K_M"``, ``"F16"``, ``"F32"``…; None when absent/unknown."""
    if file_type is None:
        return None
    from gguf import LlamaFileType

    try:
        member = LlamaFileType(file_type)
    except ValueError:
        return None
    if member is LlamaFileType.GUESSED:
        return None
    return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")


@dataclass(frozen=True)
class Source:
    """What the input file holds, as far as quantizing it is concerned."""

    label: str  # "F16", "Q4_1", …
    quantized_types: tuple[str, ...]  # block-quantized tensor types present, sorted

    @property
    def is_quantized(self) -> bool:
        """llama.cpp must dequantize some tensors (its ``allow_requantize`` must be set)."""
        return bool(self.quantized_types)

    @property
    def needs_flag(self) -> bool:
        """Quantizing it loses quality twice: only with ``--allow-requantize``."""
        return bool(set(self.quantized_types) - _NEAR_LOSSLESS)


def classify_source(file_type: int | None, tensor_types: Mapping[str, int]) -> Source:
    """``tensor_types``: ggml type name → number of tensors of that type."""
    quantized = tuple(sorted(t for t in tensor_types if t.upper() not in _UNQUANTIZED))
    label = file_type_label(file_type)
    if label is None:
        # No usable general.file_type: name it after the most common matrix type.
        counted = {t: n for t, n in tensor_types.items() if t.upper() != "F32"} or tensor_types
        label = max(counted, key=lambda t: counted[t]).upper() if counted else "unknown"
    return Source(label=label, quantized_types=quantized)


def bits_per_weight(file_bytes: int, n_params: int) -> float:
    if n_params <= 0:
        return math.nan
    return file_bytes * 8 / n_params


def mib(n_bytes: int) -> float:
    return n_bytes / (1024 * 1024)


_TYPE_SUFFIX = re.compile(
    r"[-._](?:F32|F16|BF16|Q\d(?:_[0-9A-Z]+)*|IQ\d(?:_[0-9A-Z]+)*|TQ\d_\d|MXFP4(?:_MOE)?)$",
    re.IGNORECASE,
)


def output_path(source: Path, out_dir: Path, qtype: QuantType) -> Path:
    """``/m/SmolLM2-135M.Q4_1.gguf`` + Q8_0 → ``out_dir/SmolLM2-135M-Q8_0.gguf``."""
    stem = source.name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    stem = _TYPE_SUFFIX.sub("", stem) or stem
    return out_dir / f"{stem}-{qtype.name}.gguf"


@dataclass(frozen=True)
class ResultRow:
    """One line of the closing table."""

    label: str  # the type name; the input's label for the reference row
    path: Path
    size_bytes: int
    n_params: int
    is_reference: bool = False
    seconds: float | None = None  # quantize time
    ppl: float | None = None
    ppl_uncertainty: float | None = None
    fallback_tensors: int = 0

    @property
    def bpw(self) -> float:
        return bits_per_weight(self.size_bytes, self.n_params)

    @property
    def size_mib(self) -> float:
        return mib(self.size_bytes)

    def with_ppl(self, ppl: float, uncertainty: float | None) -> ResultRow:
        return replace(self, ppl=ppl, ppl_uncertainty=uncertainty)


def order_rows(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Reference first, then largest file to smallest (so perplexity should rise down the
    table); equal sizes keep their given order."""
    refs = [r for r in rows if r.is_reference]
    outs = sorted((r for r in rows if not r.is_reference), key=lambda r: -r.size_bytes)
    return refs + outs


def delta_percent(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return (value / reference - 1.0) * 100.0
