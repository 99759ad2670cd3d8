"""Read a GGUF model's geometry: the hyper-parameters and tensor sizes that memory planning needs.

Job: given one GGUF file, or every part of a split GGUF (``name-00001-of-0000N.gguf`` …) in
order, return a frozen `ModelGeometry`. The file is parsed with the `gguf` package's
`GGUFReader` (a subclass with faster array parsing, see `_Reader`), which memory-maps it: tensor
data is never read or copied, only the header, the key/value metadata and the tensor index.

Invariants:
* Any file that is not a complete, well-formed GGUF raises `GgufFormatError` and nothing else:
  bad magic, an empty file, a truncated file (a tensor whose data ends past the end of its
  part), unreadable files, split parts that do not belong together, and missing required keys
  (``general.architecture``, ``{arch}.block_count``, ``{arch}.context_length``,
  ``{arch}.embedding_length``, ``{arch}.attention.head_count``). The message names the file.
* Key/value metadata comes from the first part; tensors are summed over all parts.
* Every tensor is counted exactly once, in one of three groups, mirroring where llama.cpp puts
  it: ``blk.{i}.*`` → ``layer_bytes[i]``; the input embeddings (``token_embd.*`` and the other
  get-rows tables llama.cpp keeps on the CPU) → ``token_embd_bytes``; everything else (output
  norm, output head, rope tables, extra blocks past ``block_count``) → ``output_bytes``.
  So ``sum(layer_bytes) + output_bytes + token_embd_bytes`` is the total tensor size.
* ``output_bytes`` is what the file holds. When ``output.weight`` is absent the model ties its
  output head to ``token_embd.weight`` (``tied_embeddings``); when the output layer goes to a
  GPU, llama.cpp loads a second copy of ``token_embd.weight`` there. That duplicate is the
  planner's business (`neuron.offload`), not counted here.
* ``swa_layers`` follows llama.cpp (the version vendored by llama-cpp-python 0.3.36): an explicit
  ``{arch}.attention.sliding_window_pattern`` array wins; a scalar there is the period; otherwise
  the architecture's built-in period (gemma3: 6, i.e. five local layers then one global).
  An architecture we do not know reports no sliding-window layers, which can only overestimate
  the KV cache.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gguf import GGUFReader, GGUFValueType

from neuron.geometry import ModelGeometry

__all__ = ["GgufFormatError", "ModelGeometry", "read_geometry"]


class GgufFormatError(Exception):
    """The file is not a usable GGUF: wrong magic, truncated, inconsistent, or missing keys."""


# Built-in sliding-window period per architecture, as each model's `load_arch_hparams` passes it
# to `load_swa_pattern(ml, n_pattern, dense_first)` in llama.cpp. Only consulted when the file
# has `{arch}.attention.sliding_window` > 0 and no explicit pattern key.
_SWA_PERIOD: dict[str, tuple[int, bool]] = {
    **dict.fromkeys(("gemma2", "gpt-oss"), (2, False)),
    **dict.fromkeys(("gemma3", "gemma-embedding"), (6, False)),
    "gemma3n": (5, False),
    "plamo3": (8, False),
    "modern-bert": (3, True),
    **dict.fromkeys(("cohere2moe", "smallthinker", "laguna"), (4, True)),
    **dict.fromkeys(
        ("cohere2", "exaone4", "exaone-moe", "olmo2", "llama4", "afmoe", "mellum", "muse-glimmer"),
        (4, False),
    ),
}

# Input-layer tables: llama.cpp always keeps these on the CPU (`dev_input`).
_INPUT_PREFIXES = ("token_embd.", "position_embd.", "token_types.", "per_layer_token_embd.")
_BLOCK = re.compile(r"blk\.(\d+)\.")


def read_geometry(paths: Sequence[Path]) -> ModelGeometry:
    """Geometry of the model in `paths` (one file, or all parts of a split GGUF in order)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise GgufFormatError("no GGUF file given")
    readers = [_open(path) for path in paths]
    first, first_path = readers[0], paths[0]
    _check_split(readers, paths)
    meta = _Meta(first, first_path)

    arch = meta.required("general.architecture", str)
    n_layers = meta.required(f"{arch}.block_count", int)
    n_ctx_train = meta.required(f"{arch}.context_length", int)
    n_embd = meta.required(f"{arch}.embedding_length", int)
    n_head_per_layer = _per_layer(
        meta.required(f"{arch}.attention.head_count", (int, list)),
        n_layers,
        meta,
        "attention.head_count",
    )
    n_head = n_head_per_layer[0] if n_head_per_layer else 0
    kv_raw = meta.optional(f"{arch}.attention.head_count_kv")
    n_head_kv = (
        n_head_per_layer
        if kv_raw is None
        else _per_layer(kv_raw, n_layers, meta, "attention.head_count_kv")
    )
    if n_layers <= 0 or n_embd <= 0 or n_head <= 0:
        raise GgufFormatError(
            f"{first_path.name}: implausible geometry (block_count={n_layers}, "
            f"embedding_length={n_embd}, head_count={n_head})"
        )
    head_dim_k = _int_or(meta.optional(f"{arch}.attention.key_length"), n_embd // n_head)
    head_dim_v = _int_or(meta.optional(f"{arch}.attention.value_length"), n_embd // n_head)

    window = _int_or(meta.optional(f"{arch}.attention.sliding_window"), 0)
    sliding_window = window if window > 0 else None
    swa_layers = _swa_layers(
        arch, n_layers, sliding_window, meta.optional(f"{arch}.attention.sliding_window_pattern")
    )

    layer_bytes = [0] * n_layers
    output_bytes = token_embd_bytes = 0
    names: set[str] = set()
    token_embd_cols: int | None = None
    for reader in readers:
        for tensor in reader.tensors:
            names.add(tensor.name)
            size = int(tensor.n_bytes)
            match = _BLOCK.match(tensor.name)
            if match and int(match.group(1)) < n_layers:
                layer_bytes[int(match.group(1))] += size
            elif tensor.name.startswith(_INPUT_PREFIXES):
                token_embd_bytes += size
                if tensor.name == "token_embd.weight" and len(tensor.shape) >= 2:
                    token_embd_cols = int(tensor.shape[1])
            else:
                # output norm/head, rope tables, and blocks past block_count (e.g. MTP heads),
                # which llama.cpp places after the last repeating layer
                output_bytes += size

    tokens = first.get_field("tokenizer.ggml.tokens")
    n_vocab = _int_or(meta.optional(f"{arch}.vocab_size"), 0)
    if n_vocab <= 0:
        n_vocab = len(tokens.data) if tokens is not None else (token_embd_cols or 0)

    return ModelGeometry(
        architecture=arch,
        name=meta.optional_str("general.name"),
        file_bytes=sum(_file_size(p) for p in paths),
        n_layers=n_layers,
        n_ctx_train=n_ctx_train,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=tuple(n_head_kv),
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        layer_bytes=tuple(layer_bytes),
        output_bytes=output_bytes,
        token_embd_bytes=token_embd_bytes,
        tied_embeddings="output.weight" not in names,
        n_vocab=n_vocab,
        chat_template=meta.optional_str("tokenizer.chat_template"),
        bos_token=_token_text(tokens, meta.optional("tokenizer.ggml.bos_token_id")),
        eos_token=_token_text(tokens, meta.optional("tokenizer.ggml.eos_token_id")),
    )


class _Truncated(ValueError):
    """A read past the end of the file."""


class _Reader(GGUFReader):
    """`GGUFReader` with its per-element hot paths made cheaper; same fields, same tensors.

    The stock reader slices its `np.memmap` several times per array element, and every memmap
    slice runs memmap's Python-level `__array_finalize__`: Gemma-3's 262k-token vocabulary took
    ~10 s to open (SmolLM2: ~2 s). Here (a) slices come from a plain-ndarray view of the same
    mapping (still no copies), (b) a numeric array (token scores, token types) is one view rather
    than one per element, so its `ReaderField.data` has a single index and only whole-array
    `contents()` is meaningful, and (c) string arrays are walked in one tight loop producing the
    stock parts layout. Result: ~0.35 s and ~0.15 s. A read past the end of the file raises
    `_Truncated` at once instead of surfacing later as a reshape error.
    tests/unit/test_gguf_meta.py checks this reader field-for-field against the stock one.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        count = int(count)
        end = offset + np.dtype(dtype).itemsize * count
        if end > len(plain):
            # the stock reader would fail later with a reshape/view error that hides the cause
            raise _Truncated(f"truncated: needs byte {end} but the file has {len(plain)}")
        arr = plain[offset:end].view(dtype=dtype)[:count]
        order = self.byte_order if override_order is None else override_order
        return arr.view(arr.dtype.newbyteorder(order))

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
        if raw_type == GGUFValueType.ARRAY:
            item_type = self._get(orig_offs, np.uint32)
            nptype = self.gguf_scalar_to_np.get(GGUFValueType(int(item_type[0])))
            if nptype is not None:
                length = self._get(orig_offs + 4, np.uint64)
                values = self._get(orig_offs + 12, nptype, int(length[0]))
                types = [GGUFValueType.ARRAY, GGUFValueType(int(item_type[0]))]
                return 12 + int(values.nbytes), [item_type, length, values], [2], types
            if int(item_type[0]) == GGUFValueType.STRING:
                return self._string_array(orig_offs, item_type)
        return super()._get_field_parts(orig_offs, raw_type)

    def _string_array(self, orig_offs: int, item_type: Any) -> Any:
        """Same parts as the stock reader (length, bytes per string), built in one tight loop."""
        plain = self.__dict__["_plain"]
        length = self._get(orig_offs + 4, np.uint64)
        n = int(length[0])
        native = sys.byteorder == "little"
        endian: Literal["little", "big"] = "little" if native == (self.byte_order == "I") else "big"
        len_dtype = np.dtype(np.uint64).newbyteorder("<" if endian == "little" else ">")
        raw = memoryview(plain)
        size = len(plain)
        parts: list[Any] = [item_type, length]
        data: list[int] = []
        offs = orig_offs + 12
        for _ in range(n):
            if offs + 8 > size:
                raise _Truncated(f"truncated: needs byte {offs + 8} but the file has {size}")
            slen = int.from_bytes(raw[offs : offs + 8], endian)
            if offs + 8 + slen > size:
                raise _Truncated(f"truncated: needs byte {offs + 8 + slen} but the file has {size}")
            parts.append(plain[offs : offs + 8].view(len_dtype))
            parts.append(plain[offs + 8 : offs + 8 + slen])
            data.append(len(parts) - 1)
            offs += 8 + slen
        return offs - orig_offs, parts, data, [GGUFValueType.ARRAY, GGUFValueType.STRING]


def _open(path: Path) -> GGUFReader:
    try:
        reader = _Reader(path, "r")
        size = _file_size(path)
        # GGUFReader maps the file and indexes tensors without checking that their data is all
        # there; a download cut short must not look like a model.
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except _Truncated as exc:
        raise GgufFormatError(f"{path.name}: {exc}") from exc
    # The reader parses untrusted bytes with numpy and raises whatever the bytes provoke
    # (ValueError, KeyError, IndexError, OverflowError, struct/numpy errors, OSError from mmap):
    # all of it means "not a usable GGUF" to our callers.
    except Exception as exc:
        raise GgufFormatError(f"{path.name}: not a readable GGUF file ({exc})") from exc
    if end > size:
        raise GgufFormatError(
            f"{path.name}: truncated: tensor data ends at byte {end} but the file has {size}"
        )
    return reader


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise GgufFormatError(f"{path.name}: cannot stat ({exc})") from exc


def _check_split(readers: list[GGUFReader], paths: list[Path]) -> None:
    """Parts of a split GGUF must be given together, in order."""
    for index, (reader, path) in enumerate(zip(readers, paths, strict=True)):
        meta = _Meta(reader, path)
        count = meta.optional("split.count")
        number = meta.optional("split.no")
        if count is None:
            if len(paths) > 1:
                raise GgufFormatError(
                    f"{path.name}: not a split GGUF part, but {len(paths)} files were given"
                )
            continue
        if int(count) != len(paths):
            raise GgufFormatError(
                f"{path.name}: part of a {count}-way split GGUF, but "
                f"{len(paths)} file(s) were given"
            )
        if number is not None and int(number) != index:
            raise GgufFormatError(
                f"{path.name}: split part {int(number) + 1} given in position {index + 1}"
            )
    total = _Meta(readers[0], paths[0]).optional("split.tensors.count")
    if total is not None and int(total) != sum(len(r.tensors) for r in readers):
        raise GgufFormatError(
            f"{paths[0].name}: split GGUF promises {total} tensors, the parts "
            f"hold {sum(len(r.tensors) for r in readers)}"
        )


class _Meta:
    """Typed access to one reader's key/value metadata; errors name the file and key."""

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self._reader = reader
        self._path = path

    def optional(self, key: str) -> Any:
        field = self._reader.get_field(key)
        if field is None:
            return None
        try:
            if field.types and field.types[0] == GGUFValueType.ARRAY:
                return list(field.contents())
            return field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise GgufFormatError(f"{self._path.name}: unreadable value for {key} ({exc})") from exc

    def optional_str(self, key: str) -> str | None:
        value = self.optional(key)
        return value if isinstance(value, str) else None

    def required(self, key: str, kind: type | tuple[type, ...]) -> Any:
        value = self.optional(key)
        if value is None:
            raise GgufFormatError(f"{self._path.name}: missing required key {key}")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise GgufFormatError(
                f"{self._path.name}: {key} has unexpected type {type(value).__name__}"
            )
        return value

    @property
    def name(self) -> str:
        return self._path.name


def _per_layer(value: Any, n_layers: int, meta: _Meta, key: str) -> list[int]:
    """A GGUF hyper-parameter stored either as one scalar or as one value per layer."""
    if isinstance(value, list):
        if len(value) != n_layers:
            raise GgufFormatError(
                f"{meta.name}: {key} has {len(value)} entries for {n_layers} layers"
            )
        return [int(v) for v in value]
    return [int(value)] * n_layers


def _int_or(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _swa_layers(arch: str, n_layers: int, window: int | None, pattern: Any) -> tuple[bool, ...]:
    if window is None:
        return (False,) * n_layers
    if isinstance(pattern, list) and len(pattern) == n_layers:
        return tuple(bool(v) for v in pattern)
    dense_first = False
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        period = pattern
        dense_first = _SWA_PERIOD.get(arch, (0, False))[1]
    elif arch in _SWA_PERIOD:
        period, dense_first = _SWA_PERIOD[arch]
    else:
        return (False,) * n_layers
    # llama_hparams::set_swa_pattern: period 0 means every layer is local
    if dense_first:
        return tuple(period == 0 or il % period != 0 for il in range(n_layers))
    return tuple(period == 0 or il % period < period - 1 for il in range(n_layers))


def _token_text(tokens: Any, token_id: Any) -> str | None:
    if tokens is None or not isinstance(token_id, int) or not 0 <= token_id < len(tokens.data):
        return None
    try:
        return str(tokens.contents(token_id))
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
