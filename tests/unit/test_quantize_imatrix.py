"""cortex_quantize.imatrix: both llama.cpp file formats, normalisation, and the size checks."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from cortex_quantize.errors import InputError
from cortex_quantize.imatrix import check_against, load_imatrix


def _write_legacy(
    path: Path, entries: dict[str, tuple[int, list[float]]], tail: tuple[int, str] | None
) -> None:
    out = bytearray(struct.pack("<i", len(entries)))
    for name, (ncall, values) in entries.items():
        encoded = name.encode()
        out += struct.pack("<i", len(encoded)) + encoded
        out += struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, "<f4").tobytes()
    if tail is not None:
        chunks, dataset = tail
        out += struct.pack("<ii", chunks, len(dataset)) + dataset.encode()
    path.write_bytes(bytes(out))


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], *, metadata: bool = True) -> None:
    writer = GGUFWriter(path, arch="imatrix")
    if metadata:
        writer.add_array("imatrix.datasets", ["wiki.train.raw"])
        writer.add_uint32("imatrix.chunk_count", 42)
        writer.add_uint32("imatrix.chunk_size", 512)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_legacy_values_are_divided_by_the_call_count(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    _write_legacy(
        path,
        {"blk.0.ffn_down.weight": (4, [4.0, 8.0, 2.0]), "blk.0.attn_q.weight": (0, [1.5, 2.5])},
        (10, "calibration.txt"),
    )
    imatrix = load_imatrix(path)
    assert imatrix.legacy
    assert imatrix.entries["blk.0.ffn_down.weight"].tolist() == [1.0, 2.0, 0.5]
    assert imatrix.entries["blk.0.attn_q.weight"].tolist() == [1.5, 2.5]  # ncall 0: as stored
    assert imatrix.entries["blk.0.ffn_down.weight"].dtype == np.float32
    assert (imatrix.chunk_count, imatrix.datasets) == (10, ("calibration.txt",))


def test_legacy_trailer_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    _write_legacy(path, {"w": (1, [3.0])}, None)
    imatrix = load_imatrix(path)
    assert (imatrix.chunk_count, imatrix.datasets) == (0, ())


def test_gguf_values_are_divided_per_expert_and_unseen_experts_get_one(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    sums = np.array([[2.0, 4.0, 6.0], [5.0, 5.0, 5.0]], dtype=np.float32)  # 2 experts × 3
    _write_gguf(
        path,
        {
            "blk.0.ffn_down_exps.weight.in_sum2": sums,
            "blk.0.ffn_down_exps.weight.counts": np.array([2.0, 0.0], dtype=np.float32),
            "blk.0.attn_k.weight.in_sum2": np.array([9.0, 3.0], dtype=np.float32),
            "blk.0.attn_k.weight.counts": np.array([3.0], dtype=np.float32),
        },
    )
    imatrix = load_imatrix(path)
    assert not imatrix.legacy
    assert imatrix.entries["blk.0.ffn_down_exps.weight"].tolist() == [1, 2, 3, 1, 1, 1]
    assert imatrix.entries["blk.0.attn_k.weight"].tolist() == [3.0, 1.0]
    assert (imatrix.chunk_count, imatrix.datasets) == (42, ("wiki.train.raw",))


def test_gguf_sums_without_counts_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.gguf"
    _write_gguf(path, {"w.in_sum2": np.ones(4, dtype=np.float32)})
    with pytest.raises(InputError, match="mismatched sums and counts for 'w'"):
        load_imatrix(path)


def test_a_model_gguf_is_not_an_imatrix(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    _write_gguf(path, {"blk.0.attn_q.weight": np.ones((4, 4), dtype=np.float32)}, metadata=False)
    with pytest.raises(InputError, match="holds no importance-matrix entries"):
        load_imatrix(path)


@pytest.mark.parametrize(
    "content", [b"", b"hello world, this is text", struct.pack("<i", 1) + b"\x05\x00"]
)
def test_garbage_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "imatrix.dat"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not an imatrix file"):
        load_imatrix(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_imatrix(tmp_path / "nope.dat")


def test_non_finite_values_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    _write_legacy(path, {"w": (1, [1.0, float("nan")])}, None)
    with pytest.raises(InputError, match="NaN or infinite"):
        load_imatrix(path)


def test_check_against_counts_covered_tensors_and_rejects_wrong_sizes(tmp_path: Path) -> None:
    path = tmp_path / "imatrix.dat"
    _write_legacy(
        path,
        {"a.weight": (1, [1.0] * 4), "token_embd.weight": (1, [1.0] * 3), "other": (1, [1.0])},
        None,
    )
    imatrix = load_imatrix(path)
    # token_embd.weight's size is not checked (llama.cpp skips it too); unknown names are ignored
    assert check_against(imatrix, {"a.weight": 4, "token_embd.weight": 8, "b.weight": 2}) == 2
    with pytest.raises(
        InputError, match=r"'a\.weight' has 4 values but the model's tensor needs 8"
    ):
        check_against(imatrix, {"a.weight": 8})
    with pytest.raises(InputError, match="none of its 3 entries names a tensor of this model"):
        check_against(imatrix, {"x.weight": 4})
