"""cortex_quantize.gguf_info on small GGUFs written here: counts, types, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType

from cortex_quantize.errors import InputError
from cortex_quantize.gguf_info import _Reader, read_model_info


def _write(path: Path, *, file_type: int | None = LlamaFileType.MOSTLY_F16, extra: int = 0) -> Path:
    writer = GGUFWriter(path, arch="llama")
    writer.add_name("tiny")
    writer.add_context_length(512)
    if file_type is not None:
        writer.add_file_type(int(file_type))
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)] + ["", "ü"])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(302)])
    writer.add_array("general.tags", [])
    writer.add_string("general.after_arrays", "still parsed")
    writer.add_tensor("token_embd.weight", np.zeros((302, 8), dtype=np.float16))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float16))
    writer.add_tensor("blk.0.ffn_down_exps.weight", np.zeros((4, 6, 16), dtype=np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.zeros(8 + extra, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_reads_parameters_types_and_imatrix_sizes(tmp_path: Path) -> None:
    info = read_model_info(_write(tmp_path / "tiny-F16.gguf"))
    assert info.n_params == 302 * 8 + 64 + 4 * 6 * 16 + 8
    assert info.n_tensors == 4
    assert info.tensor_types == {"F16": 3, "F32": 1}
    assert (info.architecture, info.name, info.context_length) == ("llama", "tiny", 512)
    assert (info.file_type, info.source.label, info.source.is_quantized) == (1, "F16", False)
    # ne[0] * ne[2]: one row of weights per expert; 1-D tensors take no importance matrix
    assert info.imatrix_sizes == {
        "token_embd.weight": 8,
        "blk.0.attn_q.weight": 8,
        "blk.0.ffn_down_exps.weight": 16 * 4,
    }
    assert info.file_bytes == (tmp_path / "tiny-F16.gguf").stat().st_size


def test_the_fast_reader_agrees_with_the_stock_one_on_scalars_and_tensors(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny.gguf")
    stock, fast = GGUFReader(path), _Reader(path)
    assert list(stock.fields) == list(fast.fields)
    for name, field in stock.fields.items():
        if len(field.types) == 1:  # scalars and strings
            assert fast.fields[name].contents() == field.contents(), name
        else:  # arrays keep their type, not their values
            assert fast.fields[name].types == field.types, name
    assert [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in fast.tensors] == [
        (t.name, t.tensor_type, list(t.shape), t.data_offset) for t in stock.tensors
    ]
    assert fast.fields["general.after_arrays"].contents() == "still parsed"


def test_without_file_type_the_tensors_decide(tmp_path: Path) -> None:
    info = read_model_info(_write(tmp_path / "tiny.gguf", file_type=None))
    assert (info.file_type, info.source.label) == (None, "F16")


def test_a_quantized_tensor_makes_the_source_quantized(tmp_path: Path) -> None:
    path = tmp_path / "q.gguf"
    writer = GGUFWriter(path, arch="llama")
    writer.add_file_type(int(LlamaFileType.MOSTLY_Q8_0))
    raw = np.zeros((4, 34), dtype=np.uint8)  # 4 rows × one Q8_0 block (32 weights in 34 bytes)
    writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_model_info(path)
    assert info.n_params == 4 * 32
    assert (info.source.label, info.source.quantized_types, info.source.needs_flag) == (
        "Q8_0",
        ("Q8_0",),
        False,
    )


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_model_info(tmp_path / "missing.gguf")
    with pytest.raises(InputError, match="not a file"):
        read_model_info(tmp_path)
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a GGUF file"):
        read_model_info(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="not a GGUF file"):
        read_model_info(empty)
    good = _write(tmp_path / "tiny.gguf").read_bytes()
    for cut in (8, 200, len(good) - 4):
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(good[:cut])
        with pytest.raises(InputError, match="not a readable GGUF"):
            read_model_info(truncated)


def test_split_models_are_read_from_the_first_part(tmp_path: Path) -> None:
    first = tmp_path / "m-00001-of-00002.gguf"
    writer = GGUFWriter(first, arch="llama")
    writer.add_uint16("split.count", 2)
    writer.add_tensor("a.weight", np.zeros((2, 4), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match=r"split part\(s\) missing: m-00002-of-00002.gguf"):
        read_model_info(first)
    second = tmp_path / "m-00002-of-00002.gguf"
    writer = GGUFWriter(second, arch="llama")
    writer.add_uint16("split.count", 2)
    writer.add_tensor("b.weight", np.zeros((3, 4), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_model_info(first)
    assert (info.n_params, info.n_tensors) == (20, 2)
    assert info.file_bytes == first.stat().st_size + second.stat().st_size
    with pytest.raises(InputError, match="give the first part"):
        read_model_info(second)
    renamed = tmp_path / "renamed.gguf"
    renamed.write_bytes(first.read_bytes())
    with pytest.raises(InputError, match="whose name does not follow NAME-00001-of-0000N"):
        read_model_info(renamed)
