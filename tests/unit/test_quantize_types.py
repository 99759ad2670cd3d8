"""cortex_quantize pure helpers: type parsing, source classification, names, rows, log lines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cortex_quantize.errors import InputError
from cortex_quantize.llama_log import LlamaLog
from cortex_quantize.quant_types import (
    QUANT_TYPES,
    ResultRow,
    bits_per_weight,
    classify_source,
    delta_percent,
    file_type_label,
    find_type,
    order_rows,
    output_path,
    parse_types,
)


def test_type_names_are_unique_upper_case_and_map_to_llama_ftype_constants() -> None:
    names = [t.name for t in QUANT_TYPES]
    assert len(set(names)) == len(names)
    assert all(n == n.upper() for n in names)
    assert find_type("q4_k_m").ftype_const == "LLAMA_FTYPE_MOSTLY_Q4_K_M"


def test_parse_types_is_case_insensitive_ordered_deduplicated_and_knows_aliases() -> None:
    chosen = parse_types("q4_k_m, Q8_0 q4_k,Q6_K")
    assert [t.name for t in chosen] == ["Q4_K_M", "Q8_0", "Q6_K"]


@pytest.mark.parametrize(
    ("spec", "available", "message"),
    [
        ("", None, "--types is empty"),
        (" , ", None, "--types is empty"),
        ("Q4_K_M,Q9_X", None, "unknown quantization type(s) Q9_X; valid: F16"),
        ("IQ2_XXS", ["Q8_0"], "IQ2_XXS not supported by this llama-cpp-python"),
    ],
)
def test_parse_types_rejects(spec: str, available: list[str] | None, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_types(spec, available)


def test_unknown_type_message_lists_only_what_the_library_offers() -> None:
    with pytest.raises(InputError) as info:
        parse_types("nope", ["Q8_0", "Q4_K_M"])
    assert str(info.value).endswith("valid: Q8_0, Q4_K_M")


def test_the_very_low_bit_types_need_an_importance_matrix() -> None:
    needs = {t.name for t in QUANT_TYPES if t.needs_imatrix}
    assert {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S"} <= needs
    assert not needs & {"Q8_0", "Q4_K_M", "Q6_K", "Q2_K", "IQ4_XS", "IQ4_NL"}


@pytest.mark.parametrize(
    ("file_type", "label"),
    [(0, "F32"), (1, "F16"), (32, "BF16"), (7, "Q8_0"), (15, "Q4_K_M"), (3, "Q4_1")],
)
def test_file_type_label(file_type: int, label: str) -> None:
    assert file_type_label(file_type) == label


@pytest.mark.parametrize("file_type", [None, 4, 999, 1024])
def test_file_type_label_unknown(file_type: int | None) -> None:
    assert file_type_label(file_type) is None


def test_an_f16_source_is_not_quantized() -> None:
    source = classify_source(1, {"F32": 61, "F16": 211})
    assert (source.label, source.is_quantized, source.needs_flag) == ("F16", False, False)


def test_a_q8_0_source_is_requantized_without_asking() -> None:
    source = classify_source(7, {"F32": 61, "Q8_0": 211})
    assert (source.label, source.is_quantized, source.needs_flag) == ("Q8_0", True, False)


def test_a_coarser_source_needs_the_flag_even_with_some_q8_0_tensors() -> None:
    source = classify_source(3, {"F32": 61, "Q4_1": 210, "Q8_0": 1})
    assert source.label == "Q4_1"
    assert source.quantized_types == ("Q4_1", "Q8_0")
    assert source.needs_flag


def test_without_file_type_the_label_is_the_most_common_matrix_type() -> None:
    assert classify_source(None, {"F32": 300, "BF16": 200}).label == "BF16"
    assert classify_source(None, {"F32": 3}).label == "F32"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct-Q8_0.gguf"),
        ("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-Q8_0.gguf"),
        ("model-f16.gguf", "model-Q8_0.gguf"),
        ("Qwen2.5-7B-Instruct-BF16.gguf", "Qwen2.5-7B-Instruct-Q8_0.gguf"),
        ("llama_IQ4_XS.gguf", "llama-Q8_0.gguf"),
        ("Qwen2.5-7B.gguf", "Qwen2.5-7B-Q8_0.gguf"),
        ("F16.gguf", "F16-Q8_0.gguf"),
        ("noext", "noext-Q8_0.gguf"),
    ],
)
def test_output_path_replaces_the_type_tag(name: str, expected: str) -> None:
    assert output_path(Path("/m") / name, Path("/out"), find_type("Q8_0")) == Path("/out", expected)


def test_bits_per_weight() -> None:
    assert bits_per_weight(1000, 1000) == 8.0
    assert bits_per_weight(17, 16) == 8.5
    assert math.isnan(bits_per_weight(10, 0))


def _row(label: str, size: int, *, ref: bool = False, ppl: float | None = None) -> ResultRow:
    return ResultRow(label, Path(label), size, 100, is_reference=ref, ppl=ppl)


def test_rows_reference_first_then_largest_to_smallest() -> None:
    rows = [_row("Q4_K_M", 50), _row("Q8_0", 90), _row("F16", 200, ref=True), _row("Q6_K", 70)]
    assert [r.label for r in order_rows(rows)] == ["F16", "Q8_0", "Q6_K", "Q4_K_M"]


def test_row_figures() -> None:
    row = _row("Q8_0", 3 * 1024 * 1024).with_ppl(12.5, 0.25)
    assert row.size_mib == 3.0
    assert row.bpw == 3 * 1024 * 1024 * 8 / 100
    assert (row.ppl, row.ppl_uncertainty) == (12.5, 0.25)
    assert delta_percent(11.0, 10.0) == pytest.approx(10.0)
    assert delta_percent(None, 10.0) is None
    assert delta_percent(10.0, None) is None


def test_llama_log_assembles_fragments_into_lines_and_finds_the_failure() -> None:
    log = LlamaLog()
    seen: list[str] = []
    log.listener = seen.append
    log.feed(2, "[   1/ 272] output_norm.weight - [576, 1], type = f32, ")
    log.feed(2, "size = 0.002 MiB\n")
    log.feed(3, "warning: something odd\n")
    log.feed(4, "llama_model_quantize: failed to quantize: ")
    log.feed(5, "this quantization requires an imatrix!\n")
    assert seen[0].startswith("[   1/ 272]")
    assert log.lines[0] == (
        2,
        "[   1/ 272] output_norm.weight - [576, 1], type = f32, size = 0.002 MiB",
    )
    assert log.failure() == "this quantization requires an imatrix!"


def test_llama_log_failure_falls_back_to_the_last_error_line() -> None:
    log = LlamaLog()
    log.feed(1, "all good\n")
    assert log.failure() is None
    log.feed(3, "warning: almost full\n")
    assert log.failure() is None
    log.feed(4, "error: the disk is full\n")
    assert log.failure() == "error: the disk is full"
