"""Read what the tool needs from a GGUF with the ``gguf`` package: type, parameters, tensor index.

Invariants:
* Anything that is not a readable GGUF (missing, a directory, wrong magic, truncated, a later
  split part given instead of the first) raises `InputError` naming the file — never another
  exception.
* ``n_params`` counts every element of every tensor (over all split parts); quantizing never
  changes it, so it is the denominator of every output's bits per weight.
* ``imatrix_sizes`` gives, for each tensor of two or more dimensions, the importance-matrix
  length llama.cpp checks it against: ``ne[0] * ne[2]`` (one row of weights per expert).
* Tensor data is memory-mapped by the reader and never read; array-valued metadata (the
  tokenizer's token and merge lists) is stepped over, not decoded — `_Reader` — which takes a
  Gemma-3 header from ~10 s to well under one.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from .errors import InputError
from .quant_types import Source, classify_source

__all__ = ["ModelInfo", "read_model_info"]

_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class ModelInfo:
    """What the tool needs to know about the input GGUF: its size (all split parts), metadata (None
    when absent), parameter and tensor counts, tensors per ggml type, the importance-matrix length
    each tensor of two or more dimensions expects, and what kind of source it is."""

    path: Path
    file_bytes: int  # all parts
    architecture: str | None
    name: str | None
    file_type: int | None
    context_length: int | None
    n_params: int
    n_tensors: int
    tensor_types: dict[str, int]
    imatrix_sizes: dict[str, int] = field(repr=False)
    source: Source


def read_model_info(path: Path) -> ModelInfo:
    path = Path(path)
    reader = _open(path)
    fields = reader.fields
    architecture = _scalar(fields, "general.architecture")
    split_count = _scalar(fields, "split.count")
    parts = [path]
    readers = [reader]
    if isinstance(split_count, int) and split_count > 1:
        parts = _split_parts(path, split_count)
        readers += [_open(p) for p in parts[1:]]

    types: Counter[str] = Counter()
    imatrix_sizes: dict[str, int] = {}
    n_params = 0
    n_tensors = 0
    for part in readers:
        for tensor in part.tensors:
            shape = [int(d) for d in tensor.shape]
            count = 1
            for dim in shape:
                count *= dim
            n_params += count
            n_tensors += 1
            types[tensor.tensor_type.name] += 1
            if len(shape) >= 2:
                imatrix_sizes[tensor.name] = shape[0] * (shape[2] if len(shape) >= 3 else 1)
    if n_tensors == 0:
        raise InputError(f"{path}: the GGUF holds no tensors")
    file_type = _scalar(fields, "general.file_type")
    name = _scalar(fields, "general.name")
    context_length = _scalar(fields, f"{architecture}.context_length") if architecture else None
    return ModelInfo(
        path=path,
        file_bytes=sum(p.stat().st_size for p in parts),
        architecture=architecture if isinstance(architecture, str) else None,
        name=name if isinstance(name, str) else None,
        file_type=file_type if isinstance(file_type, int) else None,
        context_length=context_length if isinstance(context_length, int) else None,
        n_params=n_params,
        n_tensors=n_tensors,
        tensor_types=dict(types),
        imatrix_sizes=imatrix_sizes,
        source=classify_source(file_type if isinstance(file_type, int) else None, types),
    )


def _open(path: Path) -> Any:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if magic != b"GGUF":
        raise InputError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        return _Reader(path)
    except Exception as exc:  # the reader raises ValueError, struct errors, IndexError …
        raise InputError(f"{path}: not a readable GGUF ({exc})") from exc


def _scalar(fields: dict[str, Any], key: str) -> Any:
    fld = fields.get(key)
    if fld is None:
        return None
    try:
        value = fld.contents()
    except Exception:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return value


def _split_parts(first: Path, count: int) -> list[Path]:
    match = _SPLIT_NAME.match(first.name)
    if match is None or int(match["count"]) != count:
        raise InputError(
            f"{first}: a split GGUF ({count} parts) whose name does not follow "
            "NAME-00001-of-0000N.gguf"
        )
    if int(match["no"]) != 1:
        raise InputError(f"{first}: give the first part of a split GGUF (…-00001-of-…)")
    prefix = match["prefix"]
    parts = [first.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise InputError(f"{first}: split part(s) missing: {', '.join(missing)}")
    return parts


class _Reader(GGUFReader):
    """`GGUFReader` that steps over array-valued metadata instead of decoding it element by
    element: such fields come back with their type but no values (this tool reads only scalars).
    Scalars, strings and the tensor index are parsed by the stock code."""

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        item_type = self._get(orig_offs, np.uint32)
        length = self._get(orig_offs + 4, np.uint64)
        sub_type = GGUFValueType(int(item_type[0]))
        count = int(length[0])
        scalar = self.gguf_scalar_to_np.get(sub_type)
        if scalar is not None:
            size = 12 + np.dtype(scalar).itemsize * count
        elif sub_type == GGUFValueType.STRING:
            size = 12 + self._skip_strings(orig_offs + 12, count)
        else:  # arrays of arrays: rare and small
            return super()._get_field_parts(orig_offs, raw_type)
        if orig_offs + size > len(self.data):
            raise ValueError(f"array field runs past the end of the file ({orig_offs + size})")
        return size, [item_type, length], [], [GGUFValueType.ARRAY, sub_type]

    def _skip_strings(self, offs: int, count: int) -> int:
        raw = memoryview(self.data)
        end = len(raw)
        native = sys.byteorder
        order = native if self.byte_order == "I" else ("big" if native == "little" else "little")
        start = offs
        for _ in range(count):
            if offs + 8 > end:
                raise ValueError("string array runs past the end of the file")
            offs += 8 + int.from_bytes(raw[offs : offs + 8], order)  # type: ignore[arg-type]
        return offs - start
